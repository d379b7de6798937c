"""The ``mask2former`` backend: Mask2Former for COCO panoptic through Hugging Face transformers.

Weights (safetensors only; a folder that holds only pickled ``.bin`` weights is refused):

1. ``--weights DIR``: a folder written by ``save_pretrained`` (``config.json`` + ``model.safetensors``),
   for machines without internet access;
2. ``$ADVSEG_HOME/mask2former/<org>--<name>/``, the same kind of folder in advseg's cache;
3. the Hugging Face hub cache, then the hub itself (never when ``ADVSEG_OFFLINE=1``).

Input: the training tensors (RGB in [-1, 1]) become ``((x + 1) / 2 - mean) / std`` with the mean and
std of the model's image processor (``preprocessor_config.json`` when the folder has one, else the
ImageNet values every Mask2Former processor uses). Seg runs **at the size it is given**, not at the
processor's 800-pixel short side: the training feeds 256x256 tensors straight in, as the public code
did with detectron2, so the maps of real photos (made by ``advseg segcache`` at the training scale)
and of generated images come from the same scale. Like the processor, the input is padded at the
bottom/right to a multiple of 32 with zeros (after normalisation); outputs are cropped back.

Hard labels: :func:`advseg_cli.segmentation.panoptic_queries.panoptic_segments` (transformers'
panoptic rules, batched). Soft probabilities: :func:`~advseg_cli.segmentation.panoptic_queries.
soft_class_probs`. See docs/segmentation.md for the formulas.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from advseg_cli.devices import autocast
from advseg_cli.errors import IncompatibleInputError, WeightsMismatchError, WeightsNotFoundError
from advseg_cli.files import sha256_file
from advseg_cli.optional import require
from advseg_cli.segmentation.base import Segmenter, check_images, register_backend, register_weights_check
from advseg_cli.segmentation.classes import IS_STUFF, coco_panoptic_133_to_135
from advseg_cli.segmentation.panoptic_queries import (
    PanopticSegments,
    QueryThresholds,
    kept_queries_first,
    mask_probabilities,
    panoptic_segments,
    soft_class_probs,
)
from advseg_cli.weights import advseg_home, offline

DEFAULT_MODEL = "facebook/mask2former-swin-tiny-coco-panoptic"
SIZE_DIVISOR = 32  # the image processor pads to a multiple of this; Swin's stages halve the size 5 times
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HUB_FILES = ["config.json", "preprocessor_config.json", "*.safetensors", "*.safetensors.index.json"]
# Post-processing works on [images, queries, H, W] float tensors; cap one such tensor at 2**27 values
# (512 MiB) by post-processing a large batch in chunks of images.
_POSTPROCESS_VALUES = 2**27


def _save_command(model_name: str) -> str:
    return (
        'python -c "from transformers import Mask2FormerForUniversalSegmentation as M; '
        f"M.from_pretrained('{model_name}').save_pretrained('mask2former-coco')\""
    )


def advseg_cache_folder(model_name: str) -> Path:
    """Where a saved copy of ``model_name`` is looked for in advseg's own cache folder."""
    return advseg_home() / "mask2former" / model_name.replace("/", "--")


def resolve_model_folder(weights: Path | None, model_name: str = DEFAULT_MODEL) -> tuple[Path, str]:
    """The folder to load (config + safetensors) and where it came from (explicit | cache | hub)."""
    if weights is not None:
        folder = Path(weights).expanduser()
        if not folder.is_dir():
            what = "no such folder" if not folder.exists() else "a file, not a folder"
            raise WeightsNotFoundError(
                f"--weights {folder}: {what}; the mask2former backend takes a folder written by "
                f"save_pretrained (config.json + model.safetensors), e.g. by: {_save_command(model_name)}"
            )
        return folder, "explicit"
    cached = advseg_cache_folder(model_name)
    if (cached / "config.json").is_file():
        return cached, "cache"
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(model_name, allow_patterns=_HUB_FILES, local_files_only=offline())
    except Exception as exc:  # noqa: BLE001 -- the hub client raises many network/cache error types
        raise WeightsNotFoundError(
            f"Mask2Former weights {model_name} are not in the Hugging Face cache and cannot be downloaded "
            f"({type(exc).__name__}); on a connected machine run: {_save_command(model_name)} "
            f"and pass that folder with --weights mask2former-coco (or copy it to {cached})"
        ) from None
    return Path(folder), "hub"


