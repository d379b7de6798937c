"""Benchmark: ``advseg colorize`` through PyTorch and through ONNX Runtime, same sketches, one run, same device.

One generator (the paper's ResNet-9, ``--ngf`` 64 by default, random weights: speed does not depend on
the values) is saved as a public-code file and exported with ``advseg export --format onnx``. The
whole stage runs on the same folder of sketches both ways (decode, resize, forward, round, write PNGs),
with the same batch size, threads and device; the two paths alternate for ``--repeat`` rounds and the
medians are reported, because a shared machine drifts between runs. The outputs of the two paths
are compared pixel by pixel (they may differ by one 8-bit level where a sum in another order rounds
the other way).

    python bench/bench_colorize.py                    # 16 sketches, 256 px, ngf 64, batch 1, 3 rounds
    python bench/bench_colorize.py --ngf 16 --count 32 --batch-size 8
    python bench/bench_colorize.py --device cuda --paths torch   # one path: PyTorch on the GPU
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advseg_cli.colorize import ColorizeConfig, ColorizeSummary, colorize_folder  # noqa: E402
from advseg_cli.devices import resolve_device  # noqa: E402
from advseg_cli.export import ExportConfig, export_model  # noqa: E402
from advseg_cli.models.networks import define_generator, init_weights  # noqa: E402
from bench.machine import describe_machine  # noqa: E402
from hed import canny  # noqa: E402
from tests.helpers import PHOTO_NAMES, photo  # noqa: E402


def make_sketches(folder: Path, count: int, size: int) -> Path:
    """Canny sketches of scikit-image's photos, shifted so that no two are the same."""
    folder.mkdir(parents=True)
    for index in range(count):
        rgb = photo(PHOTO_NAMES[index % len(PHOTO_NAMES)], size + 4 * index)
        Image.fromarray(canny(np.ascontiguousarray(rgb[-size:, :size]))).save(folder / f"{index:03d}.png")
    return folder


def make_models(work: Path, ngf: int) -> tuple[Path, Path]:
    """A ResNet-9 generator (instance norm, as CycleGAN's) as a public-code file, and its ONNX export."""
    torch.manual_seed(0)
    network = init_weights(define_generator("resnet_9blocks", 3, 3, ngf, "instance", False), "kaiming")
    public = work / "latest_net_G_A.pth"
    torch.save(network.state_dict(), public)
    onnx = work / "generator.onnx"
    export_model(public, onnx, ExportConfig(format="onnx"))
    return public, onnx


def timed_colorize(model: Path, sketches: Path, out: Path, config: ColorizeConfig) -> tuple[float, ColorizeSummary]:
    start = time.perf_counter()
    summary = colorize_folder(model, sketches, out, config)
    return time.perf_counter() - start, summary


def level_differences(first: Path, second: Path) -> tuple[int, float]:
    """(max difference in 8-bit levels, share of values that differ) between two output folders."""
    maximum, differing, total = 0, 0, 0
    for path in sorted(first.glob("*.png")):
        a = np.asarray(Image.open(path)).astype(np.int16)
        b = np.asarray(Image.open(second / path.name)).astype(np.int16)
        maximum = max(maximum, int(np.abs(a - b).max()))
        differing += int((a != b).sum())
        total += a.size
    return maximum, differing / max(total, 1)


PATHS = ("torch", "onnx")


def paths_option(text: str) -> tuple[str, ...]:
    """``--paths``: a comma-separated subset of torch,onnx (one path alone: its row, no ratio), so that
    the GPU check can time PyTorch even where ONNX Runtime has no CUDA provider."""
    names = tuple(name for name in text.split(",") if name)
    if not names or any(name not in PATHS for name in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated subset of {','.join(PATHS)}")
    return tuple(name for name in PATHS if name in names)


def build_parser() -> argparse.ArgumentParser:
    """The options (also read by bench/gpu_check.py, which checks its commands against them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=16, help="sketches")
    parser.add_argument("--size", type=int, default=256, help="sketch and network side (px)")
    parser.add_argument("--ngf", type=int, default=64, help="generator width (the paper's: 64)")
    parser.add_argument("--batch-size", type=int, default=1, help="sketches per forward, both paths")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads of both (0: torch's default)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (ONNX Runtime: its CUDA provider)")
    parser.add_argument("--paths", type=paths_option, default=PATHS, help="torch,onnx (default) | torch | onnx")
    return parser


ROW_NAMES = {"torch": "`advseg colorize RUN` (PyTorch)",
             "onnx": "`advseg colorize model.onnx` (ONNX Runtime, {provider})"}


def main() -> None:
    args = build_parser().parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)  # ONNX Runtime's session takes torch's thread count
    work = Path(tempfile.mkdtemp(prefix="bench-colorize-"))
    try:
        sketches = make_sketches(work / "sketches", args.count, args.size)
        public, onnx = make_models(work, args.ngf)
        models = {"torch": public, "onnx": onnx}
        config = ColorizeConfig(size=args.size, batch_size=args.batch_size, workers=0, device=str(device), quiet=True)
        warm = work / "warm"
        warm.mkdir()
        for path in sorted(sketches.glob("*.png"))[:2]:
            shutil.copy(path, warm / path.name)
        for name in args.paths:  # allocator, kernels, session start
            colorize_folder(models[name], warm, work / f"warm-{name}", config)
        rounds: dict[str, list[float]] = {name: [] for name in args.paths}
        for round_ in range(args.repeat):
            for name in args.paths:
                seconds, summary = timed_colorize(models[name], sketches, work / f"{name}{round_}", config)
                assert summary.done == args.count, summary
                rounds[name].append(seconds)
        both = len(args.paths) == 2
        maximum, share = level_differences(work / "torch0", work / "onnx0") if both else (None, None)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    medians = {name: statistics.median(seconds) for name, seconds in rounds.items()}
    provider = "CUDA provider" if device.type == "cuda" else "CPU provider"
    print(f"Machine: {describe_machine(device)}; onnxruntime {__import__('onnxruntime').__version__}")
    print(f"{args.count} sketches of {args.size}x{args.size} px, ResNet-9 ngf {args.ngf} (instance norm), "
          f"batch {args.batch_size}, fp32, device {device}, the whole `advseg colorize` stage (decode, forward, "
          "round, write PNG)\n")
    print("| path | images/s | ratio |")
    print("|---|---:|---:|")
    first = args.paths[0]
    for name in args.paths:
        ratio = "1.00" if name == first else f"**{medians[first] / medians[name]:.2f}**"
        print(f"| {ROW_NAMES[name].format(provider=provider)} | {args.count / medians[name]:.2f} | "
              f"{ratio if both else '-'} |")
    if both:
        print(f"\nMedians of {args.repeat} alternating rounds; per-round ratios: "
              + ", ".join(f"{t / o:.2f}" for t, o in zip(rounds["torch"], rounds["onnx"])))
        print(f"Outputs: max difference {maximum} level(s), {share * 100:.4f} % of values differ")
    else:
        print(f"\nMedian of {args.repeat} rounds; one path only (--paths {first}): no ratio")


if __name__ == "__main__":
    main()
