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


def test_gradient_norms_measured_every_nth_step_leave_the_training_as_it_was(
        data: Path, shapes_segcache: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: F811
    """The measurement is extra backward passes on a retained graph: it must not change one weight, and
    --grad-norm-every thins it to the steps it names (and the first, whose row sets metrics.csv's columns)."""
    import csv

    import torch

    weights, cache = shapes_segcache
    common = {"model": "pix2pix", "segcache": cache, "seg_weights": weights, "max_steps": 6, "log_seg_grad_norm": True,
              "model_options": {"advseg": "both"}}
    every_step = train(tiny_config(data, tmp_path / "a", **common)).run_dir
    thinned = train(tiny_config(data, tmp_path / "b", grad_norm_every=3, **common)).run_dir
    with open(thinned / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    measured = [int(row["step"]) for row in rows if row.get("grad/G_seg_norm")]
    assert measured == [1, 3, 6] and len(rows) == 6
    with open(every_step / "metrics.csv", newline="") as handle:
        assert all(row.get("grad/G_seg_norm") for row in csv.DictReader(handle))
    # a resumed session whose first row has no measurement keeps the file's columns
    first_session = train(tiny_config(data, tmp_path / "c", grad_norm_every=3, **{**common, "max_steps": 4}))
    resumed = train(tiny_config(data, tmp_path / "c", grad_norm_every=3, resume=True, **common)).run_dir
    assert first_session.run_dir == resumed
    with open(resumed / "metrics.csv", newline="") as handle:
        again = list(csv.DictReader(handle))
    columns = [key for key in rows[0] if key.startswith(("loss/", "grad/")) or key == "step"]
    assert [[row[key] for key in columns] for row in again] == [[row[key] for key in columns] for row in rows]
    a = torch.load(every_step / "checkpoints" / "latest.pt", weights_only=True)["model"]
    b = torch.load(thinned / "checkpoints" / "latest.pt", weights_only=True)["model"]
    assert [name for name in a if not torch.equal(a[name], b[name])] == []


def test_grad_norm_every_without_the_measurement_is_refused_in_one_line(data: Path, tmp_path: Path) -> None:  # noqa: F811
    result = CliRunner().invoke(main, ["train", str(data), "--name", "v", "--runs-dir", str(tmp_path / "runs"),
                                       "--grad-norm-every", "50"])
    assert result.exit_code == 2, result.output
    assert "add --log-seg-grad-norm" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_the_trainers_adam_steps_like_torchs_default_adam_bit_for_bit() -> None:
    """The multi-tensor Adam is a speed choice only: the same values as torch's default on the CPU (a fused
    or otherwise reordered Adam would differ in the last bit and break exact resumes of older runs)."""
    import dataclasses

    import torch

    from advseg_cli.training.loop import TrainConfig, adam

    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(shape)) for shape in ((16, 8, 3, 3), (16,), (3, 16, 7, 7))]
    reference = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    config = dataclasses.replace(TrainConfig(name="x", sketches=Path("a"), photos=Path("b")), lr=3e-4, beta1=0.5)
    optimizers = (adam(ours, config), torch.optim.Adam(reference, lr=3e-4, betas=(0.5, 0.999)))
    for _ in range(20):
        for p, q in zip(ours, reference):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        for optimizer in optimizers:
            optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, reference))
