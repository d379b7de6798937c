"""Benchmark: our training step (fp32 and bf16 autocast) against the public code's, interleaved in one run.

The public code is a checkout of pytorch-CycleGAN-and-pix2pix (``--reference``), imported into this process:
its ``create_model`` with the same generator, discriminator, norm, GAN loss, pool and sizes as ours, fed the
very batch our loader made for our step, so both sides see the same pixels and the same machine load. The
three trainers take turns step by step (the order rotates), and each step's CPU time is taken (this
process, all its threads).

The public AdvSegLoss code adds D_M, D_Bin and a detectron2 Panoptic FPN to that code base's step; detectron2
and its weights cannot be installed here. For ``+ both`` rows the public side is therefore the public
code's step *without* the segmentation terms, which is a lower bound on its AdvSegLoss step: a ratio of our
``both`` step against it understates our speed-up against the public AdvSegLoss step.

    python bench/bench_public_step.py --reference ~/pytorch-CycleGAN-and-pix2pix --threads 1 --steps 40

Writes the table to stdout and, with ``--json``, every step's time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import advseg_cli.training.loop as loop_module  # noqa: E402
from advseg_cli.segcache import SegcacheConfig, build_segcache  # noqa: E402
from bench.machine import describe_machine  # noqa: E402
from bench.profile_step import Case, batches, build_trainer, make_dataset, one_step, prepare_seg  # noqa: E402
from bench.profile_step import load_size, shapes_segmenter_factory  # noqa: E402

CASES: dict[str, list[Case]] = {
    "wide": [Case("wide", "cyclegan", "none", 128, 64, 64, "mask2former-tiny-random"),
             Case("wide", "cyclegan", "both", 128, 64, 64, "mask2former-tiny-random"),
             Case("wide", "pix2pix", "none", 128, 64, 64, "mask2former-tiny-random"),
             Case("wide", "pix2pix", "both", 128, 64, 64, "mask2former-tiny-random")],
    "small": [Case("small", "pix2pix", "none", 64, 16, 16, "shapes-fcn-random", "instance"),
              Case("small", "pix2pix", "both", 64, 16, 16, "shapes-fcn-random", "instance"),
              Case("small", "cyclegan", "none", 64, 16, 16, "shapes-fcn-random")],
}
PUBLIC_MODELS = {"cyclegan": "cycle_gan", "pix2pix": "pix2pix"}


def public_options(case: Case, checkpoints: Path) -> list[str]:
    """train.py's options that build the same networks and losses as our run of ``case``."""
    args = ["--dataroot", str(checkpoints), "--name", "bench", "--checkpoints_dir", str(checkpoints),
            "--model", PUBLIC_MODELS[case.model], "--direction", "AtoB", "--gpu_ids", "-1",
            "--netG", "resnet_9blocks", "--ngf", str(case.ngf), "--ndf", str(case.ndf),
            "--load_size", str(load_size(case)), "--crop_size", str(case.size)]
    if case.model == "pix2pix":
        args += ["--norm", case.norm or "batch"]  # public pix2pix: vanilla GAN, no pool, L1 100, dropout
    return args


def build_public_model(reference: Path, case: Case, checkpoints: Path) -> Any:
    """The public code's model, built by its own option parser and ``create_model``."""
    if str(reference) not in sys.path:
        sys.path.insert(0, str(reference))
    from models import create_model  # type: ignore[import-not-found]
    from options.train_options import TrainOptions  # type: ignore[import-not-found]

    saved = sys.argv
    sys.argv = ["train.py", *public_options(case, checkpoints)]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints every option and the networks
            opt = TrainOptions().parse()
            model = create_model(opt)
            model.setup(opt)
    finally:
        sys.argv = saved
    return model


NETWORKS = {"cyclegan": {"generators": (("G_A", "G_B"), ("netG_A", "netG_B")),
                         "discriminators": (("D_A", "D_B"), ("netD_A", "netD_B"))},
            "pix2pix": {"generators": (("G",), ("netG",)), "discriminators": (("D",), ("netD",))}}


def parameter_count(owner: Any, names: tuple[str, ...]) -> int:
    return sum(p.numel() for name in names for p in getattr(owner, name).parameters())


def check_same_networks(case: Case, ours: Any, public: Any) -> None:
    """Refuse to time two steps whose networks differ in size: the comparison would be of other work."""
    for kind, (our_names, public_names) in NETWORKS[case.model].items():
        mine, theirs = parameter_count(ours.model, our_names), parameter_count(public, public_names)
        if mine != theirs:
            raise SystemExit(f"{case.name}: our {kind} have {mine} parameters, the public code's {theirs}; "
                             "the options of public_options() no longer build the same networks")


