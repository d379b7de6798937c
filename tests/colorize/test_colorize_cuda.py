"""On a CUDA device (skipped without one): the same results as on the CPU, and the reduced precisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from advseg_cli.colorize import ColorizeConfig, colorize_folder
from tests.colorize.kit import NAMES, result_of

pytestmark = pytest.mark.gpu  # skipped without CUDA (tests/conftest.py)


def test_cuda_matches_the_cpu_and_half_precisions_stay_close(public_resnet: Path, sketches: Path,
                                                             tmp_path: Path) -> None:
    results = {}
    for device, precision in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "bf16"), ("cuda", "fp16")):
        out = tmp_path / f"{device}-{precision}"
        colorize_folder(public_resnet, sketches, out, ColorizeConfig(size=32, batch_size=3, device=device,
                                                                     precision=precision, quiet=True))
        results[device, precision] = np.stack([result_of(out, name).astype(int) for name in NAMES])
    reference = results["cpu", "fp32"]
    assert np.abs(results["cuda", "fp32"] - reference).max() <= 2  # TF32 / other kernels, same function
    for precision in ("bf16", "fp16"):
        assert np.abs(results["cuda", precision] - reference).mean() < 4, precision
