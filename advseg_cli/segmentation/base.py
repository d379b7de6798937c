"""The frozen segmentation network "Seg" behind one interface, and the registry of its backends.

A :class:`Segmenter` takes the training tensors (RGB, float, [-1, 1], [N,3,H,W]) and gives

* :meth:`Segmenter.hard_labels`: the panoptic result as [N,H,W] uint8 labels in the 135-class layout
  of :mod:`advseg_cli.segmentation.classes` (what the cache stores, and what the public code fed
  its discriminators), computed without gradients;
* :meth:`Segmenter.soft_probs`: [N,135,H,W] per-pixel class probabilities (each >= 0, summing to at
  most 1 per pixel), differentiable with respect to the input pixels, so that an adversarial loss on
  the map of a generated image reaches the generator. Seg's own weights are frozen and never get a
  gradient. The exact formula of each backend is in its module and in docs/segmentation.md;
* :meth:`Segmenter.features` (some backends): its last feature map before the classifier, likewise
  differentiable, for ``advseg train --seg-features``.

Backends register a factory with :func:`register_backend`; :func:`build_segmenter` builds one by name.
Contract of a factory: ``factory(weights: Path | None, device: torch.device, precision: str) -> Segmenter``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from advseg_cli.devices import check_precision
from advseg_cli.errors import AdvsegError

# The built-in backends, in the order a user sees them (the first is what CI exercises).
BACKENDS: tuple[str, ...] = ("mask2former", "panoptic-fpn", "shapes")
_BUILTIN_MODULES = {
    "mask2former": "advseg_cli.segmentation.mask2former",
    "panoptic-fpn": "advseg_cli.segmentation.panoptic_fpn",
    "shapes": "advseg_cli.world.seg",  # the shapes world's trained Seg (advseg data prepare shapes)
}

FEATURE_BACKENDS: tuple[str, ...] = ("mask2former", "shapes")  # those with Segmenter.features
SegmenterFactory = Callable[[Path | None, torch.device, str], "Segmenter"]
_REGISTRY: dict[str, SegmenterFactory] = {}
WeightsCheck = Callable[[Path | None], str]
_CHECKS: dict[str, WeightsCheck] = {}


class Segmenter(torch.nn.Module):
    """A frozen panoptic segmentation network with hard (labels) and soft (probabilities) outputs."""

    backend: str  # registry name, e.g. "mask2former"
    model_name: str  # which model, e.g. "facebook/mask2former-swin-tiny-coco-panoptic"
    weights_record: dict[str, str] | None  # name, path, sha256, source of the weights (run records, cache)
    thresholds: dict[str, float]  # the score / overlap thresholds of the panoptic post-processing

    def __init__(self, device: torch.device, precision: str = "fp32") -> None:
        super().__init__()
        check_precision(precision, device)
        self.device = torch.device(device)
        self.precision = precision
        self.weights_record = None
        self.thresholds = {}

    def freeze(self) -> Segmenter:
        """Seg never trains: no parameter takes a gradient, and dropout / batch norm stay in eval mode."""
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> Segmenter:
        """Always eval: a frozen Seg inside a generator's ``.train()`` call must keep its statistics."""
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        """Same as :meth:`soft_probs` (the differentiable output is what a training graph calls)."""
        return self.soft_probs(images)

    def hard_labels(self, images: Tensor) -> Tensor:
        """[N,3,H,W] RGB in [-1,1] -> [N,H,W] uint8 panoptic labels (135 layout), no gradient."""
        raise NotImplementedError

    def soft_probs(self, images: Tensor) -> Tensor:
        """[N,3,H,W] RGB in [-1,1] -> [N,135,H,W] class probabilities, differentiable w.r.t. images."""
        raise NotImplementedError

    def features(self, images: Tensor) -> Tensor:
        """[N,3,H,W] RGB in [-1,1] -> [N,C,h,w]: Seg's last feature map before its classifier,
        differentiable w.r.t. images (``--seg-features``: D_M judges these instead of the final map).

        Features carry no one-hot-versus-soft difference between real and generated photos, and a frozen
        network's features are harder to fool with a texture than its argmax (Projected GAN). Backends
        that do not expose them refuse in one line.
        """
        raise AdvsegError(f"--seg-features: the {self.backend} segmentation backend does not expose its "
                          f"features; use --backend {' or '.join(FEATURE_BACKENDS)}, or drop --seg-features")

    def feature_channels(self) -> int:
        """How many channels :meth:`features` gives (measured on a small blank image)."""
        with torch.no_grad():
            return int(self.features(torch.zeros(1, 3, 64, 64, device=self.device)).shape[1])

    def map_channels(self) -> Tensor | None:
        """The 135-layout channels this network's maps can fill (ascending), or None for all of them.

        A backend that knows only some classes (the shapes world's nine) returns their ids: its
        probability maps are exactly zero elsewhere and gradients there go nowhere, so D_M can skip
        those input channels in the generator's step too (``NLayerDiscriminator.static_channels``).
        """
        return None

    def hard_and_soft(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Both maps of one batch: [N,H,W] uint8 labels (no gradient) and [N,135,H,W] probabilities
        (differentiable). Backends whose labels come from the same forward override this to run once."""
        return self.hard_labels(images.detach()), self.soft_probs(images)

    def describe(self) -> dict[str, Any]:
        """Provenance for run records and cache attributes."""
        return {
            "backend": self.backend,
            "model": self.model_name,
            "weights": self.weights_record,
            "thresholds": dict(self.thresholds),
            "precision": self.precision,
        }


def same_weights(sha256_a: str | None, sha256_b: str | None) -> bool:
    """Whether two Seg descriptions name the same weights file by content.

    When they do, their model names are not compared: a ``--weights`` folder is named by its path, and
    the same file in a moved folder is the same network.
    """
    return bool(sha256_a) and sha256_a == sha256_b


def check_images(images: Tensor) -> None:
    """Seg's inputs are the training tensors: float [N,3,H,W]; anything else is a caller bug."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N,3,H,W] RGB, got shape {tuple(images.shape)}")
    if not images.dtype.is_floating_point:
        raise ValueError(f"images must be float in [-1, 1] (use uint8_to_model_range), got {images.dtype}")


def uint8_to_model_range(photos: np.ndarray | Tensor) -> Tensor:
    """uint8 photos, [N,H,W,3] (NHWC, as decoded) or [N,3,H,W] -> float [N,3,H,W] in [-1, 1].

    The layout is told apart by where the 3 channels are; a batch whose last axis is 3 counts as
    NHWC (an image 3 pixels high would be ambiguous, and no real photo is).
    """
    batch = torch.as_tensor(np.asarray(photos)) if isinstance(photos, np.ndarray) else photos
    if batch.dtype != torch.uint8:
        raise ValueError(f"photos must be uint8, got {batch.dtype}")
    if batch.dim() == 3:
        batch = batch.unsqueeze(0)
    if batch.dim() != 4 or 3 not in (batch.shape[1], batch.shape[-1]):
        raise ValueError(f"photos must be [N,H,W,3] or [N,3,H,W], got shape {tuple(batch.shape)}")
    if batch.shape[-1] == 3:
        batch = batch.permute(0, 3, 1, 2)
    return batch.float().div(127.5).sub(1.0).contiguous()


def register_backend(name: str) -> Callable[[SegmenterFactory], SegmenterFactory]:
    """Decorator: register ``factory(weights, device, precision) -> Segmenter`` under ``name``."""

    def decorate(factory: SegmenterFactory) -> SegmenterFactory:
        _REGISTRY[name] = factory
        return factory

    return decorate


def register_weights_check(name: str) -> Callable[[WeightsCheck], WeightsCheck]:
    """Decorator: ``check(weights) -> where they are``, raising AdvsegError when the backend cannot be
    built (library missing, weights absent), without building it: ``advseg weights --need seg:NAME``."""

    def decorate(check: WeightsCheck) -> WeightsCheck:
        _CHECKS[name] = check
        return check

    return decorate


def check_segmenter_weights(backend: str, weights: Path | None) -> str:
    """Where ``backend``'s weights would come from; AdvsegError naming the fix when they cannot."""
    _load_builtin_backend(backend)
    if backend not in _CHECKS:
        raise AdvsegError(f"seg:{backend}: unknown segmentation backend; valid: {', '.join(available_backends())}")
    return _CHECKS[backend](None if weights is None else Path(weights))


def _load_builtin_backend(name: str) -> None:
    """Import a built-in backend's module (cheap: its heavy library is imported only when built)."""
    if name in _BUILTIN_MODULES and name not in _REGISTRY:
        importlib.import_module(_BUILTIN_MODULES[name])


def available_backends() -> tuple[str, ...]:
    """Built-in backends first, then any registered by other code."""
    return BACKENDS + tuple(sorted(set(_REGISTRY) - set(BACKENDS)))


def build_segmenter(
    backend: str, weights: Path | None, device: torch.device, precision: str = "fp32"
) -> Segmenter:
    """Build the frozen Seg called ``backend`` on ``device``; ``weights`` is the user's ``--weights``."""
    _load_builtin_backend(backend)
    if backend not in _REGISTRY:
        raise AdvsegError(
            f"--backend: unknown segmentation backend {backend!r}; valid: {', '.join(available_backends())}"
        )
    device = torch.device(device)
    check_precision(precision, device)
    segmenter = _REGISTRY[backend](None if weights is None else Path(weights), device, precision)
    return segmenter.freeze()
