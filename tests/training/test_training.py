"""The training loop: run folder, exact resume, seeds, NaN handling, DDP (tiny networks, CPU)."""

from __future__ import annotations

import csv
import dataclasses
import os
import subprocess
import sys
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advseg_cli.errors import AdvsegError, TrainingDivergedError
from advseg_cli.training.checkpoint import load_checkpoint
from advseg_cli.training.loop import Distributed, TrainConfig, Trainer, linear_decay_factor, make_loader, train
from hed import canny
from tests.helpers import PHOTO_NAMES, REPO, invoke_advseg, photo

TINY_MODEL = {"ngf": 4, "ndf": 4, "arch": "resnet_6blocks"}


def make_dataset(root: Path, size: int = 40) -> Path:
    """trainA: Canny sketches of the real photos; trainB: the photos (same relative paths)."""
    (root / "trainA").mkdir(parents=True)
    (root / "trainB").mkdir(parents=True)
    for index, name in enumerate(PHOTO_NAMES * 2):
        rgb = np.roll(photo(name, size)[:size, :size], index * 5, axis=1)
        Image.fromarray(rgb).save(root / "trainB" / f"{index}.png")
        Image.fromarray(canny(rgb)).save(root / "trainA" / f"{index}.png")
    return root


def tiny_config(data: Path, runs: Path, **changes: object) -> TrainConfig:
    model_options = {**TINY_MODEL, **changes.pop("model_options", {})}  # type: ignore[dict-item]
    base = TrainConfig(name="run", sketches=data / "trainA", photos=data / "trainB", runs_dir=runs,
                       model_options=model_options, load_size=36, crop_size=32, epochs=2, epochs_decay=2,
                       workers=0, log_every=1, sample_every=4, save_every=100, quiet=True, device="cpu")
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


def losses(run_dir: Path) -> list[dict[str, float]]:
    """The loss columns of metrics.csv (timings differ between runs, losses must not)."""
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: float(v) for k, v in row.items() if k.startswith("loss/") or k in ("step", "lr")}
                for row in csv.DictReader(handle)]


@pytest.mark.parametrize("model", ["cyclegan", "pix2pix"])
def test_a_short_run_writes_the_whole_run_folder(data: Path, tmp_path: Path, model: str) -> None:
    summary = train(tiny_config(data, tmp_path, model=model, max_steps=5))
    run = summary.run_dir
    assert summary.steps == 5
    assert (run / "config.json").exists() and (run / "checkpoints" / "latest.pt").exists()
    rows = losses(run)
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]
    assert all(np.isfinite(list(row.values())).all() for row in rows)
    expected = {"cyclegan": {"loss/G_A", "loss/cycle_A", "loss/idt_A", "loss/D_A", "loss/D_B"},
                "pix2pix": {"loss/G_GAN", "loss/G_L1", "loss/D"}}[model]
    assert expected <= set(rows[0])
    grid = np.asarray(Image.open(run / "samples" / "step_0000004.png"))
    assert grid.shape == (32, 3 * 32, 3)  # sketch | generated | photo, one row per image
    payload = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert payload["position"]["step"] == 5 and {"G", "D"} <= set(payload["optimizers"])


def test_resume_equals_an_uninterrupted_run(data: Path, tmp_path: Path) -> None:
    whole = train(tiny_config(data, tmp_path / "a", max_steps=12))  # crosses epoch boundaries (8 steps/epoch)
    train(tiny_config(data, tmp_path / "b", max_steps=5))
    with open(tmp_path / "b" / "run" / "metrics.csv", "a") as handle:  # rows a killed run logged after its checkpoint
        handle.write("6,1,0.5\r\n7,1,0.5\r\n")
    resumed = train(tiny_config(data, tmp_path / "b", max_steps=12, resume=True))
    assert resumed.steps == 12
    assert losses(whole.run_dir) == losses(resumed.run_dir)  # bit-exact: same float strings
    a = load_checkpoint(whole.run_dir / "checkpoints" / "latest.pt")["model"]
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "latest.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_each_epoch_is_the_samplers_seeded_shuffle_and_a_resume_skips_the_batches_done(data: Path,
                                                                                     tmp_path: Path) -> None:
    """The order of an epoch is DistributedSampler's (seed, epoch) permutation of every sample, computed here by
    torch's own sampler; another epoch is another order; resuming after k batches starts at sample k * batch."""
    from torch.utils.data import DistributedSampler

    trainer = Trainer(tiny_config(data, tmp_path, max_steps=1, seed=3))

    def batches(epoch: int, skip: int = 0, batch_size: int = 1, ddp: Distributed = trainer.ddp) -> list[list[int]]:
        config = dataclasses.replace(trainer.config, batch_size=batch_size)
        return [batch["index"].tolist() for batch in make_loader(trainer.dataset, config, ddp, epoch, skip)]

    def order(epoch: int, skip: int = 0, batch_size: int = 1) -> list[int]:
        return [index for batch in batches(epoch, skip, batch_size) for index in batch]

    def sampler_order(epoch: int) -> list[int]:
        sampler = DistributedSampler(range(len(trainer.dataset)), num_replicas=1, rank=0, shuffle=True, seed=3)
        sampler.set_epoch(epoch)
        return list(sampler)

    first = order(1)
    assert first == sampler_order(1) and sorted(first) == list(range(8)) and first != list(range(8))
    assert order(2) == sampler_order(2) != first
    assert order(1, skip=3) == first[3:] and order(1, skip=1, batch_size=2) == first[2:]
    assert batches(1, batch_size=3) == [first[0:3], first[3:6]]  # whole batches only: 8 // 3 steps an epoch
    # three processes: disjoint shares of the same order, 8 // 3 = 2 each (none padded with repeats)
    shares = [batches(1, ddp=Distributed(rank, 3)) for rank in range(3)]
    assert [[index for batch in share for index in batch] for share in shares] == [first[r:6:3] for r in range(3)]


