"""Crop sizes a model cannot train at are refused before anything is written, and only those.

For every generator architecture and model, sizes on both sides of each boundary (the ResNets' multiples of
4, the U-Nets' multiples of 128 / 256, the PatchGAN's smallest input, load < crop, tiny sizes) go through the
real command line. The reference for "cannot train" is a real training step with the size check switched
off: a size is refused exactly when that step fails, a refusal is one line with exit status 2 and leaves no
file or folder behind, and the sizes a refusal proposes do train.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from advseg_cli.training import geometry
from advseg_cli.training.loop import Trainer
from tests.helpers import invoke_advseg
from tests.training.test_training import make_dataset, tiny_config

# (arch, model, crop, load) on both sides of each boundary: the ResNets' multiples of 4, the U-Nets' multiples of
# 128 / 256, the PatchGAN's smallest input (24 px with 3 layers), load < crop, and a 1 px crop.
CASES = [
    *[("resnet_9blocks", "cyclegan", crop, load)
      for crop, load in [(1, 1), (23, 24), (24, 24), (31, 32), (32, 32), (33, 36), (32, 30)]],
    *[("resnet_9blocks", "pix2pix", crop, load) for crop, load in [(23, 24), (24, 24), (31, 32), (32, 32)]],
    ("resnet_9blocks", "autopainter", 1, 1), ("resnet_9blocks", "autopainter", 33, 36),
    ("resnet_6blocks", "cyclegan", 28, 28), ("resnet_6blocks", "pix2pix", 25, 28),
    ("resnet_6blocks", "autopainter", 8, 8),
    ("unet_128", "cyclegan", 127, 128), ("unet_128", "pix2pix", 64, 64),
    ("unet_128", "pix2pix", 129, 132), ("unet_128", "autopainter", 127, 128), ("unet_128", "autopainter", 128, 128),
    ("unet_256", "cyclegan", 255, 256), ("unet_256", "pix2pix", 256, 256), ("unet_256", "autopainter", 257, 260),
    ("unet_256", "autopainter", 256, 256),
    ("resnet_9blocks", "cut", 30, 32), ("resnet_9blocks", "cut", 32, 32), ("resnet_6blocks", "fastcut", 23, 24),
    ("resnet_6blocks", "fastcut", 24, 24),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("sizes-data"))


def every_path(*roots: Path) -> set[Path]:
    return {path for root in roots if root.exists() for path in root.rglob("*")}


def cli_step(data: Path, runs: Path, arch: str, model: str, crop: int, load: int, name: str = "r"):
    return invoke_advseg("train", str(data), "--name", name, "--runs-dir", str(runs), "--model", model,
                         "--arch", arch, "--ngf", "2", "--ndf", "2", "--crop-size", str(crop), "--load-size",
                         str(load), "--max-steps", "1", "--workers", "0", "--device", "cpu", "--quiet",
                         *(["--lambda-feat", "0"] if model == "autopainter" else []))


def a_real_step_fails(data: Path, runs: Path, arch: str, model: str, crop: int, load: int,
                      monkeypatch: pytest.MonkeyPatch) -> bool:
    """The reference: does one real training step fail at this size, with the size check switched off?"""
    options = {"arch": arch, "ngf": 2, "ndf": 2, **({"lambda_feat": 0.0} if model == "autopainter" else {})}
    with monkeypatch.context() as patch:
        patch.setattr("advseg_cli.training.loop.crop_size_refusal", lambda *args: None)
        try:
            Trainer(tiny_config(data, runs, model=model, crop_size=crop, load_size=load, max_steps=1,
                                model_options=options)).run()
        except Exception:  # noqa: BLE001 - any failure of the real step is what the check must foresee
            return True
    return False


@pytest.mark.parametrize(("arch", "model", "crop", "load"), CASES)
def test_a_crop_size_is_refused_before_any_side_effect_exactly_when_training_fails(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str, model: str, crop: int,
        load: int) -> None:
    monkeypatch.chdir(tmp_path)
    before = every_path(tmp_path, data)
    result = cli_step(data, tmp_path / "runs", arch, model, crop, load)
    if result.returncode == 0:
        assert "train: 1 steps" in result.stdout
        return
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert every_path(tmp_path, data) == before, "a refused run left files behind"
    if load < crop:
        assert "larger than --load-size" in result.stderr
        return
    assert a_real_step_fails(data, tmp_path / "reference", arch, model, crop, load, monkeypatch), \
        f"refused a size that trains: {result.stderr}"
    proposed = [int(size) for size in re.findall(r"\d+", result.stderr.split("nearby:")[1].split("(")[0].split(";")[0])]
    assert proposed, result.stderr
    for size in (s for s in proposed if s <= 256):  # following the advice works (larger ones: too slow here)
        accepted = cli_step(data, tmp_path / "runs", arch, model, size, max(size, load), name=f"p{size}")
        assert accepted.returncode == 0, accepted.stderr


def test_the_probe_agrees_with_real_steps_around_the_resnet_boundary(data: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Every size from 20 to 36 px: the meta-device probe refuses exactly the ones a real step fails at."""
    from advseg_cli.models.advseg import model_config

    config = model_config("cyclegan", arch="resnet_6blocks", ngf=2, ndf=2)
    for crop in range(20, 37):
        refused = geometry.crop_size_refusal("cyclegan", config, crop, 40, 1) is not None
        fails = a_real_step_fails(data, tmp_path / str(crop), "resnet_6blocks", "cyclegan", crop, 40, monkeypatch)
        assert refused == fails, f"crop {crop}: probe says {'refuse' if refused else 'train'}, real step " \
                                 f"{'fails' if fails else 'trains'}"
