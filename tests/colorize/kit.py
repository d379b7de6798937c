"""Helpers of the colorize tests: real sketches, tiny real generators saved as public-code files,
an independent reference of the forward pass, and the CLI through the real click group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner, Result
from PIL import Image

from advseg_cli.cli import main
from advseg_cli.images import read_rgb
from advseg_cli.models.advseg import build_model, model_config
from advseg_cli.models.networks import define_generator, init_weights
from advseg_cli.training.checkpoint import load_checkpoint
from advseg_cli.training.data import Augmentation, photo_tensor
from hed import canny
from tests.helpers import photo

CPU_OPTIONS = ("--device", "cpu", "--workers", "0", "--quiet")
CPU = dict(device="cpu", workers=0, quiet=True)  # ColorizeConfig keywords
NAMES = ("astronaut.png", "coffee.png", "sub/chelsea.jpg")  # the ``sketches`` fixture


def sketch(name: str, width: int, height: int, shift: int = 0) -> np.ndarray:
    """Canny lines (black on white) of a real scikit-image photo, ``height`` x ``width``."""
    rgb = photo(name, max(width, height) + shift)
    rgb = np.ascontiguousarray(np.roll(rgb, shift, axis=1)[:height, :width])
    return canny(rgb)


def write_sketches(folder: Path, specs: dict[str, tuple[str, int, int]]) -> Path:
    """{relative name: (photo, width, height)}; the suffix decides the file format (gray PNG, JPEG ...)."""
    for index, (relative, (name, width, height)) in enumerate(specs.items()):
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sketch(name, width, height, shift=3 * index)).save(target, quality=95)
    return folder


def tiny_generator(arch: str = "resnet_6blocks", norm: str = "instance", dropout: bool = False,
                   ngf: int = 4, seed: int = 0) -> torch.nn.Module:
    """A real generator at tiny width, Kaiming-initialised (seeded): the papers' N(0, 0.02) init gives a
    tiny network an almost constant output, which would make equality tests say little."""
    torch.manual_seed(seed)
    return init_weights(define_generator(arch, 3, 3, ngf, norm, dropout), "kaiming").eval()


def save_public(generator: torch.nn.Module, path: Path) -> Path:
    """Saved as the CycleGAN code base saves ``*_net_G*.pth``: the bare state dict (our layout is its)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.clone() for k, v in generator.state_dict().items()}, path)
    return path


def training_input(path: Path, size: int) -> torch.Tensor:
    """A sketch as the *training* data prepares it (read, gray replicated to RGB, bicubic resize),
    so the tests check that colorize feeds the network what it was trained on: [1,3,size,size]."""
    gray_rgb = np.asarray(Image.fromarray(read_rgb(path)).convert("L").convert("RGB"))
    return photo_tensor(gray_rgb, Augmentation(size, size, flip=False), 0, 0, False)[None]


def rounded(images: torch.Tensor) -> np.ndarray:
    """[1,3,H,W] tanh output -> HxWx3 uint8, rounded (the deterministic mode's quantisation)."""
    return ((images[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def truncated(images: torch.Tensor) -> np.ndarray:
    """[1,3,H,W] -> HxWx3 uint8 as the public code's tensor2im: ((x + 1) / 2 * 255).astype(uint8)."""
    array = images[0].float().permute(1, 2, 0).numpy()
    return ((array + 1) / 2.0 * 255.0).astype(np.uint8)


def trained_generator(checkpoint: Path) -> torch.nn.Module:
    """The sketch -> photo generator of one of our checkpoints, rebuilt the way training builds it."""
    payload = load_checkpoint(checkpoint)
    model = build_model(payload["model_name"], model_config(payload["model_name"], **payload["model_config"]))
    model.load_state_dict(payload["model"])
    return model.photo_generator.eval()


def result_of(out: Path, relative: str) -> np.ndarray:
    """The result colorize wrote for the sketch ``relative``."""
    return png(out / Path(relative).with_suffix(".png"))


def png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def run_cli(*args: object) -> Result:
    """``advseg colorize ARGS`` through the real click group (error mapping included), in this process."""
    return CliRunner().invoke(main, ["colorize", *map(str, args)], catch_exceptions=False)


def assert_one_line_error(result: Result, *fragments: str, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("advseg colorize: error:"), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def assert_equal_up_to_summation_order(actual: np.ndarray, expected: np.ndarray, label: str = "") -> None:
    """colorize batches sketches (and may pick other convolution kernels) where the reference forward
    runs one at a time, so a float sum in another order can flip a value sitting on a .5 rounding
    boundary: allow one 8-bit level on a handful of pixels, nothing more. A wrong preprocessing, size
    or weight moves thousands of pixels by tens of levels."""
    assert actual.shape == expected.shape, label
    difference = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    assert difference.max() <= 1, f"{label}: max difference {difference.max()} levels"
    assert (difference > 0).sum() <= max(2, difference.size // 1000), f"{label}: {(difference > 0).sum()} values differ"
