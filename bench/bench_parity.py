"""Benchmark: learning parity of our Pix2Pix and CycleGAN with the public pytorch-CycleGAN-and-pix2pix code.

Same world data, same settings, same number of training images, same number of runs: each model is
trained ``len(--seeds)`` times by our ``advseg_cli.training.loop.train`` and ``len(--seeds)`` times by
the public code's ``train.py``, the test sketches are colorized by our ``colorize_folder`` and by its
``test.py``, and every run's colorizations are scored by the same ``Scorer`` as ``advseg experiment
seg-effect`` uses: the evaluation segmenter's mIoU against the ground truth, and the MAE (8-bit levels)
against the test photo, both at the crop size. The issue's criterion: the difference of the means is
within our seed spread (the sample standard deviation of our runs).

Why this matters: if our training loop, losses or data loading differed from the public code in a way
that hurts learning, every advseg result would be measured on a weaker baseline than the paper's.

Held equal on both sides: ``resnet_9blocks`` generator, PatchGAN discriminator, ``--ngf``/``--ndf``,
batch 1, load size (bicubic resize) then a random crop and random flips in training, Adam 2e-4 / 0.5,
whole epochs: ``epochs_total = ceil(steps / n_train)``, the first ``ceil(epochs_total / 2)`` at the full
rate and the rest decaying linearly (the public ``--n_epochs`` / ``--n_epochs_decay``); ours trains the
same ``epochs_total * n_train`` images. Pix2Pix: ``--pix2pix-norm`` (ours ``norm``, its ``--norm``), its
dropout, vanilla GAN loss, L1 weight 100, no pool (both sides' defaults). CycleGAN: ``--cyclegan-identity``
(ours ``lambda_identity``, its ``--lambda_identity``), instance norm, LSGAN, pool 50. At test time both
resize the test sketch to the crop size (no crop, no flip) and run the generator in eval mode: ours is
``colorize``'s deterministic mode; the public ``test.py`` gets ``--eval --preprocess resize
--load_size CROP --crop_size CROP`` (it forces no flip itself).

The public code is read, not changed: its option names are looked up in its ``options/*.py`` (they
changed between versions: ``--gpu_ids`` was removed when it moved to torchrun, ``--display_id`` with
visdom), and the device is forced to the CPU by ``CUDA_VISIBLE_DEVICES=""``. It has no seed option:
its runs are not seeded, so its spread includes what seeding would fix (the table says so).

Requirements: a checkout of the public code (``git clone
https://github.com/junyanz/pytorch-CycleGAN-and-pix2pix``) and a Python that runs it: torch,
torchvision, Pillow, ``dominate`` and (its 2025 version imports it unconditionally) ``wandb``. Do not
install them into the project's virtualenv; make another and pass ``--reference-python``. One that
shares the project's torch::

    python -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install dominate wandb
    echo "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \\
        > /tmp/refvenv/lib/python3.11/site-packages/advseg-venv.pth

    python bench/bench_parity.py --reference ~/pytorch-CycleGAN-and-pix2pix \\
        --reference-python /tmp/refvenv/bin/python \\
        --world OUT/world/shapes --eval-weights OUT/seg/shapes-seg-eval.safetensors --steps 5000 --out parity

Writes OUT/parity.json (every run: implementation, model, seed, seconds, miou, mae) and OUT/parity.md
(the table). Resumable: a run whose scores are under OUT/*/evals is not redone.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advseg_cli.experiments.seg_effect import (  # noqa: E402
    Preset, Scorer, evaluate_run, mean_and_spread, reference_scores)
from advseg_cli.images import list_images, read_rgb  # noqa: E402
from bench.machine import describe_machine  # noqa: E402

CLONE = "git clone https://github.com/junyanz/pytorch-CycleGAN-and-pix2pix"
REFERENCE_FILES = ("train.py", "test.py", "options/base_options.py", "options/train_options.py",
                   "options/test_options.py", "models/pix2pix_model.py", "models/cycle_gan_model.py")
IMPLEMENTATIONS = ("ours", "reference")
MODELS = {"pix2pix": "pix2pix", "cyclegan": "cycle_gan"}  # ours -> the public --model


class ParityError(Exception):
    """A problem with the inputs, reported as one line."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything both implementations are given; recorded in parity.json."""

    models: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int  # requested training steps (images at batch 1)
    n_train: int  # training pairs in the world
    load_size: int
    crop_size: int
    ngf: int
    ndf: int
    pix2pix_norm: str
    cyclegan_identity: float

    @property
    def epochs_total(self) -> int:
        return max(1, math.ceil(self.steps / self.n_train))

    @property
    def n_epochs(self) -> int:
        """Epochs at the full learning rate (the public --n_epochs); the rest decay linearly."""
        return math.ceil(self.epochs_total / 2)

    @property
    def n_epochs_decay(self) -> int:
        return self.epochs_total - self.n_epochs

    @property
    def images_seen(self) -> int:
        """The public code trains whole epochs: both sides train this many steps."""
        return self.epochs_total * self.n_train


