"""Benchmark: ``advseg edges`` (batched PyTorch HED) against OpenCV DNN one image at a time.

The reference is the public scripts' way of running HED: one photo per forward pass through an
inference engine (there Caffe / OpenCV DNN). We export *our* network to ONNX and run it with
``cv2.dnn.readNetFromONNX``, so both sides compute the same function on the same padded inputs; both
sides do the same decode, pad, crop, pix2pix post-processing and PNG write. One run, same machine.

    python bench/bench_edges.py --count 16 --size 256 --device auto
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advseg_cli.demo import sample_photo  # noqa: E402
from advseg_cli.devices import default_batch_size, resolve_device  # noqa: E402
from advseg_cli.edges import (  # noqa: E402
    HED_WEIGHTS, auto_workers, EdgesConfig, extract_edges, hed_probability_to_sketch, prepare_hed_input)
from advseg_cli.weights import resolve_weights  # noqa: E402
from bench.machine import describe_machine  # noqa: E402
from hed import HED, load_hed_weights  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field")


def make_photos(folder: Path, count: int, size: int) -> None:
    """``count`` different size x size photos cut from scikit-image's real photos."""
    folder.mkdir(parents=True)
    for index in range(count):
        rgb = sample_photo(PHOTOS[index % len(PHOTOS)])
        image = Image.fromarray(rgb).resize((size + 8 * index, size + 8 * index), Image.BICUBIC)
        Image.fromarray(np.asarray(image)[:size, -size:]).save(folder / f"{index:03d}.png")


def export_onnx(model: torch.nn.Module, path: Path) -> None:
    example = torch.rand(1, 3, 64, 64) * 255
    torch.onnx.export(model.cpu().float(), (example,), str(path), opset_version=17, dynamo=False,
                      input_names=["rgb"], output_names=["prob"],
                      dynamic_axes={"rgb": {0: "n", 2: "h", 3: "w"}, "prob": {0: "n", 2: "h", 3: "w"}})


def opencv_one_at_a_time(photos: Path, out: Path, onnx_path: Path, config: EdgesConfig) -> int:
    """The reference loop: decode, pad, one forward per photo in OpenCV DNN, post-process, write."""
    net = cv2.dnn.readNetFromONNX(str(onnx_path))
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(photos.glob("*.png"))
    for path in files:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        net.setInput(prepare_hed_input(rgb, config.pad, config.max_side)[None])
        prob = net.forward()[0, 0, config.pad:-config.pad, config.pad:-config.pad]
        cv2.imwrite(str(out / path.name), hed_probability_to_sketch(prob, rgb.shape[:2], config))
    return len(files)


def timed(function, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def build_parser() -> argparse.ArgumentParser:
    """The options (also read by bench/gpu_check.py, which checks its commands against them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--size", type=int, default=256, help="photo side (px); HED sees size + 2*pad")
    parser.add_argument("--batch-size", type=int, default=0, help="0: advseg's auto (1 on CPU, 8 on GPU)")
    parser.add_argument("--workers", type=int, default=-1, help="-1: advseg's auto (0 for HED on a CPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds; medians are reported")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    device = resolve_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="bench-edges-"))
    try:
        photos = work / "photos"
        make_photos(photos, args.count, args.size)
        config = EdgesConfig(size=256, batch_size=args.batch_size, workers=args.workers, device=str(device), quiet=True)
        weights = resolve_weights(HED_WEIGHTS.name)
        onnx_path = work / "hed.onnx"
        state, _ = load_hed_weights(weights.path)
        eager = HED()
        eager.load_state_dict(state)
        export_onnx(eager.eval(), onnx_path)

        # Warm-up both paths (model load, allocator, OpenCV graph compile) on a small copy.
        warm = work / "warm"
        warm.mkdir()
        for path in sorted(photos.glob("*.png"))[:2]:
            shutil.copy(path, warm / path.name)
        extract_edges(warm, work / "warm_ours", config)
        opencv_one_at_a_time(warm, work / "warm_cv", onnx_path, config)

        # Alternate the two paths so that drifts in machine load hit both; report medians.
        ours_runs, ref_runs = [], []
        for round_ in range(args.repeat):
            ours_runs.append(timed(extract_edges, photos, work / f"ours{round_}", config))
            ref_runs.append(timed(opencv_one_at_a_time, photos, work / f"ref{round_}", onnx_path, config))
        summary, count = ours_runs[0][1], ref_runs[0][1]
        ours_s = float(np.median([seconds for seconds, _ in ours_runs]))
        ref_s = float(np.median([seconds for seconds, _ in ref_runs]))
        pair_ratios = [r / o for (o, _), (r, _) in zip(ours_runs, ref_runs)]
        agree = np.mean([
            (np.asarray(Image.open(work / "ours0" / p.name)) == np.asarray(Image.open(work / "ref0" / p.name))).mean()
            for p in sorted(photos.glob("*.png"))])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"Machine: {describe_machine(device)}; OpenCV {cv2.__version__} (DNN backend: default, CPU)")
    print(f"{args.count} photos of {args.size}x{args.size} px, HED input {args.size + 256}x{args.size + 256} "
          f"(pad 128), pix2pix post-processing to 256x256, fp32\n")
    print("| path | device | batch | images/s | ratio |")
    print("|---|---|---|---|---|")
    print(f"| OpenCV DNN (ONNX of our HED), one image at a time | cpu | 1 | {count / ref_s:.2f} | 1.00 |")
    workers = auto_workers(config, device)
    print(f"| `advseg edges` (PyTorch, batched, {workers} workers) | {device.type} | {args.batch_size or default_batch_size(device)} | "
          f"{summary.done / ours_s:.2f} | {ref_s / ours_s * summary.done / count:.2f} |")
    print(f"\nMedian of {args.repeat} alternating rounds; per-round ratios: "
          f"{', '.join(f'{ratio:.2f}' for ratio in pair_ratios)}")
    print(f"Identical sketch pixels between the two paths: {agree * 100:.3f} %")


if __name__ == "__main__":
    main()