def public_step(model: Any, batch: dict[str, Any]) -> None:
    """One public training iteration on our batch: set_input + optimize_parameters, as its train.py."""
    model.set_input({"A": batch["real_A"], "B": batch["real_B"], "A_paths": ["a"], "B_paths": ["b"]})
    model.optimize_parameters()


def build_ours(case: Case, root: Path, data: Path, segcache: Path | None, seg_folder: Path | None,
               precision: str) -> Any:
    original = loop_module.build_segmenter_for
    if case.seg == "shapes-fcn-random" and case.advseg != "none":
        loop_module.build_segmenter_for = shapes_segmenter_factory()
    try:
        trainer = build_trainer(case, data, segcache, seg_folder, root / f"runs-{precision}", 10**6)
    finally:
        loop_module.build_segmenter_for = original
    trainer.config = dataclasses.replace(trainer.config, precision=precision)
    return trainer


def compare(case: Case, reference: Path, root: Path, steps: int, warmup: int) -> dict[str, Any]:
    """Mean CPU s/step of ours in fp32, ours in bf16 and the public code, alternating step by step.

    Each side's time includes taking its batch from our loader (the same sequence for all three: one
    loader order per seed), so data loading weighs the same on both sides."""
    data = make_dataset(root / "data", warmup + steps + 2, case.size)
    seg_folder = segcache = None
    if case.advseg != "none":
        seg_folder, _ = prepare_seg("mask2former-tiny-random", root / "seg")
        segcache = root / "segcache.h5"
        build_segcache(data / "trainB", segcache, SegcacheConfig(
            backend="mask2former", weights=seg_folder, square=load_size(case), batch_size=8, workers=0,
            device="cpu", precision="fp32", quiet=True))
    ours = {precision: build_ours(case, root, data, segcache, seg_folder, precision) for precision in ("fp32", "bf16")}
    public = build_public_model(reference, case, root / "public")
    check_same_networks(case, ours["fp32"], public)
    sources = {name: batches(trainer) for name, trainer in ours.items()}
    sources["public"] = batches(ours["fp32"])
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": [], "public": []}
    names = list(seconds)
    for index in range(warmup + steps):
        for name in names[index % 3:] + names[:index % 3]:  # rotate who goes first
            start = time.process_time()
            if name == "public":
                public_step(public, next(sources["public"]))
            else:
                one_step(ours[name], sources[name], index)
            if index >= warmup:
                seconds[name].append(time.process_time() - start)
    means = {name: statistics.fmean(values) for name, values in seconds.items()}
    return {"case": case.name, **{f"{name}_s": value for name, value in means.items()},
            "fp32_speedup": means["public"] / means["fp32"], "bf16_speedup": means["public"] / means["bf16"],
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True,
                        help="a checkout of pytorch-CycleGAN-and-pix2pix (its models/ and options/)")
    parser.add_argument("--setting", default="all", choices=["all", *CASES])
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each side (wide: a tenth)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write every step's time here")
    args = parser.parse_args()
    if not (args.reference / "models" / "__init__.py").is_file():
        parser.error(f"--reference {args.reference}: no models/__init__.py; pass a checkout of "
                     "pytorch-CycleGAN-and-pix2pix")
    torch.set_num_threads(args.threads)
    rows = []
    for name, group in CASES.items():
        if args.setting not in ("all", name):
            continue
        for case in group:
            steps = args.steps if name == "small" else max(3, args.steps // 10)
            with tempfile.TemporaryDirectory(prefix="bench-public-") as tmp:
                rows.append(compare(case, args.reference.resolve(), Path(tmp), steps, args.warmup))
            print(f"  done {case.name}", file=sys.stderr, flush=True)
    print(f"Machine: {describe_machine(torch.device('cpu'))}; "
          f"bf16 kernels in oneDNN: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}\n")
    print("| setting | public code s/step | ours fp32 | ours bf16 | fp32 speed-up | bf16 speed-up |\n"
          "|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['case']} | {row['public_s']:.3f} | {row['fp32_s']:.3f} | {row['bf16_s']:.3f} | "
              f"{row['fp32_speedup']:.2f}x | {row['bf16_speedup']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"machine": describe_machine(torch.device("cpu")), "threads": args.threads,
                                         "rows": rows}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