# ------------------------------------------------------------------------------------ the public code
def check_reference(folder: Path) -> str:
    """The text of its options/*.py (to look option names up in); a one-line error if it isn't the code."""
    missing = [name for name in REFERENCE_FILES if not (folder / name).is_file()]
    if missing:
        raise ParityError(f"--reference {folder}: not a checkout of the public code (no {missing[0]}); "
                          f"get it with `{CLONE}`")
    return "\n".join((folder / "options" / name).read_text(encoding="utf-8")
                     for name in ("base_options.py", "train_options.py", "test_options.py"))


def has_option(options_text: str, name: str) -> bool:
    return f'"{name}"' in options_text or f"'{name}'" in options_text


def pick_option(options_text: str, *names: str) -> str:
    """The first of ``names`` (the current name, then older ones) that this version defines."""
    for name in names:
        if has_option(options_text, name):
            return name
    raise ParityError(f"--reference: its options define none of {', '.join(names)}; an unknown version of it")


def check_reference_python(python: str, folder: Path) -> None:
    """Its visualizer and HTML writer import what it needs (dominate, and wandb in 2025): fail early."""
    probe = "import torch, torchvision, util.visualizer, util.html"
    result = subprocess.run([python, "-c", probe], cwd=folder, env=reference_environment(),
                            capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["it did not start"])[-1]
        raise ParityError(f"--reference-python {python}: cannot run the public code ({last}); make a separate "
                          "venv with its packages (dominate, wandb) and pass it, see this script's docstring")


def reference_commit(folder: Path) -> str:
    result = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown (not a git checkout)"


def reference_environment() -> dict[str, str]:
    """One thread, the CPU, no DDP, no wandb, none of our PYTHONPATH (its packages are named data, models...)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WORLD_SIZE", "LOCAL_RANK", "RANK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", WANDB_MODE="disabled")
    return env


def write_aligned_pairs(world: Path, folder: Path) -> Path:
    """The public "aligned" layout: sketch | photo side by side in one RGB image per pair, in train/ and test/."""
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True, exist_ok=True)
        for name in list_images(world / f"{split}A"):
            target = folder / split / Path(name).with_suffix(".png")
            if target.exists():
                continue
            sketch, photo = read_rgb(world / f"{split}A" / name), read_rgb(world / f"{split}B" / name)
            if sketch.shape != photo.shape:
                raise ParityError(f"{name}: sketch {sketch.shape[:2]} and photo {photo.shape[:2]} differ in size")
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.concatenate([sketch, photo], axis=1)).save(target)
    return folder


def link_unaligned_folders(world: Path, folder: Path) -> Path:
    """The public "unaligned" layout is ours: trainA/ trainB/ testA/ testB/ (symlinks)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("trainA", "trainB", "testA", "testB"):
        link = folder / split
        if not link.exists():
            link.symlink_to((world / split).resolve(), target_is_directory=True)
    return folder


