"""Variants of the segmentation terms that make a loss against a *frozen* Seg easier to train with.

With a real gradient (``--seg-grad soft``) the AdvSegLoss pushes the generator against a fixed network,
which rewards patterns no person would draw, and its discriminators can tell generated maps from real
ones by their softness alone. Each variant here addresses one of those causes; they are options of
``advseg train`` and rows of ``advseg experiment seg-effect`` (docs/evidence.md has what each did):

``seg_real`` (``--seg-real soft``)
    The real photo's map is Seg's class probabilities of that photo, made at training time, instead of
    the one-hot of its cached labels: D_M / D_Bin compare a soft map with a soft map.
``seg_augment`` (``--seg-augment translation,cutout[,color]``)
    DiffAugment (Zhao et al., NeurIPS 2020): every input of a segmentation discriminator is translated
    and cut out at random, differentiably; in a discriminator step the real and the generated input share
    one random draw, so the augmentation itself tells them nothing apart.
``seg_warmup`` (``--seg-warmup N``)
    The segmentation terms' weight ramps linearly from 0 over the first N steps, so the generator learns
    the image before the frozen network's gradient reaches it.
``seg_balance`` (``--seg-balance F``)
    The adaptive weight of Taming Transformers (Esser et al., CVPR 2021): each step the segmentation
    terms are weighted so that their gradient on the generator's last layer has F times the norm of the
    image GAN term's gradient there.
``seg_consistency`` (``--seg-consistency W``, paired models)
    Not adversarial: W times the cross-entropy between Seg's map of the generated photo and the real
    photo's labels (CyCADA's semantic consistency loss), a control for whether the segmentation signal
    helps at all.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advseg_cli.errors import AdvsegError
from advseg_cli.segmentation.classes import UNLABELED

SEG_REAL_MODES: tuple[str, ...] = ("hard", "soft")
AUGMENTATIONS: tuple[str, ...] = ("translation", "cutout", "color")
TRANSLATION_RATIO = 0.125  # largest shift, as a fraction of the side (DiffAugment's default)
CUTOUT_RATIO = 0.5  # side of the cut-out square, as a fraction of the side (DiffAugment's default)
BALANCE_EPS = 1e-8
BALANCE_MAX = 1e4  # Taming's clamp of the adaptive weight


def parse_augment_policy(policy: str) -> tuple[str, ...]:
    """'translation,cutout' -> ('translation', 'cutout'); '' -> (); a refusal names the choices."""
    names = tuple(name.strip() for name in policy.split(",") if name.strip())
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise AdvsegError(f"--seg-augment: unknown {', '.join(unknown)}; use a comma-separated list of "
                          f"{', '.join(AUGMENTATIONS)}")
    if len(set(names)) != len(names):
        raise AdvsegError(f"--seg-augment: {policy!r} names an augmentation twice")
    return names


@dataclasses.dataclass(frozen=True)
class AugmentDraw:
    """One random draw of every augmentation of a policy, for a batch of N inputs of one size.

    Kept apart from its application so that a discriminator step applies the same draw to the real
    and the generated input (``SegAugment.draw`` once, ``SegAugment.apply`` twice).
    """

    shifts: Tensor | None  # [N,2] integer (dy, dx)
    cutout: Tensor | None  # [N,1,H,W] mask, 0 inside the cut-out square
    brightness: Tensor | None  # [N,1,1,1] added
    saturation: Tensor | None  # [N,1,1,1] factor around the per-pixel channel mean
    contrast: Tensor | None  # [N,1,1,1] factor around the per-image mean


class SegAugment:
    """Differentiable augmentation of the segmentation discriminators' inputs.

    ``color`` changes only the first ``color_channels`` channels (a Pix2Pix map discriminator's
    conditioning photo); maps have no colour. The draws use the global torch RNG of the input's device,
    which the training checkpoint saves, so a resumed run draws what an uninterrupted one would.
    """

    def __init__(self, policy: str, color_channels: int = 0) -> None:
        self.names = parse_augment_policy(policy)
        self.color_channels = color_channels

    def __bool__(self) -> bool:
        return bool(self.names)

    def draw(self, like: Tensor) -> AugmentDraw:
        n, _, h, w = like.shape
        device = like.device
        shifts = cutout = brightness = saturation = contrast = None
        if "translation" in self.names:
            limit = torch.tensor([int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)], device=device)
            shifts = (torch.rand(n, 2, device=device) * (2 * limit + 1)).floor().long() - limit
        if "cutout" in self.names:
            cutout = self._cutout_mask(n, h, w, device)
        if "color" in self.names and self.color_channels:
            brightness = torch.rand(n, 1, 1, 1, device=device) - 0.5
            saturation = torch.rand(n, 1, 1, 1, device=device) * 2
            contrast = torch.rand(n, 1, 1, 1, device=device) + 0.5
        return AugmentDraw(shifts, cutout, brightness, saturation, contrast)

    @staticmethod
    def _cutout_mask(n: int, h: int, w: int, device: torch.device) -> Tensor:
        size_h, size_w = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
        top = (torch.rand(n, 1, 1, device=device) * (h + 1 - size_h % 2)).floor() - size_h // 2
        left = (torch.rand(n, 1, 1, device=device) * (w + 1 - size_w % 2)).floor() - size_w // 2
        rows = torch.arange(h, device=device).view(1, h, 1)
        cols = torch.arange(w, device=device).view(1, 1, w)
        inside = (rows >= top) & (rows < top + size_h) & (cols >= left) & (cols < left + size_w)
        return (~inside).unsqueeze(1).float()

    def apply(self, x: Tensor, draw: AugmentDraw) -> Tensor:
        """``x`` [N,C,H,W] augmented by ``draw`` (made for an input of x's batch and size)."""
        if draw.brightness is not None:
            x = self._color(x, draw)
        if draw.shifts is not None:
            x = translate(x, draw.shifts)
        if draw.cutout is not None:
            x = x * draw.cutout.to(x.dtype)
        return x

    def __call__(self, x: Tensor) -> Tensor:
        """A fresh draw applied to one input (the generator's terms)."""
        return self.apply(x, self.draw(x)) if self.names else x

    def pair(self, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
        """The real and the generated input with one shared draw (the discriminator's terms)."""
        if not self.names:
            return real, fake
        draw = self.draw(real)
        return self.apply(real, draw), self.apply(fake, draw)

    def _color(self, x: Tensor, draw: AugmentDraw) -> Tensor:
        k = self.color_channels
        photo = x[:, :k] + draw.brightness.to(x.dtype)
        channel_mean = photo.mean(dim=1, keepdim=True)
        photo = (photo - channel_mean) * draw.saturation.to(x.dtype) + channel_mean
        image_mean = photo.mean(dim=(1, 2, 3), keepdim=True)
        photo = (photo - image_mean) * draw.contrast.to(x.dtype) + image_mean
        return torch.cat([photo, x[:, k:]], 1)


def translate(x: Tensor, shifts: Tensor) -> Tensor:
    """Each image of ``x`` moved by its (dy, dx), zeros shifted in; differentiable with respect to x."""
    _, _, h, w = x.shape
    pad_h, pad_w = int(shifts[:, 0].abs().max()), int(shifts[:, 1].abs().max())
    padded = F.pad(x, (pad_w, pad_w, pad_h, pad_h))
    moved = [padded[i:i + 1, :, pad_h - dy:pad_h - dy + h, pad_w - dx:pad_w - dx + w]
             for i, (dy, dx) in enumerate(shifts.tolist())]
    return torch.cat(moved, 0)


def warmup_scale(step: int, warmup_steps: int) -> float:
    """0 at step 0, rising linearly to 1 at ``warmup_steps`` (1 throughout without a warm-up)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, step / warmup_steps)


def last_layer_weight(generator: nn.Module) -> nn.Parameter:
    """The weight of the generator's last convolution: where Taming measures the balance of two terms."""
    convolutions = [m for m in generator.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    if not convolutions:
        raise ValueError(f"{type(generator).__name__} has no convolution to balance the terms on")
    return convolutions[-1].weight


def gradient_norm(term: Tensor, parameter: Tensor) -> Tensor:
    """||d term / d parameter||, on the step's graph (kept for the real backward); 0 when unreachable."""
    if not term.requires_grad:
        return torch.zeros((), device=parameter.device)
    (grad,) = torch.autograd.grad(term, [parameter], retain_graph=True, allow_unused=True)
    return torch.zeros((), device=parameter.device) if grad is None else grad.float().norm()


def balanced_weight(seg_term: Tensor, gan_term: Tensor, last_layer: Tensor, fraction: float) -> Tensor:
    """The weight w (detached) for which ||d(w seg)/d last|| = fraction ||d gan/d last||, clamped to [0, 1e4]."""
    seg_norm = gradient_norm(seg_term, last_layer)
    gan_norm = gradient_norm(gan_term, last_layer)
    return (fraction * gan_norm / (seg_norm + BALANCE_EPS)).clamp(0.0, BALANCE_MAX).detach()


def semantic_consistency(probs: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of Seg's class probabilities [N,C,H,W] against labels [N,H,W]; unlabeled ignored."""
    log_probs = probs.float().clamp_min(1e-8).log()
    target = labels.long().masked_fill(labels.long() == UNLABELED, -100)
    if bool((target == -100).all()):
        return log_probs.sum() * 0.0  # nothing labelled: no signal, but keep the graph
    return F.nll_loss(log_probs, target, ignore_index=-100)


class FeatureProjection(nn.Module):
    """Projected GAN's fixed cross-channel mixing for ``--seg-features``: a random 1x1 convolution from Seg's
    feature channels to ``channels`` (Kaiming-uniform, drawn from the global generator when the model is
    built, so the run's seed decides it), never trained, then bilinear upsampling to the photo's size so
    D_M keeps its input size (and Pix2Pix its photo conditioning). A buffer: checkpoints keep it and a
    resumed run judges the same projection."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        bound = math.sqrt(6.0 / in_channels)  # Kaiming uniform for a linear map of in_channels inputs
        self.register_buffer("weight", (torch.rand(channels, in_channels, 1, 1) * 2 - 1) * bound)

    def forward(self, features: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
        mixed = F.conv2d(features, self.weight.to(features.dtype))
        return F.interpolate(mixed, size=tuple(size), mode="bilinear", align_corners=False)