def test_config_json_holds_the_resolved_model_and_the_data_layout(data: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(data, tmp_path, model="pix2pix", max_steps=1))
    stored = json.loads((trainer.config.run_dir / "config.json").read_text())
    assert stored["model_config"] == dataclasses.asdict(trainer.model.config) and stored["model_config"]["ngf"] == 4
    layout = (stored["steps_per_epoch"], stored["world_size"], stored["segmenter"], stored["perceptual"])
    assert layout == (8, 1, None, None)
    assert stored["model"] == "pix2pix" and stored["max_steps"] == 1
    from tests.helpers import write_vgg16_weights

    vgg = write_vgg16_weights(tmp_path / "vgg16.pth")
    painter = Trainer(tiny_config(data, tmp_path / "ap", model="autopainter", max_steps=1, perceptual_weights=vgg))
    described = json.loads((painter.config.run_dir / "config.json").read_text())["perceptual"]
    assert described == json.loads(json.dumps(painter.model.perceptual.describe())) and described["layer"] == "relu3_2"


def test_same_seed_same_losses_other_seed_other_losses(data: Path, tmp_path: Path) -> None:
    one = losses(train(tiny_config(data, tmp_path / "1", max_steps=3, model="pix2pix")).run_dir)
    two = losses(train(tiny_config(data, tmp_path / "2", max_steps=3, model="pix2pix")).run_dir)
    other = losses(train(tiny_config(data, tmp_path / "3", max_steps=3, model="pix2pix", seed=1)).run_dir)
    assert one == two and one != other


