"""Shared fixtures of the segmentation tests: a tiny real Mask2Former saved like real weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
HAS_DETECTRON2 = importlib.util.find_spec("detectron2") is not None


@pytest.fixture(scope="session")
def tiny_mask2former_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers", reason="transformers is not installed")
    from tests.segmentation.tiny_mask2former import save_tiny_mask2former

    return save_tiny_mask2former(tmp_path_factory.mktemp("mask2former-tiny"))


@pytest.fixture(scope="session")
def tiny_mask2former(tiny_mask2former_dir: Path):
    """The tiny model loaded through the backend registry, exactly as real weights are."""
    from advseg_cli.segmentation import build_segmenter

    return build_segmenter("mask2former", tiny_mask2former_dir, torch.device("cpu"))


@pytest.fixture()
def images() -> torch.Tensor:
    """Three 64x64 RGB images in [-1, 1] with structure (gradients and blocks), as training tensors."""
    generator = torch.Generator().manual_seed(1)
    ramp = torch.linspace(-1, 1, 64)
    batch = torch.rand(3, 3, 64, 64, generator=generator) * 2 - 1
    batch[0] = ramp.view(1, 1, -1).expand(3, 64, 64)
    batch[1, :, :32] = torch.tensor([0.8, -0.5, 0.1]).view(3, 1, 1)
    return batch
