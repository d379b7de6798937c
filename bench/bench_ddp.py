"""Benchmark: ``advseg train`` under torchrun with N processes against one process, same per-process batch.

The real command both times (``python -m advseg_cli.cli train`` alone, then ``torchrun --standalone
--nproc_per_node N -m advseg_cli.cli train``), on the same generated data (bench_train's crops of
scikit-image's photos and their Canny sketches), the same model and settings; seconds per step are
read from each run's own ``metrics.csv`` (``time/seconds_per_step``), leaving out the first metric
row, which holds the warm-up (cuDNN autotuning, allocator, DataLoader start). With N processes each
step trains N batches, so the ideal is the one-process s/step and N times its images per second;
``scaling`` is the measured images/s over N x the one-process images/s (1.00 = perfect).

On GPUs each process takes its own (NCCL); on the CPU (``--device cpu``) the processes use gloo,
which checks the plumbing, not the speed.

    python bench/bench_ddp.py --device cuda            # every visible GPU, pix2pix, 256 px, batch 1
    python bench/bench_ddp.py --device cpu --gpus 2 --size 32 --ngf 8 --ndf 8 --steps 4 --log-every 2
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_train import make_dataset  # noqa: E402
from bench.machine import describe_machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    """The options (also read by bench/gpu_check.py, which checks its commands against them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (one GPU per process) | cpu (gloo)")
    parser.add_argument("--gpus", type=int, default=0, help="processes under torchrun (0: every visible GPU)")
    parser.add_argument("--model", default="pix2pix", choices=["cyclegan", "pix2pix", "autopainter", "cut", "fastcut"])
    parser.add_argument("--size", type=int, default=256, help="crop size (px); the load size is size * 286 / 256")
    parser.add_argument("--batch-size", type=int, default=1, help="per process")
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--ndf", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="training steps of each run")
    parser.add_argument("--log-every", type=int, default=10, help="steps per metric row (the first row is left out)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader processes per training process")
    return parser


def train_command(processes: int, data: Path, runs: Path, name: str, args: argparse.Namespace) -> list[str]:
    """``advseg train`` as a user types it: alone for one process, under torchrun for more."""
    launcher = ([sys.executable, "-m", "advseg_cli.cli"] if processes == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                 "-m", "advseg_cli.cli"])
    load = 2 * round(args.size * 286 / 256 / 2)
    return [*launcher, "train", str(data), "--name", name, "--runs-dir", str(runs), "--model", args.model,
            "--advseg", "none", "--device", args.device, "--batch-size", str(args.batch_size),
            "--load-size", str(load), "--crop-size", str(args.size), "--ngf", str(args.ngf), "--ndf", str(args.ndf),
            "--max-steps", str(args.steps), "--log-every", str(args.log_every), "--workers", str(args.workers),
            "--sample-every", str(10**9), "--save-every", str(10**9), "--quiet"]


def seconds_per_step(metrics: Path) -> float:
    """Mean ``time/seconds_per_step`` of the metric rows after the first (the first holds the warm-up)."""
    with open(metrics, newline="") as handle:
        values = [float(row["time/seconds_per_step"]) for row in csv.DictReader(handle)]
    if len(values) < 2:
        raise SystemExit(f"{metrics}: {len(values)} metric row(s); give --steps at least 2 x --log-every")
    return sum(values[1:]) / len(values[1:])


def run_training(processes: int, data: Path, runs: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(seconds per step from metrics.csv, wall seconds of the whole command) of one run."""
    name = f"p{processes}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    done = subprocess.run(train_command(processes, data, runs, name, args), cwd=REPO, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"advseg train with {processes} process(es) failed:\n{done.stderr[-3000:]}")
    return seconds_per_step(runs / name / "metrics.csv"), wall


def main() -> None:
    args = build_parser().parse_args()
    processes = args.gpus or torch.cuda.device_count()
    if processes < 2:
        raise SystemExit(f"--gpus {processes}: torchrun needs at least 2 processes (this machine has "
                         f"{torch.cuda.device_count()} visible GPU(s))")
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        root = Path(tmp)
        # enough images that no epoch ends inside the run, for every process
        data = make_dataset(root / "data", processes * args.batch_size * (args.steps + 1), args.size)
        one, one_wall = run_training(1, data, root / "runs", args)
        many, many_wall = run_training(processes, data, root / "runs", args)

    device = torch.device("cuda" if args.device.startswith("cuda") and torch.cuda.is_available() else "cpu")
    print(f"Machine: {describe_machine(device)}; {torch.cuda.device_count()} visible GPU(s)")
    print(f"advseg train --model {args.model} --advseg none, ngf {args.ngf}, ndf {args.ndf}, crop {args.size} px, "
          f"batch {args.batch_size} per process, {args.steps} steps, device {args.device}; s/step from metrics.csv "
          f"without its first row (warm-up)\n")
    print("| processes | batch per process | s/step | img/s | scaling | wall s (whole command) |")
    print("|---:|---:|---:|---:|---:|---:|")
    one_rate = args.batch_size / one
    many_rate = processes * args.batch_size / many
    print(f"| 1 | {args.batch_size} | {one:.4f} | {one_rate:.2f} | 1.00 | {one_wall:.1f} |")
    scaling = many_rate / (processes * one_rate)
    print(f"| {processes} | {args.batch_size} | {many:.4f} | {many_rate:.2f} | {scaling:.2f} | {many_wall:.1f} |")


if __name__ == "__main__":
    main()