def common_args(settings: Settings, options: str, model: str) -> list[str]:
    """Architecture options of train.py and test.py alike."""
    args = ["--netG", "resnet_9blocks", "--ngf", str(settings.ngf), "--ndf", str(settings.ndf),
            pick_option(options, "--num_threads", "--nThreads"), "0"]
    if model == "pix2pix":
        args += ["--norm", settings.pix2pix_norm]
    if has_option(options, "--gpu_ids"):
        args += ["--gpu_ids", "-1"]
    return args


def reference_train_args(settings: Settings, options: str, model: str, dataroot: Path, name: str,
                         checkpoints: Path, seed: int) -> list[str]:
    """train.py's options: our sizes and schedule, no display, one save (the last epoch)."""
    args = ["--dataroot", str(dataroot), "--name", name, "--checkpoints_dir", str(checkpoints),
            "--model", MODELS[model], "--direction", "AtoB",
            pick_option(options, "--batch_size", "--batchSize"), "1",
            pick_option(options, "--load_size", "--loadSize"), str(settings.load_size),
            pick_option(options, "--crop_size", "--fineSize"), str(settings.crop_size),
            pick_option(options, "--n_epochs", "--niter"), str(settings.n_epochs),
            pick_option(options, "--n_epochs_decay", "--niter_decay"), str(settings.n_epochs_decay),
            # it saves "latest" only at epochs that are multiples of this: the last one
            "--save_epoch_freq", str(settings.epochs_total), "--save_latest_freq", str(10**9),
            "--display_freq", str(10**9), "--print_freq", str(max(1, settings.n_train))]
    if model == "cyclegan":
        args += ["--lambda_identity", str(settings.cyclegan_identity)]
    for flag, value in (("--display_id", "0"), ("--no_html", None), ("--seed", str(seed))):
        if has_option(options, flag):
            args += [flag] if value is None else [flag, value]
    return args + common_args(settings, options, model)


def reference_test_preprocessing(settings: Settings, options: str) -> list[str]:
    """Eval mode, and each sketch resized to the crop size ("resize" has no crop; test.py forces no flip)."""
    return ["--eval", "--preprocess", "resize", pick_option(options, "--load_size", "--loadSize"),
            str(settings.crop_size), pick_option(options, "--crop_size", "--fineSize"), str(settings.crop_size)]


def reference_test_args(settings: Settings, options: str, model: str, dataroot: Path, name: str,
                        checkpoints: Path, results: Path, n_test: int) -> list[str]:
    """test.py's options: our scoring's preprocessing, every test sketch."""
    args = ["--name", name, "--checkpoints_dir", str(checkpoints), "--results_dir", str(results),
            "--num_test", str(n_test), *reference_test_preprocessing(settings, options)]
    if model == "pix2pix":
        args += ["--dataroot", str(dataroot), "--model", "pix2pix", "--direction", "AtoB"]
    else:  # one direction only, as its README's "test a CycleGAN model (one side only)"
        args += ["--dataroot", str(dataroot / "testA"), "--model", "test", "--model_suffix", "_A",
                 "--dataset_mode", "single", "--no_dropout"]
    return args + common_args(settings, options, model)


def run_logged(command: list[str], log: Path, cwd: Path) -> float:
    """Run one public script to its end; seconds. Its output goes to ``log``; the tail is raised on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        handle.write(shlex.join(command) + "\n")
        handle.flush()
        code = subprocess.run(command, cwd=cwd, env=reference_environment(), stdout=handle,
                              stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
        raise ParityError(f"{command[1]} exited {code} ({tail[0] if tail else 'no output'}); see {log}")
    return time.perf_counter() - started


def collect_fakes(images: Path, label: str, names: list[str], folder: Path) -> Path:
    """Its ``<stem>_<label>.png`` results, renamed to the test sketches' names (as ours writes them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        source = images / f"{Path(name).stem}_{label}.png"
        if not source.exists():
            raise ParityError(f"test.py wrote no {source.name} in {images}")
        target = folder / Path(name).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return folder


# ------------------------------------------------------------------------------------ the jobs
@dataclasses.dataclass(frozen=True)
class Job:
    implementation: str
    model: str
    seed: int
    out: Path
    world: Path
    eval_weights: Path
    settings: Settings
    reference: Path
    reference_python: str
    options: str  # the public options' text

    @property
    def name(self) -> str:
        return f"{self.model}-s{self.seed}"


