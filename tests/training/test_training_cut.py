"""``advseg train --model cut | fastcut``: a few steps, the late projection-head optimizer, torchrun, AMP,
--init-from, --like, the schedules, and colorize of a CUT run (tiny networks, CPU).

Exact resume of CUT / FastCUT is in test_exact_resume.py with the other models.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from advseg_cli.training.checkpoint import load_checkpoint
from advseg_cli.training.loop import Trainer, train
from tests.helpers import REPO, invoke_advseg
from tests.training.test_exact_resume import shapes_segcache  # noqa: F401 (a module fixture, used by name)
from tests.training.test_training import losses, make_dataset, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("cut-data"))


@pytest.mark.parametrize("model", ["cut", "fastcut"])
@pytest.mark.parametrize("advseg", ["none", "both"])
def test_a_few_steps_give_finite_losses(data: Path, shapes_segcache: tuple[Path, Path], tmp_path: Path,  # noqa: F811
                                        model: str, advseg: str) -> None:
    weights, cache = shapes_segcache
    seg = {"segcache": cache, "seg_weights": weights} if advseg != "none" else {}
    summary = train(tiny_config(data, tmp_path, model=model, max_steps=3, log_seg_grad_norm=True,
                                model_options={"advseg": advseg}, **seg))
    rows = losses(summary.run_dir)
    expected = {"loss/G_GAN", "loss/NCE", "loss/D"} | ({"loss/NCE_Y"} if model == "cut" else set())
    expected |= {"loss/G_M", "loss/G_Bin", "loss/D_M", "loss/D_Bin"} if advseg == "both" else set()
    assert [row["step"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert expected <= set(row) and all(np.isfinite(list(row.values())))
        assert all(row[name] > 0 for name in expected)
    if advseg == "both":  # --log-seg-grad-norm: the soft maps' terms reach G
        with open(summary.run_dir / "metrics.csv") as handle:
            header = handle.readline().strip().split(",")
            values = handle.readline().strip().split(",")
        assert float(values[header.index("grad/G_seg_norm")]) > 0
    payload = load_checkpoint(summary.run_dir / "checkpoints" / "latest.pt")
    assert set(payload["optimizers"]) == set(payload["schedulers"]) == {"G", "D", "F"}
    assert any(key.startswith("F.mlps.") for key in payload["model"])


def test_the_projection_heads_optimizer_joins_on_the_first_batch(data: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(data, tmp_path, model="cut", max_steps=2))
    assert trainer.late_optimizers == {} and list(trainer.model.F.parameters()) == []
    g_before = {k: v.clone() for k, v in trainer.model.G.state_dict().items()}
    d_before = {k: v.clone() for k, v in trainer.model.D.state_dict().items()}
    trainer.run()
    (name, optimizer), = trainer.late_optimizers.items()
    assert name == "F" and list(optimizer.param_groups[0]["params"]) == list(trainer.model.F.parameters())
    assert optimizer.param_groups[0]["lr"] == trainer.opt_G.param_groups[0]["lr"] == 2e-4
    assert optimizer.param_groups[0]["betas"] == (0.5, 0.999)
    assert all(optimizer.state[p]["step"] == 2 for p in trainer.model.F.parameters())  # stepped with G, twice
    assert trainer.late_schedulers["F"].last_epoch == trainer.sched_G.last_epoch
    assert any(not torch.equal(v, g_before[k]) for k, v in trainer.model.G.state_dict().items())
    assert any(not torch.equal(v, d_before[k]) for k, v in trainer.model.D.state_dict().items())


def test_cut_without_nce_has_no_projection_head_optimizer(data: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(data, tmp_path, model="cut", max_steps=1, model_options={"lambda_nce": 0.0}))
    trainer.run()
    assert trainer.late_optimizers == {}
    assert set(load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["optimizers"]) == {"G", "D"}


def test_two_process_torchrun_keeps_every_parameter_identical(data: Path, tmp_path: Path, model: str = "cut") -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(REPO / "tests" / "training" / "ddp_worker.py"), str(data), str(tmp_path), model],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    zero, one = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert zero.keys() == one.keys() and any(key.startswith("F.mlps.") for key in zero)
    assert all(torch.equal(zero[k], one[k]) for k in zero)
    payload = load_checkpoint(tmp_path / "runs" / "ddp" / "checkpoints" / "latest.pt")
    assert payload["position"]["step"] == 3 and "F" in payload["optimizers"]


def test_bf16_autocast_trains_cut(data: Path, tmp_path: Path) -> None:
    fp32 = losses(train(tiny_config(data, tmp_path / "a", model="cut", max_steps=2)).run_dir)
    bf16 = losses(train(tiny_config(data, tmp_path / "b", model="cut", max_steps=2, precision="bf16")).run_dir)
    for a, b in zip(fp32, bf16):
        for name in ("loss/G_GAN", "loss/NCE", "loss/NCE_Y", "loss/D"):
            assert np.isfinite(b[name]) and b[name] == pytest.approx(a[name], rel=0.05), name


def test_init_from_takes_g_from_a_cut_or_a_cyclegan_run(data: Path, tmp_path: Path) -> None:
    for source, generator in (("cut", "G"), ("cyclegan", "G_A")):
        first = train(tiny_config(data, tmp_path / source, model=source, max_steps=1)).run_dir
        saved = load_checkpoint(first / "checkpoints" / "latest.pt")["model"]
        trainer = Trainer(tiny_config(data, tmp_path / f"from-{source}", model="cut", max_steps=1,
                                      init_from=first / "checkpoints" / "latest.pt"))
        ours = trainer.model.G.state_dict()
        assert all(torch.equal(ours[k], saved[f"{generator}.{k}"]) for k in ours)
        assert trainer.position.step == 0 and trainer.late_optimizers == {}
    mismatch = invoke_advseg("train", str(data), "--name", "m", "--runs-dir", str(tmp_path / "m"), "--model", "cut",
                             "--ngf", "8", "--arch", "resnet_6blocks", "--load-size", "36", "--crop-size", "32",
                             "--init-from", str(first / "checkpoints" / "latest.pt"), "--device", "cpu",
                             "--workers", "0", "--quiet", "--max-steps", "1")
    assert mismatch.returncode == 2 and len(mismatch.stderr.strip().splitlines()) == 1, mismatch.stderr
    assert "--init-from" in mismatch.stderr and "--ngf 8" in mismatch.stderr


def test_cli_schedules_like_and_mistakes(data: Path, tmp_path: Path) -> None:
    def dry(*args: str) -> dict:
        result = invoke_advseg("train", str(data), "--name", "x", "--runs-dir", str(tmp_path), *args, "--dry-run")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    assert (dry("--model", "cut")["epochs"], dry("--model", "cut")["epochs_decay"]) == (200, 200)
    assert (dry("--model", "fastcut")["epochs"], dry("--model", "fastcut")["epochs_decay"]) == (150, 50)
    assert (dry()["epochs"], dry()["epochs_decay"]) == (100, 100)
    assert dry("--model", "fastcut", "--epochs", "3")["epochs"] == 3
    options = dry("--model", "fastcut", "--nce-idt", "--lambda-nce", "2", "--nce-layers", "0,4")["model_options"]
    assert options == {"nce_idt": True, "lambda_nce": 2.0, "nce_layers": "0,4"}
    run = train(tiny_config(data, tmp_path / "runs", model="fastcut", max_steps=1,
                            model_options={"lambda_nce": 3.0})).run_dir
    like = dry("--like", str(run), "--num-patches", "64")
    assert like["model"] == "fastcut" and like["model_options"]["lambda_nce"] == 3.0
    assert like["model_options"]["num_patches"] == 64 and like["name"] == "x"
    for args, flag in ((("--arch", "unet_256"), "--arch"), (("--nce-layers", "0,40"), "--nce-layers"),
                       (("--nce-t", "0"), "--nce-t"), (("--num-patches", "0"), "--num-patches"),
                       (("--lambda-nce", "-1"), "--lambda-nce"), (("--lambda-a", "3"), "--lambda-a")):
        result = invoke_advseg("train", str(data), "--name", "y", "--runs-dir", str(tmp_path / "bad"),
                               "--model", "cut", *args)
        assert result.returncode == 2 and flag in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_colorize_runs_a_cut_run(data: Path, tmp_path: Path) -> None:
    from tests.colorize.kit import rounded, run_cli, trained_generator, training_input

    run = train(tiny_config(data, tmp_path / "runs", model="cut", max_steps=2, lr=0.01)).run_dir
    out = tmp_path / "colorized"
    result = run_cli(run, data / "trainA", out, "--device", "cpu", "--workers", "0", "--quiet")
    assert result.exit_code == 0, result.output
    generator = trained_generator(run / "checkpoints" / "latest.pt")
    with torch.no_grad():
        expected = rounded(generator(training_input(data / "trainA" / "0.png", 32)))
    produced = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out / "0.png"))
    assert produced.shape == expected.shape
    assert np.abs(produced.astype(int) - expected.astype(int)).max() <= 1


def test_cut_steps_the_discriminators_first_as_its_public_code(data: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    order = []
    for model, expected in (("cut", ["D", "G", "D", "G"]), ("cyclegan", ["G", "D", "G", "D"])):
        trainer = Trainer(tiny_config(data, tmp_path / model, model=model, max_steps=2))
        for side, method in (("G", "generator_losses"), ("D", "discriminator_losses")):
            original = getattr(trainer.model, method)
            monkeypatch.setattr(trainer.model, method,
                                lambda *a, _o=original, _s=side, **k: order.append(_s) or _o(*a, **k))
        trainer.run()
        assert order == expected, model
        order.clear()
