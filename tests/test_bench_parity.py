"""bench/bench_parity.py's own logic, without the public code: the epochs both sides get, the aligned
pairs it writes for the public pix2pix, and the one-line errors of a missing checkout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.bench_parity import (CLONE, ParityError, Settings, check_reference, pick_option, reference_test_args,
                                write_aligned_pairs)


def settings(steps: int, n_train: int = 200) -> Settings:
    return Settings(models=("pix2pix",), seeds=(0,), steps=steps, n_train=n_train, load_size=72, crop_size=64,
                    ngf=16, ndf=16, pix2pix_norm="instance", cyclegan_identity=0.5)


@pytest.mark.parametrize("steps, total, full, decay", [(1, 1, 1, 0), (400, 2, 1, 1), (5000, 25, 13, 12),
                                                       (401, 3, 2, 1)])
def test_steps_become_whole_epochs_half_at_full_rate(steps: int, total: int, full: int, decay: int) -> None:
    s = settings(steps)
    assert (s.epochs_total, s.n_epochs, s.n_epochs_decay) == (total, full, decay)
    assert s.images_seen == total * 200  # both sides train whole epochs


def test_aligned_pairs_put_sketch_left_photo_right(tmp_path: Path) -> None:
    world = tmp_path / "world"
    for split in ("trainA", "trainB", "testA", "testB"):
        (world / split).mkdir(parents=True)
    sketch = np.full((8, 8), 255, np.uint8)
    photo = np.zeros((8, 8, 3), np.uint8)
    photo[..., 0] = 200
    for split in ("train", "test"):
        Image.fromarray(sketch).save(world / f"{split}A" / "00000.png")  # grey, as the world's sketches
        Image.fromarray(photo).save(world / f"{split}B" / "00000.png")
    folder = write_aligned_pairs(world, tmp_path / "aligned")
    pair = np.asarray(Image.open(folder / "test" / "00000.png"))
    assert pair.shape == (8, 16, 3)
    assert (pair[:, :8] == 255).all() and (pair[:, 8:] == photo).all()


def test_missing_checkout_names_the_clone(tmp_path: Path) -> None:
    with pytest.raises(ParityError, match="not a checkout") as error:
        check_reference(tmp_path)
    assert CLONE in str(error.value) and "\n" not in str(error.value)


def test_option_names_follow_the_checkouts_version() -> None:
    new, old = "parser.add_argument('--load_size')", 'parser.add_argument("--loadSize")'
    assert pick_option(new, "--load_size", "--loadSize") == "--load_size"
    assert pick_option(old, "--load_size", "--loadSize") == "--loadSize"
    with pytest.raises(ParityError):
        pick_option("", "--load_size")
    options = "'--load_size' '--crop_size' '--num_threads'"  # no --gpu_ids: the 2025 torchrun version
    args = reference_test_args(settings(1), options, "pix2pix", Path("d"), "n", Path("c"), Path("r"), 50)
    assert "--gpu_ids" not in args and args[args.index("--preprocess") + 1] == "resize" and "--eval" in args
    assert args[args.index("--load_size") + 1] == args[args.index("--crop_size") + 1] == "64"