def ours_preset(settings: Settings, n_test: int) -> Preset:
    """seg-effect's preset for one mode (advseg none), one evaluation at the end, whole epochs."""
    return Preset("parity", world_train=settings.n_train, world_test=n_test, world_size=0, seg_photos=0,
                  seg_epochs=0, seg_batch=0, models=settings.models, modes=("none",), seeds=settings.seeds,
                  steps=settings.images_seen, evaluations=1, load_size=settings.load_size,
                  crop_size=settings.crop_size, ngf=settings.ngf, ndf=settings.ndf,
                  model_options={"pix2pix": {"norm": settings.pix2pix_norm},
                                 "cyclegan": {"lambda_identity": settings.cyclegan_identity}})


def run_ours(job: Job, scorer: Scorer) -> dict[str, Any]:
    """Train + colorize + score exactly as seg-effect's evaluate_run does (cached under OUT/ours/evals)."""
    preset = ours_preset(job.settings, len(scorer.names))
    row = evaluate_run(job.out / "ours", job.world, Path("-"), scorer, preset, job.model, "none", job.seed, "cpu")[-1]
    return {"seconds": row["train_seconds"], "steps": row["step"],
            **{metric: row[metric] for metric in ("miou", "mae", "frechet")}}


def read_colorized(folder: Path, names: list[str]) -> np.ndarray:
    return np.stack([read_rgb(folder / Path(name).with_suffix(".png")) for name in names])


def run_reference(job: Job, scorer: Scorer) -> dict[str, Any]:
    """The public train.py, then test.py on the test sketches, then our Scorer on its fake_B images."""
    base = job.out / "reference"
    cached = base / "evals" / f"{job.name}.json"
    if cached.exists():
        return json.loads(cached.read_text(encoding="utf-8"))
    s, data = job.settings, base / "data" / job.model
    checkpoints, results = base / "checkpoints", base / "results"
    python = [job.reference_python]
    train_args = reference_train_args(s, job.options, job.model, data, job.name, checkpoints, job.seed)
    logs = base / "logs"
    seconds = run_logged(python + [str(job.reference / "train.py")] + train_args, logs / f"{job.name}-train.log", base)
    test_args = reference_test_args(s, job.options, job.model, data, job.name, checkpoints, results, len(scorer.names))
    run_logged(python + [str(job.reference / "test.py")] + test_args, logs / f"{job.name}-test.log", base)
    label = "fake_B" if job.model == "pix2pix" else "fake"
    images = results / job.name / "test_latest" / "images"
    colorized = collect_fakes(images, label, scorer.names, base / "colorized" / job.name)
    scores = scorer.score(read_colorized(colorized, scorer.names))
    row = {"seconds": round(seconds, 2), "steps": s.images_seen, **scores}
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")
    return row


def run_job(job: Job) -> dict[str, Any]:
    """One run in a worker process of one torch thread (its own Scorer)."""
    torch.set_num_threads(1)
    scorer = Scorer.load(job.world, job.eval_weights)
    runner = run_ours if job.implementation == "ours" else run_reference
    return {"implementation": job.implementation, "model": job.model, "seed": job.seed, **runner(job, scorer)}


def run_all(jobs: list[Job], processes: int, say: Any) -> list[dict[str, Any]]:
    """Every job, ``processes`` at once (spawned: no OpenMP state inherited); CycleGAN, the longest, first."""
    ordered = sorted(jobs, key=lambda job: job.model != "cyclegan")
    rows: dict[tuple[str, str, int], dict[str, Any]] = {}
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        futures = {pool.submit(run_job, job): job for job in ordered}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            job = futures[future]
            row = future.result()
            rows[(job.implementation, job.model, job.seed)] = row
            say(f"{done}/{len(jobs)} {job.implementation} {job.name}: {row['seconds']:.0f} s, "
                f"mIoU {row['miou']:.4f}, MAE {row['mae']:.2f}")
    return [rows[(job.implementation, job.model, job.seed)] for job in jobs]


