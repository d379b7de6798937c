"""A small, honest test-only Seg: labels computed from pixel colors, registered as ``test-color``.

It is no stand-in for a real backend's quality, only for its contract: real labels from real pixels
(so different photos give different maps, a changed photo gives a changed map), in the 135 layout,
independent of the batch it is in. Its optional "weights" file (JSON) sets the gray threshold, so
a cache made with other weights really holds other maps.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from advseg_cli.files import sha256_file
from advseg_cli.segmentation.base import Segmenter, register_backend
from advseg_cli.segmentation.classes import CLASS_NAMES

BACKEND = "test-color"
PERSON, GRASS, SKY, WALL = (CLASS_NAMES.index(n) for n in ("person", "grass-merged", "sky-other-merged",
                                                           "wall-other-merged"))
BOTTLE = CLASS_NAMES.index("bottle")


class ColorSegmenter(Segmenter):
    """Gray pixels: dark -> unlabeled, bright -> wall; colored pixels by their dominant channel:
    red -> person (thing), green -> grass (stuff), blue -> sky (stuff); very saturated red -> bottle."""

    backend = BACKEND
    model_name = "color-thresholds-v1"

    def __init__(self, device: torch.device, precision: str = "fp32", gray: float = 0.08,
                 delay: float = 0.0) -> None:
        super().__init__(device, precision)
        self.gray = gray
        self.delay = delay  # seconds per image, so kill tests can land mid-run
        self.thresholds = {"gray": gray}
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a frozen parameter, like a real Seg

    def hard_labels(self, images: torch.Tensor) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay * images.shape[0])
        rgb = (images.float() + 1.0) / 2.0  # [N,3,H,W] in 0..1
        top, dominant = rgb.max(dim=1)
        spread = top - rgb.min(dim=1).values
        labels = torch.where(dominant == 0, PERSON, torch.where(dominant == 1, GRASS, SKY))
        labels = torch.where((dominant == 0) & (spread > 0.6), BOTTLE, labels)
        gray = torch.where(top < 0.25, 0, WALL)
        return torch.where(spread < self.gray, gray, labels).to(torch.uint8)


def register_color_backend(delay: float = 0.0) -> None:
    @register_backend(BACKEND)
    def build(weights: Path | None, device: torch.device, precision: str) -> ColorSegmenter:
        gray = 0.08
        if weights is not None:
            gray = float(json.loads(Path(weights).read_text())["gray"])
        segmenter = ColorSegmenter(device, precision, gray=gray, delay=delay)
        if weights is not None:
            segmenter.weights_record = {"name": BACKEND, "path": str(weights), "sha256": sha256_file(weights),
                                        "source": "explicit"}
        return segmenter


register_color_backend()