def _safetensors_files(folder: Path, model_name: str) -> list[Path]:
    """The weight files of a saved folder; pickled ``.bin`` weights are refused, not loaded."""
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickled = sorted(p.name for p in folder.glob("*.bin"))
    if pickled:
        raise WeightsMismatchError(
            f"{folder}: holds only pickled weights ({', '.join(pickled)}), which advseg does not load; "
            f"re-save them as safetensors with: {_save_command(model_name)}"
        )
    raise WeightsNotFoundError(
        f"{folder}: no model.safetensors; on a connected machine run: {_save_command(model_name)} "
        "and pass that folder with --weights"
    )


def _weights_digest(files: list[Path]) -> str:
    """sha256 of the single weights file (or of the shards' hashes, in name order, when sharded)."""
    if len(files) == 1:
        return sha256_file(files[0])
    return hashlib.sha256("".join(sha256_file(p) for p in files).encode()).hexdigest()


def _normalisation(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The image processor's mean/std (a JSON file, read as data), ImageNet's when it is absent."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return IMAGENET_MEAN, IMAGENET_STD
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
        mean = tuple(float(v) for v in settings.get("image_mean", IMAGENET_MEAN))
        std = tuple(float(v) for v in settings.get("image_std", IMAGENET_STD))
    except (ValueError, TypeError, AttributeError) as exc:
        raise WeightsMismatchError(f"{path}: unreadable image processor settings ({exc})") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise WeightsMismatchError(f"{path}: image_mean/image_std must be 3 values each (std > 0)")
    return mean, std


def _class_names(config: Any, folder: Path) -> list[str]:
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    if sorted(id2label) != list(range(133)):
        raise IncompatibleInputError(
            f"{folder}: the model has {len(id2label)} classes; the mask2former backend needs a COCO "
            "panoptic model (133 classes), e.g. facebook/mask2former-swin-tiny-coco-panoptic"
        )
    return [id2label[i] for i in range(133)]


def load_network(folder: Path, model_name: str) -> tuple[torch.nn.Module, list[Path]]:
    """Build the transformers model from a saved folder, refusing partial or pickled weights."""
    transformers = _require_transformers()
    files = _safetensors_files(folder, model_name)
    if not (folder / "config.json").is_file():
        raise WeightsNotFoundError(f"{folder}: no config.json; pass a folder written by save_pretrained")
    try:
        config = transformers.Mask2FormerConfig.from_pretrained(folder, local_files_only=True)
        with _quiet_transformers():
            network, info = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(
                folder, config=config, use_safetensors=True, local_files_only=True, output_loading_info=True
            )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise WeightsMismatchError(f"{folder}: not a Mask2Former model ({exc})".splitlines()[0]) from None
    if info.get("missing_keys") or info.get("mismatched_keys"):
        missing = list(info.get("missing_keys") or []) + [str(k) for k in info.get("mismatched_keys") or []]
        raise WeightsMismatchError(
            f"{folder}: weights do not fit the model ({len(missing)} missing or mismatched, e.g. {missing[0]})"
        )
    return network, files


def _require_transformers() -> ModuleType:
    """transformers, or the one-line refusal: called before the weights are looked for (their hint is a
    transformers command) and before segcache or train create anything."""
    return require("transformers", "the mask2former backend")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No "Loading weights" bar of transformers' own: advseg's stages print their own progress."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


class Mask2FormerSegmenter(Segmenter):
    """Frozen Mask2Former (transformers) with batched panoptic post-processing and soft maps."""

    backend = "mask2former"

    def __init__(
        self,
        network: torch.nn.Module,
        class_names: list[str],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device,
        precision: str = "fp32",
        model_name: str = DEFAULT_MODEL,
        weights_record: dict[str, str] | None = None,
        thresholds: QueryThresholds = QueryThresholds(),
    ) -> None:
        super().__init__(device, precision)
        self.network = network  # transformers' Mask2FormerForUniversalSegmentation
        self.model_name = model_name
        self.weights_record = weights_record
        self.query_thresholds = thresholds
        self.thresholds = thresholds.as_dict()
        lut = coco_panoptic_133_to_135(class_names)
        self.register_buffer("lut", lut, persistent=False)  # [133] our label of each model class
        fuse = torch.tensor([IS_STUFF[int(label)] for label in lut], dtype=torch.bool)
        self.register_buffer("fuse", fuse, persistent=False)  # [133] stuff classes: one segment each
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.to(self.device)

    def _network_input(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """[-1,1] RGB -> normalised, zero-padded to a multiple of 32; returns it and the padded size."""
        check_images(images)
        height, width = images.shape[-2:]
        padded = (
            math.ceil(height / SIZE_DIVISOR) * SIZE_DIVISOR,
            math.ceil(width / SIZE_DIVISOR) * SIZE_DIVISOR,
        )
        normalised = ((images.to(self.device, torch.float32) + 1.0) / 2.0 - self.mean) / self.std
        normalised = F.pad(normalised, (0, padded[1] - width, 0, padded[0] - height))
        return normalised, padded

    def query_logits(self, images: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """Run the network: class logits [N,Q,134], mask logits [N,Q,h,w] (float32), padded size."""
        pixels, padded = self._network_input(images)
        with autocast(self.device, self.precision):
            outputs = self.network(pixel_values=pixels)
        return outputs.class_queries_logits.float(), outputs.masks_queries_logits.float(), padded

    def features(self, images: Tensor) -> Tensor:
        """The pixel decoder's mask features (stride 4, what every query's mask is a product with), of the
        part that covers the images; the transformer decoder is not run."""
        pixels, padded = self._network_input(images)
        with autocast(self.device, self.precision):
            features = self.network.model.pixel_level_module(pixels).decoder_last_hidden_state.float()
        stride = padded[1] // features.shape[-1]
        return features[..., :math.ceil(images.shape[-2] / stride), :math.ceil(images.shape[-1] / stride)]

    @torch.no_grad()
    def panoptic(self, images: Tensor) -> list[PanopticSegments]:
        """The panoptic segments of a batch, post-processed in chunks of images (memory cap)."""
        class_logits, mask_logits, padded = self.query_logits(images)
        class_logits, mask_logits = kept_queries_first(class_logits, mask_logits, self.query_thresholds.score)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        per_image = class_logits.shape[1] * max(padded[0] * padded[1], 384 * 384)
        chunk = max(1, _POSTPROCESS_VALUES // per_image)
        results = []
        for start in range(0, class_logits.shape[0], chunk):
            probs = mask_probabilities(mask_logits[start : start + chunk], size, padded)
            results.append(
                panoptic_segments(
                    class_logits[start : start + chunk], probs, self.lut, self.query_thresholds, self.fuse
                )
            )
        return results

    @torch.no_grad()
    def hard_labels(self, images: Tensor) -> Tensor:
        """[N,3,H,W] in [-1,1] -> [N,H,W] uint8 panoptic labels in the 135-class layout."""
        return torch.cat([result.labels for result in self.panoptic(images)], dim=0)

    def soft_probs(self, images: Tensor) -> Tensor:
        """[N,3,H,W] in [-1,1] -> [N,135,H,W]; ``P / max(1, sum P)`` with ``P = sum_q softmax(cls_q)[:-1]
        * sigmoid(mask_q)`` upsampled to the input size (docs/segmentation.md). Differentiable."""
        class_logits, mask_logits, padded = self.query_logits(images)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        return soft_class_probs(class_logits, mask_logits, self.lut, size, padded)


@register_weights_check("mask2former")
def check_mask2former_weights(weights: Path | None) -> str:
    """The folder build_mask2former would load, and that it holds safetensors weights."""
    _require_transformers()
    folder, source = resolve_model_folder(weights, DEFAULT_MODEL)
    _safetensors_files(folder, DEFAULT_MODEL)
    return f"{folder} ({source})"


@register_backend("mask2former")
def build_mask2former(
    weights: Path | None, device: torch.device, precision: str = "fp32"
) -> Mask2FormerSegmenter:
    """Factory of the registry: transformers present, find and load the weights, then wrap the network."""
    _require_transformers()
    folder, source = resolve_model_folder(weights, DEFAULT_MODEL)
    network, files = load_network(folder, DEFAULT_MODEL)
    model_name = DEFAULT_MODEL if source != "explicit" else str(folder.resolve())
    record = {
        "name": model_name,
        "path": str(folder.resolve()),
        "sha256": _weights_digest(files),
        "source": source,
    }
    mean, std = _normalisation(folder)
    return Mask2FormerSegmenter(
        network.eval(),
        _class_names(network.config, folder),
        mean,
        std,
        device,
        precision,
        model_name=model_name,
        weights_record=record,
    )
