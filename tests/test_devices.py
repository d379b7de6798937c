"""Precision choices a device cannot run well: refused (fp16 on a CPU) or warned about (bf16 on a CPU
without bf16 convolution kernels, where torch's fallback is ~30x slower than fp32)."""

from __future__ import annotations

import pytest
import torch

import advseg_cli.devices as devices
from advseg_cli.errors import AdvsegError


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_warned", set())


def test_bf16_on_a_cpu_without_bf16_kernels_warns_once(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(devices, "cpu_has_bf16_convolutions", lambda: False)
    devices.check_precision("bf16", torch.device("cpu"))
    devices.check_precision("bf16", torch.device("cpu"))
    err = capsys.readouterr().err
    assert err.count("--precision bf16 on this CPU") == 1 and "fp32 is the fast choice" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("supported", "precision"), [(True, "bf16"), (False, "fp32")])
def test_no_warning_where_bf16_has_kernels_or_is_not_asked_for(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str],
                                                               supported: bool, precision: str) -> None:
    monkeypatch.setattr(devices, "cpu_has_bf16_convolutions", lambda: supported)
    devices.check_precision(precision, torch.device("cpu"))
    assert capsys.readouterr().err == ""


def test_the_probe_agrees_with_onednn() -> None:
    assert devices.cpu_has_bf16_convolutions() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_fp16_on_a_cpu_is_refused_naming_the_choices() -> None:
    with pytest.raises(AdvsegError, match="needs a CUDA device; use bf16 or fp32"):
        devices.check_precision("fp16", torch.device("cpu"))
