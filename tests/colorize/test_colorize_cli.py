"""The `colorize` command: one-line errors with exit status 2 for bad checkpoints and options, exit 1 when
every sketch fails, and a real process run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from advseg_cli import colorize as colorize_module
from advseg_cli.commands import colorize as command_module
from advseg_cli.models import networks
from tests.colorize.kit import CPU_OPTIONS, NAMES, assert_one_line_error, result_of, run_cli
from tests.helpers import REPO


def test_a_text_file_is_not_a_checkpoint(sketches: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.pth"
    notes.write_text("these are not weights\n")
    assert_one_line_error(run_cli(notes, sketches, tmp_path / "out", *CPU_OPTIONS), "notes.pth",
                          "neither an advseg checkpoint nor a public-code generator",
                          "not a file written by torch.save")


class _CreatesAFile:
    """A pickle that would create ``marker`` when unpickled: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_a_pickle_with_code_is_refused_unrun(sketches: Path, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    evil = tmp_path / "latest_net_G.pth"
    torch.save({"model.1.weight": torch.zeros(4, 3, 7, 7), "payload": _CreatesAFile(marker)}, evil)
    assert_one_line_error(run_cli(evil, sketches, tmp_path / "out", *CPU_OPTIONS), "Python objects besides tensors")
    assert not marker.exists()
    truncated = tmp_path / "truncated.pth"
    torch.save({"model.1.weight": torch.zeros(4, 3, 7, 7)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    assert_one_line_error(run_cli(truncated, sketches, tmp_path / "out", *CPU_OPTIONS), "damaged or truncated")


def test_a_state_dict_of_another_layout(sketches: Path, tmp_path: Path) -> None:
    other = tmp_path / "classifier.pth"
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, other)
    assert_one_line_error(run_cli(other, sketches, tmp_path / "out", *CPU_OPTIONS), "classifier.pth",
                          "not a generator advseg can build")


def test_a_public_file_with_the_wrong_arch(public_resnet: Path, sketches: Path, tmp_path: Path) -> None:
    result = run_cli(public_resnet, sketches, tmp_path / "out", "--arch", "unet_256", *CPU_OPTIONS)
    assert_one_line_error(result, "does not fit", "--arch resnet_6blocks")


def test_run_folder_problems(pix2pix_run: Path, sketches: Path, tmp_path: Path) -> None:
    (tmp_path / "empty-run").mkdir()
    assert_one_line_error(run_cli(tmp_path / "empty-run", sketches, tmp_path / "out", *CPU_OPTIONS),
                          "without checkpoints/")
    assert_one_line_error(run_cli(pix2pix_run, sketches, tmp_path / "out", "--epoch", "7", *CPU_OPTIONS),
                          "epoch_007.pt", "--epoch 1")
    assert_one_line_error(run_cli(pix2pix_run, sketches, tmp_path / "out", "--arch", "unet_256", *CPU_OPTIONS),
                          "--arch", "carries its own architecture")
    assert_one_line_error(run_cli(tmp_path / "missing", sketches, tmp_path / "out", *CPU_OPTIONS),
                          "no such run folder or checkpoint file")


def test_a_size_the_network_cannot_take(public_resnet: Path, sketches: Path, tmp_path: Path) -> None:
    assert_one_line_error(run_cli(public_resnet, sketches, tmp_path / "out", "--size", "30", *CPU_OPTIONS),
                          "--size 30", "multiple of 4")


def test_all_sketches_undecodable_exits_1(public_resnet: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"nope")
    result = run_cli(public_resnet, folder, tmp_path / "out", "--size", "32", *CPU_OPTIONS)
    assert_one_line_error(result, "all 1 sketches failed", code=1)


def test_a_real_process_with_dataloader_workers(public_resnet: Path, sketches: Path, tmp_path: Path) -> None:
    """The command as its own process, decoding in a worker process; same results as in-process."""
    code = "from advseg_cli.commands.colorize import colorize; colorize()"
    args = [public_resnet, sketches, tmp_path / "proc", "--size", "32", "--device", "cpu", "--workers", "1",
            "--batch-size", "2", "--grid"]
    process = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                             cwd=REPO, timeout=300)
    assert process.returncode == 0, process.stderr
    assert process.stdout.startswith("colorize: 3 written, 0 already done (deterministic, 32 px)"), process.stdout
    assert "index.html" in process.stdout
    in_process = run_cli(public_resnet, sketches, tmp_path / "here", "--size", "32", *CPU_OPTIONS)
    assert in_process.exit_code == 0, in_process.output
    for name in NAMES:
        assert (result_of(tmp_path / "proc", name) == result_of(tmp_path / "here", name)).all()


def test_the_commands_choices_are_the_models_choices() -> None:
    """The command spells its choices out (no torch import for --help); they must not drift."""
    assert command_module.GENERATOR_ARCHS == networks.GENERATOR_ARCHS
    assert command_module.NORMS == networks.NORMS
    assert command_module.TEST_MODES == colorize_module.TEST_MODES
    assert set(colorize_module.SIZE_MULTIPLE) == set(networks.GENERATOR_ARCHS)