# ------------------------------------------------------------------------------------ the table
def summarize(rows: list[dict[str, Any]], models: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per model and metric: mean and sd of each implementation, their difference, the issue's criterion."""
    table = []
    for model in models:
        for metric in ("miou", "mae"):
            stats = {impl: mean_and_spread(r[metric] for r in rows
                                           if r["model"] == model and r["implementation"] == impl)
                     for impl in IMPLEMENTATIONS}
            difference = stats["reference"][0] - stats["ours"][0]
            ours_runs = sum(1 for r in rows if r["model"] == model and r["implementation"] == "ours")
            within = abs(difference) <= stats["ours"][1] if ours_runs > 1 else None  # no spread of one run
            table.append({"model": model, "metric": metric, "ours": stats["ours"], "reference": stats["reference"],
                          "difference": difference, "within_our_sd": within})
    return table


def verdict(within: bool | None) -> str:
    return "n/a (one seed)" if within is None else "yes" if within else "**no**"


def markdown(table: list[dict[str, Any]], rows: list[dict[str, Any]], record: dict[str, Any]) -> str:
    s = record["settings"]
    digits = {"miou": 4, "mae": 2}
    lines = [f"# Learning parity with the public code\n",
             f"Command: `{record['command']}`\n",
             f"Machine: {record['machine']}. Public code: commit {record['reference_commit']}. "
             f"{record['seeding']}\n",
             f"Settings: {', '.join(s['models'])} x {len(s['seeds'])} runs (seeds {', '.join(map(str, s['seeds']))}); "
             f"{s['steps']} steps requested -> {record['epochs_total']} epochs of {s['n_train']} pairs = "
             f"{record['images_seen']} images at batch 1, both sides (public `--n_epochs {record['n_epochs']} "
             f"--n_epochs_decay {record['n_epochs_decay']}`); load {s['load_size']}, crop {s['crop_size']}, "
             f"ngf {s['ngf']}, ndf {s['ndf']}, resnet_9blocks; Pix2Pix norm {s['pix2pix_norm']}; CycleGAN "
             f"identity {s['cyclegan_identity']}; advseg none.\n",
             f"Test: ours `colorize` deterministic (bicubic resize to {s['crop_size']}, eval mode); public "
             f"`test.py {record['reference_test_flags']}`. Scored on {record['n_test']} test sketches at "
             f"{s['crop_size']} px by seg-effect's Scorer.\n",
             "| model | metric | ours (mean ± sd) | public code (mean ± sd) | public − ours | within our sd |",
             "|---|---|---:|---:|---:|---|"]
    for row in table:
        d = digits[row["metric"]]
        cell = lambda stat: f"{stat[0]:.{d}f} ± {stat[1]:.{d}f}"  # noqa: E731
        lines.append(f"| {row['model']} | {row['metric']} | {cell(row['ours'])} | {cell(row['reference'])} | "
                     f"{row['difference']:+.{d}f} | {verdict(row['within_our_sd'])} |")
    refs = record["references"]
    lines += ["", f"mIoU: the evaluation segmenter vs the ground truth (higher is better; on the test photos "
              f"themselves {refs['miou_test_photos']:.4f}, on grey {refs['miou_grey']:.4f}). MAE: mean "
              f"|colorized - photo| in 8-bit levels (lower is better; grey: {refs['mae_grey']:.2f}).", "",
              "| implementation | model | seed | train s | mIoU | MAE |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['implementation']} | {r['model']} | {r['seed']} | {r['seconds']:.0f} | {r['miou']:.4f} | "
              f"{r['mae']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help=f"a checkout of the public code ({CLONE})")
    parser.add_argument("--reference-python", default=sys.executable,
                        help="the Python that runs it (needs dominate and wandb; default: this one)")
    parser.add_argument("--world", type=Path, required=True, help="a prepared shapes world: trainA/ trainB/ testA/ "
                        "testB/ truth/")
    parser.add_argument("--eval-weights", type=Path, required=True, help="the evaluation segmenter's safetensors")
    parser.add_argument("--models", default="pix2pix,cyclegan")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="our seeds; as many unseeded public runs")
    parser.add_argument("--steps", type=int, default=5000, 
                        help="training images at batch 1 (rounded up to whole epochs)")
    parser.add_argument("--load-size", type=int, default=72)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--ngf", type=int, default=16)
    parser.add_argument("--ndf", type=int, default=16)
    parser.add_argument("--pix2pix-norm", default="instance", choices=["instance", "batch", "none"])
    parser.add_argument("--cyclegan-identity", type=float, default=0.5)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, each a process of one thread")
    return parser.parse_args()


def build_settings(args: argparse.Namespace) -> Settings:
    models = tuple(m for m in args.models.split(",") if m)
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ParityError(f"--models: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(MODELS)}")
    for split in ("trainA", "trainB", "testA", "testB", "truth"):
        if not (args.world / split).is_dir():
            raise ParityError(f"--world {args.world}: no {split}/ (make it with `advseg experiment seg-effect` or "
                              "`advseg data prepare shapes ROOT`)")
    if not args.eval_weights.is_file():
        raise ParityError(f"--eval-weights {args.eval_weights}: no such file")
    if args.steps < 1 or args.jobs < 1:
        raise ParityError("--steps and --jobs: at least 1")
    return Settings(models=models, seeds=tuple(int(s) for s in args.seeds.split(",") if s), steps=args.steps,
                    n_train=len(list_images(args.world / "trainA")), load_size=args.load_size,
                    crop_size=args.crop_size, ngf=args.ngf, ndf=args.ndf, pix2pix_norm=args.pix2pix_norm,
                    cyclegan_identity=args.cyclegan_identity)


def main() -> None:
    args = parse_args()
    try:
        options = check_reference(args.reference)
        settings = build_settings(args)
        check_reference_python(args.reference_python, args.reference)
    except ParityError as error:
        sys.exit(f"bench_parity: {error}")
    say = lambda message: print(f"bench_parity: {message}", flush=True)  # noqa: E731
    out = args.out.resolve()
    world = args.world.resolve()
    if "pix2pix" in settings.models:
        write_aligned_pairs(world, out / "reference" / "data" / "pix2pix")
    if "cyclegan" in settings.models:
        link_unaligned_folders(world, out / "reference" / "data" / "cyclegan")
    jobs = [Job(impl, model, seed, out, world, args.eval_weights.resolve(), settings, args.reference.resolve(),
                args.reference_python, options)
            for model in settings.models for impl in IMPLEMENTATIONS for seed in settings.seeds]
    say(f"{len(jobs)} runs of {settings.images_seen} steps, {args.jobs} at once, into {out}")
    started = time.perf_counter()
    try:
        rows = run_all(jobs, args.jobs, say)
    except ParityError as error:
        sys.exit(f"bench_parity: {error}")
    scorer = Scorer.load(world, args.eval_weights)
    record = {"command": shlex.join([Path(sys.executable).name, *sys.argv]),
              "machine": describe_machine(torch.device("cpu")),
              "reference": str(args.reference.resolve()), "reference_commit": reference_commit(args.reference),
              "seeding": ("The public runs get --seed." if has_option(options, "--seed") else
                          "The public code has no seed option: its runs are not seeded."),
              "settings": dataclasses.asdict(settings), "epochs_total": settings.epochs_total,
              "n_epochs": settings.n_epochs, "n_epochs_decay": settings.n_epochs_decay,
              "images_seen": settings.images_seen, "n_test": len(scorer.names),
              "reference_test_flags": " ".join(reference_test_preprocessing(settings, options)),
              "references": reference_scores(scorer, world, settings.crop_size),
              "seconds": round(time.perf_counter() - started, 1), "rows": rows}
    record["table"] = summarize(rows, settings.models)
    out.mkdir(parents=True, exist_ok=True)
    (out / "parity.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (out / "parity.md").write_text(markdown(record["table"], rows, record), encoding="utf-8")
    say(f"done in {record['seconds']} s: {out / 'parity.json'}, {out / 'parity.md'}")


if __name__ == "__main__":
    main()
