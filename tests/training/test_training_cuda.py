"""Training on a CUDA device (skipped without one): the first step's losses equal the CPU's, and every
precision trains with finite losses, frozen networks included (AutoPainter's VGG16 on the device)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from advseg_cli.training.loop import train
from tests.helpers import write_vgg16_weights
from tests.training.test_training import losses, make_dataset, tiny_config

pytestmark = pytest.mark.gpu  # skipped without CUDA (tests/conftest.py)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


def _run(data: Path, runs: Path, model: str, device: str, precision: str, vgg: Path, steps: int) -> list[dict]:
    extra = {"perceptual_weights": vgg} if model == "autopainter" else {}
    config = tiny_config(data, runs, model=model, max_steps=steps, device=device, precision=precision,
                         channels_last=device == "cuda", model_options={"dropout": False}, **extra)
    return losses(train(config).run_dir)


@pytest.mark.parametrize("model", ["cyclegan", "autopainter"])
def test_first_step_losses_on_cuda_equal_the_cpus(data: Path, tmp_path: Path, model: str) -> None:
    vgg = write_vgg16_weights(tmp_path / "vgg.pth")
    cpu = _run(data, tmp_path / "cpu", model, "cpu", "fp32", vgg, 1)[0]
    cuda = _run(data, tmp_path / "cuda", model, "cuda", "fp32", vgg, 1)[0]
    for key, value in cpu.items():
        if key.startswith("loss/G_") or key.startswith("loss/cycle"):  # before any update: same function
            assert cuda[key] == pytest.approx(value, rel=2e-2, abs=1e-4), key


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_every_precision_trains_with_finite_losses(data: Path, tmp_path: Path, precision: str) -> None:
    vgg = write_vgg16_weights(tmp_path / "vgg.pth")
    for model in ("cyclegan", "pix2pix", "autopainter"):
        rows = _run(data, tmp_path / model, model, "cuda", precision, vgg, 4)
        assert [row["step"] for row in rows] == [1, 2, 3, 4]
        assert all(math.isfinite(value) for row in rows for value in row.values()), (model, precision)
