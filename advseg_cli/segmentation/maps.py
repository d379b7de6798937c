"""Derived forms of 135-class segmentation maps: one-hot, 3-channel binary, preview colors.

The binary map is what the binary segmentation discriminator D_B sees: channel 0 "unlabeled" is always
zero (as in the public code, which never filled it), channel 1 marks thing pixels, channel 2 stuff
pixels. It is derived from labels (hard maps) or from class probabilities (soft maps) with the same
rule, so that ``binary_from_probs(one_hot(l)) == binary_from_labels(l)``.
"""

from __future__ import annotations

import colorsys

import numpy as np
import torch
from torch import Tensor

from advseg_cli.segmentation.classes import IS_STUFF, IS_THING, NUM_CLASSES


def _check_labels(labels: Tensor) -> None:
    if labels.dim() != 3:
        raise ValueError(f"labels must be [N,H,W], got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")


def one_hot(labels: Tensor) -> Tensor:
    """[N,H,W] integer labels -> [N,135,H,W] float one-hot (what D_M sees for a hard map)."""
    _check_labels(labels)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= NUM_CLASSES):
        raise ValueError(f"labels must lie in 0..{NUM_CLASSES - 1}")
    onehot = torch.nn.functional.one_hot(labels.long(), NUM_CLASSES)  # [N,H,W,C]
    return onehot.permute(0, 3, 1, 2).float().contiguous()


def _class_mask(flags: tuple[bool, ...], device: torch.device) -> Tensor:
    return torch.tensor(flags, dtype=torch.bool, device=device)


def binary_from_labels(labels: Tensor) -> Tensor:
    """[N,H,W] labels -> [N,3,H,W] float: ch0 = 0 (unlabeled, always empty), ch1 thing, ch2 stuff."""
    _check_labels(labels)
    long_labels = labels.long()
    thing = _class_mask(IS_THING, labels.device)[long_labels]
    stuff = _class_mask(IS_STUFF, labels.device)[long_labels]
    empty = torch.zeros_like(thing)
    return torch.stack([empty, thing, stuff], dim=1).float()


def binary_from_probs(probs: Tensor) -> Tensor:
    """[N,135,H,W] class probabilities -> [N,3,H,W]: ch0 = 0, ch1 = sum of thing probs, ch2 = stuff.

    Differentiable (a sum over channels), so gradients reach the image through a soft map.
    """
    if probs.dim() != 4 or probs.shape[1] != NUM_CLASSES:
        raise ValueError(f"probs must be [N,{NUM_CLASSES},H,W], got shape {tuple(probs.shape)}")
    thing = _class_mask(IS_THING, probs.device).to(probs.dtype)
    stuff = _class_mask(IS_STUFF, probs.device).to(probs.dtype)
    thing_sum = torch.einsum("nchw,c->nhw", probs, thing)
    stuff_sum = torch.einsum("nchw,c->nhw", probs, stuff)
    return torch.stack([torch.zeros_like(thing_sum), thing_sum, stuff_sum], dim=1)


def palette() -> np.ndarray:
    """A fixed [135,3] uint8 color per class for previews: black for unlabeled and the empty class 81,
    well-spread hues (golden-ratio steps) for the rest, brighter for things than for stuff."""
    colors = np.zeros((NUM_CLASSES, 3), dtype=np.uint8)
    golden = 0.618033988749895
    for index in range(1, NUM_CLASSES):
        if not (IS_THING[index] or IS_STUFF[index]):
            continue
        hue = (index * golden) % 1.0
        saturation, value = (0.85, 0.95) if IS_THING[index] else (0.55, 0.70)
        red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
        colors[index] = np.round(np.array([red, green, blue]) * 255).astype(np.uint8)
    return colors


def colorize(labels: np.ndarray) -> np.ndarray:
    """[H,W] labels -> [H,W,3] uint8 RGB preview with :func:`palette`."""
    return palette()[np.asarray(labels, dtype=np.int64)]
