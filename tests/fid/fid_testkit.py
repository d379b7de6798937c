"""Helpers of the FID tests, imported by conftest.py and the test modules."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytorch_fid.inception
import torch
import torchvision
from click.testing import CliRunner, Result
from PIL import Image

from advseg_cli.cli import main

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"


def random_fid_inception_state(seed: int) -> dict[str, torch.Tensor]:
    """The state dict of pytorch-fid's ``fid_inception_v3()``, re-initialised from ``seed``.

    He-normal convolutions and mildly perturbed batch-norm statistics keep the activations O(1)
    through all 90-odd layers, so the features (and FIDs) are well-conditioned numbers.
    """
    template = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None,
                                               init_weights=False).state_dict()
    with mock.patch.object(pytorch_fid.inception, "load_state_dict_from_url", lambda *a, **k: template):
        net = pytorch_fid.inception.fid_inception_v3()  # pytorch-fid's own builder: the real layout
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, torch.nn.BatchNorm2d):
                shape = module.weight.shape
                module.weight.copy_(1 + 0.1 * torch.randn(shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_var.copy_(1 + 0.1 * torch.rand(shape, generator=generator))
    return net.state_dict()


def photo_crops(photos: list[np.ndarray], count: int, size: int, seed: int) -> list[np.ndarray]:
    """``count`` crops of 2*size px, halved to ``size`` (2x2 mean), taken round-robin from ``photos``."""
    rng = np.random.default_rng(seed)
    crops = []
    for index in range(count):
        photo = photos[index % len(photos)]
        top = rng.integers(0, photo.shape[0] - 2 * size)
        left = rng.integers(0, photo.shape[1] - 2 * size)
        crop = photo[top:top + 2 * size, left:left + 2 * size].astype(np.float64)
        crops.append(np.round(crop.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))).astype(np.uint8))
    return crops


def write_folder(folder: Path, images: list[np.ndarray], suffix: str = ".png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"img_{index:03d}{suffix}", quality=95)
    return folder


def run_fid(*args: str) -> Result:
    """``advseg fid ARGS`` through the real click group (error mapping included), in this process."""
    return CliRunner().invoke(main, ["fid", *map(str, args)], catch_exceptions=False)


def assert_one_line_error(result: Result, *fragments: str) -> str:
    """Exit status 2 and exactly one line on stderr that names the problem."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("advseg fid: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def cpu_options(*extra: str) -> list[str]:
    """Small, deterministic runs: CPU, decoding in this process, no progress bar."""
    return ["--device", "cpu", "--workers", "0", "--quiet", *extra]
