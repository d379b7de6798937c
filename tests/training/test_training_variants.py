"""The segmentation variants in real training runs: the consistency control without segmentation
discriminators, and the refusals a user meets before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from advseg_cli.cli import main
from advseg_cli.errors import AdvsegError
from advseg_cli.training.loop import train
from tests.training.test_exact_resume import data, shapes_segcache  # noqa: F401  (fixtures)
from tests.training.test_training import losses, tiny_config


def test_the_consistency_control_trains_without_segmentation_discriminators(
        data: Path, shapes_segcache: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: F811
    weights, cache = shapes_segcache
    run = train(tiny_config(data, tmp_path, model="pix2pix", segcache=cache, seg_weights=weights, max_steps=3,
                            log_seg_grad_norm=True, model_options={"seg_consistency": 2.0})).run_dir
    rows = losses(run)
    assert all(row["loss/G_SegCE"] > 0 for row in rows)
    assert not any(key.startswith("loss/D_M") or key.startswith("loss/G_M") for key in rows[0])
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "grad/G_G_SegCE_norm" in header and "grad/G_seg_norm" not in header


def test_the_consistency_control_without_label_maps_is_refused(data: Path, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(AdvsegError, match="--seg-consistency needs the photos' label maps"):
        train(tiny_config(data, tmp_path, model="pix2pix", max_steps=1, model_options={"seg_consistency": 1.0}))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("arguments", "message"), [
    (["--model", "cyclegan", "--seg-consistency", "1"], "--seg-consistency do not apply"),
    (["--model", "pix2pix", "--seg-augment", "cutout"], "--advseg none has none"),
    (["--model", "pix2pix", "--advseg", "both", "--seg-augment", "blur"], "unknown blur"),
])
def test_the_command_refuses_a_variant_that_cannot_act_in_one_line(data: Path, tmp_path: Path,  # noqa: F811
                                                                  arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["train", str(data), "--name", "v", "--runs-dir", str(tmp_path / "runs"),
                                       *arguments])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
