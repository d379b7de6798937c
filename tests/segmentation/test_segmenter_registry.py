"""The backend registry and the frozen-Seg contract every backend inherits."""

from __future__ import annotations

import pytest
import torch

from advseg_cli.errors import AdvsegError
from advseg_cli.segmentation import BACKENDS, Segmenter, build_segmenter, register_backend
from advseg_cli.segmentation import base
from advseg_cli.segmentation.base import available_backends


def test_unknown_backend_error_lists_the_valid_ones() -> None:
    with pytest.raises(AdvsegError) as error:
        build_segmenter("deeplab", None, torch.device("cpu"))
    message = str(error.value)
    assert "\n" not in message and "deeplab" in message
    for name in BACKENDS:
        assert name in message
    assert BACKENDS == ("mask2former", "panoptic-fpn", "shapes")


class _Linear(Segmenter):
    """A minimal backend: a 1x1 convolution to 135 classes (a real module with weights and dropout)."""

    backend = "test-linear"
    model_name = "1x1 conv"

    def __init__(self, device: torch.device, precision: str) -> None:
        super().__init__(device, precision)
        self.head = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Conv2d(3, 135, 1))

    def soft_probs(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(images).softmax(dim=1)

    def hard_labels(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.soft_probs(images).argmax(dim=1).to(torch.uint8)


def test_registered_backends_are_built_frozen_and_stay_in_eval_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # the test backend leaves no trace
    register_backend("test-linear")(lambda weights, device, precision: _Linear(device, precision))
    assert "test-linear" in available_backends()
    seg = build_segmenter("test-linear", None, torch.device("cpu"))
    assert all(not p.requires_grad for p in seg.parameters())
    seg.train()  # e.g. a generator's .train() reaching a Seg held inside it
    assert not seg.training and not seg.head[0].training
    images = torch.rand(2, 3, 8, 8)
    assert torch.equal(seg(images), seg(images))  # dropout off: deterministic
    assert seg.describe()["backend"] == "test-linear"


def test_fp16_on_cpu_is_refused_before_any_model_is_built() -> None:
    with pytest.raises(AdvsegError):
        build_segmenter("mask2former", None, torch.device("cpu"), precision="fp16")