def test_generator_loss_falls_on_real_photos(data: Path, tmp_path: Path) -> None:
    """Pix2Pix's L1 term must clearly drop within a few epochs of 4 real photo pairs."""
    run = train(tiny_config(data, tmp_path, model="pix2pix", max_steps=160, epochs=40, epochs_decay=0, max_items=4,
                            load_size=32, flip=False, lr=1e-3, model_options={"ngf": 8})).run_dir
    l1 = [row["loss/G_L1"] for row in losses(run)]
    assert np.mean(l1[-16:]) < 0.7 * np.mean(l1[:16])  # measured: 40.7 -> 20.3


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(data: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = Trainer(tiny_config(data, tmp_path, max_steps=10, save_every=2))
    original = trainer.model.generator_losses

    def poisoned(batch, fakes=None, **kwargs):  # from step 5 on, the generator's loss is NaN
        terms = original(batch, fakes, **kwargs)
        if trainer.position.step >= 4:
            terms["G_A"] = terms["G_A"] * float("nan")
        return terms

    monkeypatch.setattr(trainer.model, "generator_losses", poisoned)
    last_good = tmp_path / "run" / "checkpoints" / "latest.pt"
    with pytest.raises(TrainingDivergedError, match=f"step 5: loss/G_A.*the last good checkpoint is {last_good}$"):
        trainer.run()
    payload = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert payload["position"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in payload["model"].values() if v.is_floating_point())


def test_learning_rate_schedule_is_the_public_linear_policy() -> None:
    factor = linear_decay_factor(100, 100)
    assert factor(0) == 1.0 and factor(99) == 1.0  # epochs 1..100
    assert factor(100) == pytest.approx(1 - 1 / 101) and factor(199) == pytest.approx(1 / 101)


def test_an_existing_run_is_not_overwritten_and_resume_needs_one(data: Path, tmp_path: Path) -> None:
    train(tiny_config(data, tmp_path, max_steps=1))
    with pytest.raises(AdvsegError, match="--resume"):
        Trainer(tiny_config(data, tmp_path, max_steps=1))
    with pytest.raises(AdvsegError, match="does not exist"):
        Trainer(tiny_config(data, tmp_path, name="other", resume=True))
    resumed = Trainer(tiny_config(data, tmp_path, max_steps=2, resume=True))  # a NaN before its first save names it
    assert resumed.last_good == tmp_path / "run" / "checkpoints" / "latest.pt" and resumed.position.step == 1
    with pytest.raises(AdvsegError, match="^--resume: the checkpoint is a cyclegan run, not pix2pix$"):
        Trainer(tiny_config(data, tmp_path, model="pix2pix", resume=True))
    with pytest.raises(AdvsegError, match="^--resume: the model options differ from the checkpoint's; resume with "
                                          "the same options$"):
        Trainer(tiny_config(data, tmp_path, resume=True, model_options={"ngf": 8}))


def test_cli_dry_run_prints_the_papers_defaults(data: Path) -> None:
    result = invoke_advseg("train", str(data), "--name", "x", "--dry-run")
    assert result.returncode == 0, result.stderr
    import json
    config = json.loads(result.stdout)
    assert config["load_size"] == 286 and config["crop_size"] == 256 and config["lr"] == 2e-4
    assert config["epochs"] == 100 and config["epochs_decay"] == 100 and config["batch_size"] == 1
    missing = invoke_advseg("train", str(data), "--name", "x", "--advseg", "multi")
    assert missing.returncode == 2 and "--segcache" in missing.stderr


def ddp_config(data: Path, runs: Path, **changes: object) -> TrainConfig:
    """The two-process run of ``ddp_worker.py`` (batch 1 per rank), and with ``batch_size=2`` its one-process twin.

    Chosen so that averaging two ranks' gradients is exactly the gradient of one process on both ranks'
    batches concatenated: every loss is a mean over equal-sized samples, no normalisation layers (batch norm
    pools statistics across the batch; instance norm leaves the bias before it a gradient that is 0 in theory,
    which Adam's first steps turn from rounding noise into +-lr), no image pool (whose history differs per
    rank) and no dropout (whose masks come from per-process RNG streams). The sampler gives rank r samples
    r, r+2, ... of one shuffled order, so step k of the ranks sees the two samples of the twin's step k.
    """
    base = tiny_config(data, runs, max_steps=3, workers=0, model_options={"pool_size": 0, "norm": "none",
                                                                          "dropout": False})
    return dataclasses.replace(base, **changes)


def test_two_process_training_equals_one_process_on_both_ranks_batches(data: Path, tmp_path: Path) -> None:
    """torchrun with 2 processes leaves the weights of one process training on the union of their batches.

    Both ranks ending equal is not enough (taking rank 0's gradients on every rank keeps them equal too);
    they must equal the twin. The tolerance is float summation order: the two-process gradient is
    (sum over rank 0's sample + sum over rank 1's) / 2 summed by gloo, the twin's one backward over the batch of
    2 sums the same terms in another order. Measured: at most 6e-9 apart after 3 Adam steps, one or two float32
    ulps of weights of size ~0.05; a wrong average moves weights by up to 2 learning rates (4e-4) per step.
    The last step's gradients are compared too: Adam hardly sees a gradient's scale, so a sum in place of the
    mean shows there most plainly (100% off).
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(REPO / "tests" / "training" / "ddp_worker.py"), str(data), str(tmp_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    zero, one = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert zero.keys() == one.keys()
    assert all(torch.equal(zero[k], one[k]) for k in zero)
    assert torch.load(tmp_path / "spe0.pt") == 4  # each rank took half of the 8 samples
    assert (tmp_path / "order.txt").read_text() == "0\n1\n"  # main_process_first: rank 0's block ran first
    twin = Trainer(ddp_config(data, tmp_path / "one-process", name="union", batch_size=2))
    twin.run()
    assert twin.steps_per_epoch == 4
    expected = dict(twin.model.named_parameters())
    assert zero.keys() == expected.keys()
    start = Trainer(ddp_config(data, tmp_path / "start", name="start")).model.state_dict()
    gradients = torch.load(tmp_path / "grad0.pt")
    for name, value in zero.items():
        moved = (expected[name].detach() - start[name]).abs().max().item()
        assert moved > 1e-4, f"{name} did not train"  # the comparison below says something about every tensor
        difference = (value - expected[name].detach()).abs().max().item()
        assert difference < 1e-6, f"{name}: differs from one process on both batches by {difference:.3g}"
        assert_close_gradients(gradients[name], expected[name].grad, name)


def assert_close_gradients(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """Equal up to summation order (measured: 2e-5 of the tensor's largest gradient); a sum is 100% off."""
    scale = expected.abs().max().item()
    assert scale > 0, f"{name}: no gradient"
    error = (actual - expected).abs().max().item() / scale
    assert error < 1e-3, f"{name}: the last step's gradient is {error:.3g} (relative) off the one-process one"


def test_init_from_public_generator_weights_starts_a_new_run_at_step_0(data: Path, tmp_path: Path) -> None:
    """A public-code ``*_net_G.pth`` state dict (the CycleGAN code base's ``model.N`` layout) seeds G."""
    from advseg_cli.models.networks import define_generator, init_weights

    torch.manual_seed(7)
    public = init_weights(define_generator("resnet_6blocks", 3, 3, 4, "batch", True), "normal", 0.02)
    path = tmp_path / "latest_net_G.pth"
    torch.save(public.state_dict(), path)
    trainer = Trainer(tiny_config(data, tmp_path / "runs", model="pix2pix", max_steps=1, init_from=path))
    assert trainer.position.step == 0
    ours = trainer.model.photo_generator.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in public.state_dict().items())
    assert trainer.run().steps == 1


def test_init_from_our_checkpoint_takes_only_the_generator(data: Path, tmp_path: Path) -> None:
    first = train(tiny_config(data, tmp_path / "a", model="pix2pix", max_steps=2)).run_dir
    trainer = Trainer(tiny_config(data, tmp_path / "b", model="pix2pix", max_steps=1,
                                  init_from=first / "checkpoints" / "latest.pt"))
    saved = load_checkpoint(first / "checkpoints" / "latest.pt")["model"]
    generator = trainer.model.photo_generator.state_dict()
    assert all(torch.equal(generator[k], saved["G." + k]) for k in generator)
    assert not torch.equal(trainer.model.D.state_dict()["model.0.weight"], saved["D.model.0.weight"])
    assert trainer.position.step == 0 and trainer.opt_G.state_dict()["state"] == {}


def test_cli_resume_takes_the_runs_own_options_and_refuses_changed_ones(data: Path, tmp_path: Path) -> None:
    runs = str(tmp_path / "runs")
    tiny = ["--ngf", "4", "--ndf", "4", "--arch", "resnet_6blocks", "--load-size", "36", "--crop-size", "32",
            "--workers", "0", "--device", "cpu", "--quiet", "--log-every", "1"]
    first = invoke_advseg("train", str(data), "--name", "r", "--runs-dir", runs, "--max-steps", "2", *tiny)
    assert first.returncode == 0, first.stderr
    resumed = invoke_advseg("train", "--name", "r", "--runs-dir", runs, "--resume", "--max-steps", "4", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert [row["step"] for row in losses(tmp_path / "runs" / "r")] == [1, 2, 3, 4]
    changed = invoke_advseg("train", "--name", "r", "--runs-dir", runs, "--resume", "--seed", "3")
    assert changed.returncode == 2 and "--seed differ" in changed.stderr


def test_cli_auto_resume_starts_or_continues_and_the_record_marks_the_finished_run(data: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    command = ["train", str(data), "--name", "m", "--runs-dir", str(runs), "--ngf", "4", "--ndf", "4", "--arch",
               "resnet_6blocks", "--load-size", "36", "--crop-size", "32", "--workers", "0", "--device", "cpu",
               "--quiet", "--log-every", "1", "--auto-resume"]
    first = invoke_advseg(*command, "--max-steps", "2")
    assert first.returncode == 0, first.stderr
    record = json.loads((runs / "m" / "advseg-run.json").read_text())
    assert record["stage"] == "train" and record["status"] == "complete" and record["counts"]["steps"] == 2
    again = invoke_advseg(*command, "--max-steps", "4")  # the same command line continues the run
    assert again.returncode == 0, again.stderr
    assert [row["step"] for row in losses(runs / "m")] == [1, 2, 3, 4]
    assert json.loads((runs / "m" / "advseg-run.json").read_text())["counts"]["steps"] == 4
    other = invoke_advseg(*command, "--max-steps", "5", "--seed", "9")
    assert other.returncode == 2 and "--seed differ" in other.stderr


def test_autopainter_trains_resumes_and_colorizes_from_the_cli(data: Path, tmp_path: Path) -> None:
    """The paper's paired baseline end to end: its terms are logged, its VGG file is recorded, a run resumes,
    colorize takes the run folder, and missing VGG weights are one line naming where to get them."""
    import hashlib

    from tests.helpers import write_vgg16_weights

    vgg = write_vgg16_weights(tmp_path / "vgg16.pth")
    runs = tmp_path / "runs"
    command = ["train", str(data), "--name", "ap", "--runs-dir", str(runs), "--model", "autopainter", "--ngf", "4",
               "--ndf", "4", "--arch", "resnet_6blocks", "--load-size", "36", "--crop-size", "32", "--workers", "0",
               "--device", "cpu", "--quiet", "--log-every", "1", "--perceptual-weights", str(vgg), "--auto-resume"]
    first = invoke_advseg(*command, "--max-steps", "2")
    assert first.returncode == 0, first.stderr
    rows = losses(runs / "ap")
    assert {"loss/G_GAN", "loss/G_L1", "loss/G_TV", "loss/G_feat", "loss/D"} <= set(rows[0])
    assert all(row["loss/G_feat"] > 0 and row["loss/G_TV"] > 0 for row in rows)
    stored = json.loads((runs / "ap" / "config.json").read_text())
    assert stored["perceptual"]["layer"] == "relu3_2"
    assert stored["perceptual"]["weights"]["sha256"] == hashlib.sha256(vgg.read_bytes()).hexdigest()
    assert stored["model_config"]["lambda_l1"] == 50.0
    again = invoke_advseg(*command, "--max-steps", "3")
    assert again.returncode == 0, again.stderr
    assert [row["step"] for row in losses(runs / "ap")] == [1, 2, 3]
    out = tmp_path / "colorized"
    colorized = invoke_advseg("colorize", str(runs / "ap"), str(data / "trainA"), str(out), "--device", "cpu")
    assert colorized.returncode == 0, colorized.stderr
    assert len(list(out.glob("*.png"))) == len(list((data / "trainA").glob("*.png")))

    without = invoke_advseg(*[c for c in command if c != str(vgg) and c != "--perceptual-weights"],
                            "--name", "ap2", "--max-steps", "1")
    assert without.returncode == 2 and without.stderr.strip().count("\n") == 0
    assert "vgg16-397923af.pth not found" in without.stderr and "--perceptual-weights" in without.stderr
    assert not (runs / "ap2" / "checkpoints").exists()
    wrong_model = invoke_advseg(*[("pix2pix" if c == "autopainter" else c) for c in command], "--name", "p2")
    assert wrong_model.returncode == 2 and "--perceptual-weights: --model pix2pix" in wrong_model.stderr


def test_cli_like_starts_a_new_run_with_another_runs_options(data: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    first = invoke_advseg("train", str(data), "--name", "a", "--runs-dir", str(runs), "--model", "pix2pix", "--ngf",
                          "4", "--ndf", "4", "--arch", "resnet_6blocks", "--load-size", "36", "--crop-size", "32",
                          "--workers", "0", "--device", "cpu", "--quiet", "--max-steps", "2", "--lambda-l1", "50")
    assert first.returncode == 0, first.stderr
    like = invoke_advseg("train", "--like", str(runs / "a"), "--name", "b", "--runs-dir", str(runs),
                         "--seed", "3", "--lambda-l1", "10", "--max-steps", "1")
    assert like.returncode == 0, like.stderr
    a = json.loads((runs / "a" / "config.json").read_text())
    b = json.loads((runs / "b" / "config.json").read_text())
    assert (b["seed"], b["max_steps"], b["model_options"]["lambda_l1"]) == (3, 1, 10.0)
    assert b["model_options"]["ngf"] == 4 and b["model"] == "pix2pix" and b["load_size"] == 36
    unchanged = {k for k in a if a[k] == b[k]}
    assert set(a) - unchanged == {"name", "seed", "max_steps", "model_options", "model_config"}  # nothing else
    assert [row["step"] for row in losses(runs / "b")] == [1]  # a new run, from step 0
    missing = invoke_advseg("train", "--like", str(tmp_path / "nope"), "--name", "c", "--runs-dir", str(runs))
    assert missing.returncode == 2 and "--like" in missing.stderr and "does not exist" in missing.stderr
    both = invoke_advseg("train", "--like", str(runs / "a"), "--name", "a", "--runs-dir", str(runs), "--resume")
    assert both.returncode == 2 and "pick one" in both.stderr
