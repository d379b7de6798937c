"""--test-mode public reproduces the public test.py's protocol (resize to load size, random crop, train-mode
batch norm and dropout, truncating quantisation), reproducibly from a seed; deterministic differs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advseg_cli.colorize import ColorizeConfig, colorize_folder, image_seed
from advseg_cli.errors import AdvsegError
from advseg_cli.images import read_rgb
from advseg_cli.training.data import Augmentation
from tests.colorize.kit import CPU, NAMES, png, result_of, rounded, trained_generator, truncated


def public(seed: int, batch_size: int = 3) -> ColorizeConfig:
    return ColorizeConfig(test_mode="public", seed=seed, batch_size=batch_size, **CPU)


def same_folder(a: Path, b: Path) -> bool:
    return all(np.array_equal(result_of(a, name), result_of(b, name)) for name in NAMES)


def test_public_mode_is_reproducible_and_differs_from_deterministic(pix2pix_run: Path, sketches: Path,
                                                                    tmp_path: Path) -> None:
    first = colorize_folder(pix2pix_run, sketches, tmp_path / "seed0", public(0))
    colorize_folder(pix2pix_run, sketches, tmp_path / "seed0-again", public(0, batch_size=1))
    colorize_folder(pix2pix_run, sketches, tmp_path / "seed1", public(1))
    colorize_folder(pix2pix_run, sketches, tmp_path / "deterministic", ColorizeConfig(**CPU))
    assert first.test_mode == "public" and first.size == 32
    assert result_of(tmp_path / "seed0", NAMES[0]).shape == (32, 32, 3)  # the crop, as the public code saves
    assert same_folder(tmp_path / "seed0", tmp_path / "seed0-again")  # same seed, other batching: same images
    assert not same_folder(tmp_path / "seed0", tmp_path / "seed1")
    assert not same_folder(tmp_path / "seed0", tmp_path / "deterministic")
    options = json.loads((tmp_path / "seed0" / "advseg-run.json").read_text())["options"]
    assert options["test_mode"] == "public" and options["eval_mode"] is False and options["seed"] == 0
    assert (options["size"], options["load_size"], options["quantisation"]) == (32, 36, "truncate")


@torch.no_grad()
def test_public_mode_computes_the_public_protocol(pix2pix_run: Path, sketches: Path, tmp_path: Path) -> None:
    """One image: bicubic 36x36, the 32x32 crop drawn from its seed, the generator in train mode (batch
    statistics of this image alone, dropout drawn from its seed), truncated to uint8."""
    out = tmp_path / "out"
    colorize_folder(pix2pix_run, sketches, out, public(7))
    name = NAMES[2]
    seed = image_seed(7, Path(name))
    gray_rgb = Image.fromarray(read_rgb(sketches / name)).convert("L").convert("RGB")
    resized = np.asarray(gray_rgb.resize((36, 36), Image.BICUBIC))
    x, y, _ = Augmentation(36, 32, flip=False).draw(torch.Generator().manual_seed(seed))
    crop = torch.from_numpy(np.array(resized[y:y + 32, x:x + 32])).permute(2, 0, 1).float().div(127.5).sub(1)[None]
    generator = trained_generator(pix2pix_run / "checkpoints" / "latest.pt").train()
    torch.manual_seed(seed)
    expected = truncated(generator(crop))
    assert np.array_equal(result_of(out, name), expected)
    assert not np.array_equal(expected, rounded(generator.eval()(crop)))  # train mode really matters here


def test_public_mode_refuses_size_zero_and_a_crop_larger_than_the_load(public_resnet: Path, sketches: Path,
                                                                      tmp_path: Path) -> None:
    with pytest.raises(AdvsegError, match="--size 0"):
        colorize_folder(public_resnet, sketches, tmp_path / "a", ColorizeConfig(test_mode="public", size=0, **CPU))
    with pytest.raises(AdvsegError, match="--load-size 32 is smaller"):
        colorize_folder(public_resnet, sketches, tmp_path / "b",
                        ColorizeConfig(test_mode="public", size=64, load_size=32, **CPU))
    with pytest.raises(AdvsegError, match="--load-size"):
        colorize_folder(public_resnet, sketches, tmp_path / "c", ColorizeConfig(load_size=40, **CPU))


def test_public_files_default_to_the_public_sizes(public_resnet: Path, tmp_path: Path) -> None:
    """A public generator file knows nothing of its training: 286 -> random 256 crop, as test.py."""
    folder = tmp_path / "big"
    folder.mkdir()
    Image.fromarray(np.full((64, 48), 255, np.uint8)).save(folder / "blank.png")
    out = tmp_path / "out"
    summary = colorize_folder(public_resnet, folder, out, ColorizeConfig(test_mode="public", **CPU))
    assert summary.size == 256 and png(out / "blank.png").shape == (256, 256, 3)
    assert json.loads((out / "advseg-run.json").read_text())["options"]["load_size"] == 286
