"""Benchmark: ``advseg colorize`` through PyTorch and through ONNX Runtime, same sketches, one run, CPU.

One generator (the paper's ResNet-9, ``--ngf`` 64 by default, random weights: speed does not depend on
the values) is saved as a public-code file and exported with ``advseg export --format onnx``. The
whole stage runs on the same folder of sketches both ways (decode, resize, forward, round, write PNGs),
with the same batch size, threads and device; the two paths alternate for ``--repeat`` rounds and the
medians are reported, because a shared machine drifts between runs. The outputs of the two paths
are compared pixel by pixel (they may differ by one 8-bit level where a sum in another order rounds
the other way).

    python bench/bench_colorize.py                    # 16 sketches, 256 px, ngf 64, batch 1, 3 rounds
    python bench/bench_colorize.py --ngf 16 --count 32 --batch-size 8
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=16, help="sketches")
    parser.add_argument("--size", type=int, default=256, help="sketch and network side (px)")
    parser.add_argument("--ngf", type=int, default=64, help="generator width (the paper's: 64)")
    parser.add_argument("--batch-size", type=int, default=1, help="sketches per forward, both paths")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads of both (0: torch's default)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds; medians are reported")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # ONNX Runtime's session takes torch's thread count
    work = Path(tempfile.mkdtemp(prefix="bench-colorize-"))
    try:
        sketches = make_sketches(work / "sketches", args.count, args.size)
        public, onnx = make_models(work, args.ngf)
        config = ColorizeConfig(size=args.size, batch_size=args.batch_size, workers=0, device="cpu", quiet=True)
        warm = work / "warm"
        warm.mkdir()
        for path in sorted(sketches.glob("*.png"))[:2]:
            shutil.copy(path, warm / path.name)
        for model, name in ((public, "torch"), (onnx, "onnx")):  # allocator, kernels, session start
            colorize_folder(model, warm, work / f"warm-{name}", config)
        rounds: dict[str, list[float]] = {"torch": [], "onnx": []}
        for round_ in range(args.repeat):
            for model, name in ((public, "torch"), (onnx, "onnx")):
                seconds, summary = timed_colorize(model, sketches, work / f"{name}{round_}", config)
                assert summary.done == args.count, summary
                rounds[name].append(seconds)
        maximum, share = level_differences(work / "torch0", work / "onnx0")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    torch_s, onnx_s = statistics.median(rounds["torch"]), statistics.median(rounds["onnx"])
    print(f"Machine: {describe_machine(torch.device('cpu'))}; onnxruntime {__import__('onnxruntime').__version__}")
    print(f"{args.count} sketches of {args.size}x{args.size} px, ResNet-9 ngf {args.ngf} (instance norm), "
          f"batch {args.batch_size}, fp32, the whole `advseg colorize` stage (decode, forward, round, write PNG)\n")
    print("| path | images/s | ratio |")
    print("|---|---:|---:|")
    print(f"| `advseg colorize RUN` (PyTorch) | {args.count / torch_s:.2f} | 1.00 |")
    print(f"| `advseg colorize model.onnx` (ONNX Runtime, CPU provider) | {args.count / onnx_s:.2f} | "
          f"**{torch_s / onnx_s:.2f}** |")
    print(f"\nMedians of {args.repeat} alternating rounds; per-round ratios: "
          + ", ".join(f"{t / o:.2f}" for t, o in zip(rounds["torch"], rounds["onnx"])))
    print(f"Outputs: max difference {maximum} level(s), {share * 100:.4f} % of values differ")


if __name__ == "__main__":
    main()
