"""Benchmark: a CPU training step with and without each speed lever, interleaved in one run.

Two trainers of the same configuration, seed and data, one with the lever and one without, take turns
step by step (the same machine load for both); the CPU time of each step is taken (this process, all
its threads). Reported: mean CPU s/step of each and their ratio, per setting of ``profile_step.py``.

Levers (each exact in fp32 but for the order of sums, see its test):

* ``skip-map-channels``: D_M's first convolution skips input channels that are zero (a one-hot map of a
  photo holds a few classes of 135; the shapes world's Seg fills nine), ``tests/models/test_map_channel_skipping.py``;
* ``grad-norm-every-100``: the experiment's gradient-norm measurement (a backward per generator term) every
  100 steps instead of at every metric row (10); training is unchanged, bit for bit
  (``tests/training/test_training_variants.py::test_gradient_norms_measured_every_nth_step_...``);
* ``foreach-adam``: Adam's multi-tensor implementation, which torch picks by itself only on CUDA; the same
  values bit for bit (``tests/training/test_training_variants.py::test_the_trainers_adam_...``);
* ``all``: every kept lever against none of them (the step of the commit before them);
* ``bf16``: the whole step under bf16 autocast (``--precision bf16``) against fp32; not exact, not in ``all``.

    python bench/bench_levers.py --threads 1 --steps 30
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import advseg_cli.training.loop as loop_module  # noqa: E402
from advseg_cli.segcache import SegcacheConfig, build_segcache  # noqa: E402
from bench.machine import describe_machine  # noqa: E402
from bench.profile_step import CASES, Case, batches, build_trainer, make_dataset, one_step, prepare_seg  # noqa: E402
from bench.profile_step import load_size, shapes_segmenter_factory  # noqa: E402


def map_channel_skipping(trainer: Any, on: bool) -> None:
    d_m = getattr(trainer.model, "D_M", None)
    if d_m is not None:
        d_m.skip_zero_channels = on


def sparse_gradient_norms(trainer: Any, on: bool) -> None:
    """The experiment's measurement every 100 steps (on) or at every metric row, every 10th (off)."""
    trainer.config = dataclasses.replace(trainer.config, grad_norm_every=100 if on else 0)


def multi_tensor_adam(trainer: Any, on: bool) -> None:
    """Adam's multi-tensor implementation (on) or torch's CPU default, one tensor at a time (off)."""
    for optimizer in (trainer.opt_G, trainer.opt_D):
        for group in optimizer.param_groups:
            group["foreach"] = True if on else None


def bf16_autocast(trainer: Any, on: bool) -> None:
    """The whole step under bf16 autocast (``--precision bf16``) or in fp32."""
    trainer.config = dataclasses.replace(trainer.config, precision="bf16" if on else "fp32")


LEVERS: dict[str, Callable[[Any, bool], None]] = {"skip-map-channels": map_channel_skipping,
                                                  "grad-norm-every-100": sparse_gradient_norms,
                                                  "foreach-adam": multi_tensor_adam, "bf16": bf16_autocast}


def all_levers(trainer: Any, on: bool) -> None:
    for lever in (map_channel_skipping, sparse_gradient_norms, multi_tensor_adam):
        lever(trainer, on)


LEVERS["all"] = all_levers


def compare(case: Case, lever: str, root: Path, steps: int, warmup: int) -> dict[str, Any]:
    data = make_dataset(root / "data", warmup + steps + 2, case.size)
    seg_folder, _ = prepare_seg("mask2former-tiny-random", root / "seg")
    segcache = root / "segcache.h5"
    build_segcache(data / "trainB", segcache, SegcacheConfig(backend="mask2former", weights=seg_folder,
                                                             square=load_size(case), batch_size=8, workers=0,
                                                             device="cpu", precision="fp32", quiet=True))
    original = loop_module.build_segmenter_for
    if case.seg == "shapes-fcn-random":
        loop_module.build_segmenter_for = shapes_segmenter_factory()
    try:
        trainers = {"with": build_trainer(case, data, segcache, seg_folder, root / "runs-with", 10**6),
                    "without": build_trainer(case, data, segcache, seg_folder, root / "runs-without", 10**6)}
    finally:
        loop_module.build_segmenter_for = original
    LEVERS[lever](trainers["with"], True)
    LEVERS[lever](trainers["without"], False)
    sources = {name: batches(trainer) for name, trainer in trainers.items()}
    seconds: dict[str, list[float]] = {name: [] for name in trainers}
    for index in range(warmup + steps):
        order = ("with", "without") if index % 2 == 0 else ("without", "with")
        for name in order:
            start = time.process_time()
            one_step(trainers[name], sources[name], index)
            if index >= warmup:
                seconds[name].append(time.process_time() - start)
    medians = {name: statistics.fmean(values) for name, values in seconds.items()}  # a mean: the measurement
    #                                                    steps come every 10th or 100th step, a median hides them
    return {"case": case.name, "lever": lever, "with_s": medians["with"], "without_s": medians["without"],
            "speedup": medians["without"] / medians["with"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", default="all", choices=["all", *CASES])
    parser.add_argument("--lever", default="all", choices=list(LEVERS))
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each trainer (wide: a third)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, group in CASES.items():
        if args.setting not in ("all", name):
            continue
        for case in group:
            steps = args.steps if name == "small" else max(3, args.steps // 10)
            with tempfile.TemporaryDirectory(prefix="bench-levers-") as tmp:
                rows.append(compare(case, args.lever, Path(tmp), steps, args.warmup))
            print(f"  done {case.name}", file=sys.stderr, flush=True)
    print(f"Machine: {describe_machine(torch.device('cpu'))}\n")
    print("| setting | lever | CPU s/step without | with | speed-up |\n|---|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['case']} | {row['lever']} | {row['without_s']:.3f} | {row['with_s']:.3f} | "
              f"{row['speedup']:.2f}x |")


if __name__ == "__main__":
    main()
