"""A tiny, real, differentiable stand-in for the frozen segmentation network Seg, for the model tests.

It is a Segmenter (the interface the models consume): a frozen random 1x1 convolution from RGB to the
135 classes, softmax for the soft probabilities, argmax for the hard labels; its "features" (for
``--seg-features``) are a frozen random stride-2 3x3 convolution and a ReLU. It is not a fake of the
panoptic network's numbers; it gives the models a Seg whose gradient flows the way the real one's does.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from advseg_cli.segmentation.base import Segmenter
from advseg_cli.segmentation.classes import NUM_CLASSES


class PixelwiseSeg(Segmenter):
    backend = "test-pixelwise"
    model_name = "frozen random 1x1 conv + softmax"

    def __init__(self, seed: int = 1234) -> None:
        super().__init__(torch.device("cpu"), "fp32")
        generator = torch.Generator().manual_seed(seed)
        self.classifier = nn.Conv2d(3, NUM_CLASSES, 1)
        with torch.no_grad():  # large weights so that the argmax labels vary over the image
            self.classifier.weight.copy_(torch.randn(self.classifier.weight.shape, generator=generator) * 3)
            self.classifier.bias.copy_(torch.randn(NUM_CLASSES, generator=generator))
        self.encoder = nn.Conv2d(3, 6, 3, stride=2, padding=1)  # features: a frozen random stride-2 layer
        with torch.no_grad():
            self.encoder.weight.copy_(torch.randn(self.encoder.weight.shape, generator=generator))
            self.encoder.bias.copy_(torch.randn(6, generator=generator))
        self.freeze()

    def features(self, images: Tensor) -> Tensor:
        return torch.relu(self.encoder(images))

    def soft_probs(self, images: Tensor) -> Tensor:
        return torch.softmax(self.classifier(images), dim=1)

    def hard_labels(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.soft_probs(images).argmax(1).to(torch.uint8)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These tensors are tiny: with two intra-op threads on a shared 2-core machine, OpenMP's spinning
    threads made a training step 50x slower than with one. Restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
