"""Checkpoint files: what load_checkpoint accepts, what it refuses (one clear line each), atomic saves, RNG states."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from advseg_cli.errors import AdvsegError
from advseg_cli.training.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint, restore_rng_states,
                                            rng_states, save_checkpoint)

CPU = torch.device("cpu")


def test_a_saved_payload_loads_back_with_its_format_and_version(tmp_path: Path) -> None:
    payload = {"model": {"w": torch.arange(6.0).view(2, 3)}, "position": {"step": 3, "epoch": 2, "batch": 1}}
    save_checkpoint(tmp_path / "latest.pt", payload)
    loaded = load_checkpoint(tmp_path / "latest.pt")
    assert loaded["format"] == CHECKPOINT_FORMAT == "advseg-checkpoint" and loaded["version"] == CHECKPOINT_VERSION == 1
    assert torch.equal(loaded["model"]["w"], payload["model"]["w"]) and loaded["position"] == payload["position"]
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # no temporary file left beside it


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "latest.pt", {"step": 1})

    class Unsaveable:  # torch.save pickles it and fails half-way
        def __reduce__(self) -> tuple:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path / "latest.pt", {"step": 2, "bad": Unsaveable()})
    assert load_checkpoint(tmp_path / "latest.pt")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def refusal(path: Path) -> str:
    with pytest.raises(AdvsegError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message[len(f"{path}: "):]


def test_files_that_are_not_our_checkpoints_are_refused_in_one_line(tmp_path: Path) -> None:
    assert refusal(tmp_path / "missing.pt") == "no such checkpoint"
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(Exception) as raw:  # what torch says about it: its first line is passed on
        torch.load(tmp_path / "notes.pt", weights_only=True)
    first_line = str(raw.value).splitlines()[0]
    assert refusal(tmp_path / "notes.pt") == f"not a readable advseg checkpoint (UnpicklingError: {first_line})"
    torch.save({"G": torch.zeros(1)}, tmp_path / "state_dict.pt")
    expected = "not an advseg checkpoint (for public-code generators use --init-from)"
    assert refusal(tmp_path / "state_dict.pt") == expected
    torch.save([1, 2], tmp_path / "list.pt")
    assert refusal(tmp_path / "list.pt").startswith("not an advseg checkpoint")
    torch.save({"format": CHECKPOINT_FORMAT, "version": 2}, tmp_path / "newer.pt")
    assert refusal(tmp_path / "newer.pt") == "checkpoint version 2 is not 1; use the advseg version that wrote it"
    (tmp_path / "empty.pt").write_bytes(b"")  # torch's error has no text at all
    assert refusal(tmp_path / "empty.pt") == "not a readable advseg checkpoint (EOFError: )"


def as_if_saved_on_a_gpu(path: Path) -> Path:
    """Rewrite a torch.save file so that its tensors say they were saved from cuda:0 (as on a GPU machine):
    the storage location string of the pickle, everything else byte for byte."""
    with zipfile.ZipFile(path) as archive:
        records = {info: archive.read(info) for info in archive.infolist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for info, data in records.items():
            if info.filename.endswith("/data.pkl"):
                assert data.count(b"X\x03\x00\x00\x00cpu") == 1
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            archive.writestr(info, data)
    return path


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only machine")
def test_a_checkpoint_saved_on_a_gpu_loads_on_a_cpu_only_machine(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "gpu.pt", {"w": torch.arange(3.0)})
    as_if_saved_on_a_gpu(tmp_path / "gpu.pt")
    with pytest.raises(RuntimeError, match="CUDA"):  # what torch does without a map_location
        torch.load(tmp_path / "gpu.pt", weights_only=True)
    loaded = load_checkpoint(tmp_path / "gpu.pt")["w"]
    assert loaded.device.type == "cpu" and torch.equal(loaded, torch.arange(3.0))


def test_a_pickle_with_code_is_refused_without_running_it(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (tmp_path / "pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": CHECKPOINT_FORMAT, "x": Payload()}, protocol=2))
    assert refusal(tmp_path / "evil.pt").startswith("not a readable advseg checkpoint (")
    assert not (tmp_path / "pwned").exists()


def test_rng_states_restore_the_global_generator() -> None:
    torch.manual_seed(11)
    saved = rng_states(CPU)
    assert set(saved) == {"torch"}  # no CUDA state on a CPU run
    expected = torch.rand(5)
    torch.rand(3)
    restore_rng_states(saved, CPU)
    assert torch.equal(torch.rand(5), expected)


@pytest.mark.gpu
def test_rng_states_of_a_cuda_run_restore_the_cuda_generator_too() -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(11)
    saved = rng_states(device)
    assert set(saved) == {"torch", "cuda"} and torch.equal(saved["cuda"], torch.cuda.get_rng_state(device))
    expected = torch.rand(5, device=device)
    torch.rand(3, device=device)
    restore_rng_states(saved, device)
    assert torch.equal(torch.rand(5, device=device), expected)
