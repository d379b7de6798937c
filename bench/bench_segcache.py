"""Benchmark: ``advseg segcache`` (batched, end to end) against the backend's plain predictor, one photo at a time.

The reference is how one segments photos with the backend's own library and nothing else:
- mask2former: transformers' ``Mask2FormerImageProcessor`` -> ``Mask2FormerForUniversalSegmentation``
  -> ``post_process_panoptic_segmentation``, one photo per call, then the panoptic segments turned
  into 135-class labels;
- panoptic-fpn: detectron2's ``DefaultPredictor`` per photo (needs detectron2).
Both sides decode the same files and segment them at the same size (the ``--square`` policy, as the
reproduction uses), on the same device, with the same network weights; the reference keeps its maps
in memory while ``build_segcache`` also hashes the files and writes the HDF5 cache (gzip, commits).
Network loading is outside both timings; each side gets one warm-up photo first.

Without ``--weights`` the network has randomly initialised weights of the REAL architecture
(Mask2Former Swin-T COCO panoptic: 100 queries, 6 encoder / 10 decoder layers; Panoptic FPN R50),
which costs the same time per photo as trained weights; the output says so.

    python bench/bench_segcache.py --count 24 --square 286 --batch-size 8 --device auto
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advseg_cli.devices import resolve_device  # noqa: E402
from advseg_cli.images import list_images, read_rgb  # noqa: E402
from advseg_cli.segcache import ResizePolicy, SegcacheConfig, build_segcache  # noqa: E402
from advseg_cli.segmentation.base import build_segmenter  # noqa: E402
from advseg_cli.segmentation.classes import (  # noqa: E402
    COCO_STUFF_NAMES, COCO_THING_NAMES, IS_STUFF, coco_panoptic_133_to_135)
from bench.machine import describe_machine  # noqa: E402

# Color photos that scikit-image ships (no download needed).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


def make_photos(folder: Path, count: int) -> None:
    """``count`` different JPEG photos (about 320x240) cut from scikit-image's real photos."""
    import skimage.data

    folder.mkdir(parents=True)
    for index in range(count):
        rgb = getattr(skimage.data, PHOTOS[index % len(PHOTOS)])()[:, :, :3]
        scale = (340 + 6 * index) / min(rgb.shape[:2])
        image = Image.fromarray(rgb).resize((round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), Image.BICUBIC)
        crop = np.asarray(image)[index % 20: index % 20 + 240, index % 17: index % 17 + 320]
        Image.fromarray(np.ascontiguousarray(crop)).save(folder / f"{index:03d}.jpg", quality=92)


# ----------------------------------------------------------------------------- mask2former
def save_random_mask2former(folder: Path, class_gain: float = 1.0) -> Path:
    """The Swin-T COCO panoptic Mask2Former architecture with random weights, saved like real weights.

    ``class_gain`` scales the class head so that some queries are confident enough to be kept (with
    plain random weights none is, and the post-processing would be benchmarked on empty images).
    """
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    names = [*COCO_THING_NAMES, *COCO_STUFF_NAMES]
    backbone = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                          drop_path_rate=0.3, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, num_queries=100, id2label=dict(enumerate(names)),
                               label2id={name: index for index, name in enumerate(names)})
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():
        model.class_predictor.weight.mul_(class_gain)
    model.save_pretrained(folder)
    return folder


def mask2former_reference(weights: Path, device: torch.device, segmenter) -> callable:
    """transformers' own per-photo path; returns ``segment(rgb) -> [H,W] uint8 labels``."""
    from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

    model = Mask2FormerForUniversalSegmentation.from_pretrained(weights, use_safetensors=True).eval().to(device)
    processor = Mask2FormerImageProcessor(do_resize=False, size_divisor=32)  # photos come resized by the policy
    thresholds = segmenter.thresholds
    lut = coco_panoptic_133_to_135([model.config.id2label[i] for i in range(133)])  # model class -> our label
    stuff_ids = {index for index, label in enumerate(lut.tolist()) if IS_STUFF[label]}  # fused like the backend

    @torch.inference_mode()
    def segment(rgb: np.ndarray) -> np.ndarray:
        inputs = processor(images=rgb, return_tensors="pt").to(device)
        outputs = model(**inputs)
        result = processor.post_process_panoptic_segmentation(
            outputs, threshold=thresholds["score"], mask_threshold=thresholds["mask"],
            overlap_mask_area_threshold=thresholds["overlap"], label_ids_to_fuse=stuff_ids,
            target_sizes=[rgb.shape[:2]])[0]
        segments = result["segmentation"].cpu()
        labels = torch.zeros(segments.shape, dtype=torch.uint8)
        for info in result["segments_info"]:
            labels[segments == info["id"]] = int(lut[info["label_id"]])
        return labels.numpy()

    return segment


# ----------------------------------------------------------------------------- panoptic-fpn
def panoptic_fpn_reference(weights: Path | None, device: torch.device) -> callable:
    """detectron2's DefaultPredictor per photo (random init when no weights are given)."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultPredictor

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml"))
    cfg.MODEL.WEIGHTS = str(weights) if weights else ""
    cfg.MODEL.DEVICE = str(device)
    cfg.INPUT.MIN_SIZE_TEST = 0  # no resize: the photo arrives at the policy's size, as in advseg
    predictor = DefaultPredictor(cfg)

    def segment(rgb: np.ndarray) -> np.ndarray:
        panoptic, segments = predictor(np.ascontiguousarray(rgb[:, :, ::-1]))["panoptic_seg"]
        labels = torch.zeros(panoptic.shape, dtype=torch.uint8)
        for info in segments:
            label = info["category_id"] + 1 if info["isthing"] else 81 + info["category_id"]
            labels[panoptic.cpu() == info["id"]] = label
        return labels.numpy()

    return segment


def save_random_panoptic_fpn(path: Path) -> Path:
    """The R50-FPN Panoptic FPN with detectron2's random initialisation, as a checkpoint file."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return path


# ----------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_reference(segment, photos: Path, policy: ResizePolicy, device: torch.device, warm_up: bool) -> float:
    files = [photos / rel for rel in list_images(photos)]
    if warm_up:
        segment(np.array(policy.apply(read_rgb(files[0]))))
    synchronize(device)
    start = time.perf_counter()
    for path in files:
        segment(np.array(policy.apply(read_rgb(path))))
    synchronize(device)
    return time.perf_counter() - start


def time_build(segmenter, photos: Path, folder: Path, config: SegcacheConfig, device: torch.device,
               repeat: int) -> float:
    if repeat == 0:  # warm-up on one photo
        warm = folder / f"warm-b{config.batch_size}"
        warm.mkdir()
        first = list_images(photos)[0]
        (warm / first.name).write_bytes((photos / first).read_bytes())
        build_segcache(warm, folder / f"warm-b{config.batch_size}.h5", config, segmenter=segmenter)
    synchronize(device)
    start = time.perf_counter()
    summary = build_segcache(photos, folder / f"maps-b{config.batch_size}-r{repeat}.h5", config, segmenter=segmenter)
    synchronize(device)
    assert summary.done == len(list_images(photos)), summary
    return time.perf_counter() - start


def mean_kept_queries(segmenter, photos: Path, policy: ResizePolicy) -> float | None:
    """Queries per photo that pass the score test: our post-processing works on those only, so its cost
    (unlike the network's) depends on the weights; reported beside the timings."""
    if not hasattr(segmenter, "query_logits"):
        return None
    from advseg_cli.segmentation.base import uint8_to_model_range

    counts = []
    with torch.no_grad():
        for relative in list_images(photos):
            image = uint8_to_model_range(np.array(policy.apply(read_rgb(photos / relative))))
            class_logits, _, _ = segmenter.query_logits(image)
            scores, classes = class_logits.softmax(-1).max(-1)
            kept = (classes != class_logits.shape[-1] - 1) & (scores > segmenter.query_thresholds.score)
            counts.append(int(kept.sum()))
    return float(np.mean(counts))


def build_parser() -> argparse.ArgumentParser:
    """The options (also read by bench/gpu_check.py, which checks its commands against them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="mask2former", choices=["mask2former", "panoptic-fpn"])
    parser.add_argument("--weights", type=Path, help="real weights (folder for mask2former, file for panoptic-fpn)")
    parser.add_argument("--count", type=int, default=24, help="number of photos")
    parser.add_argument("--square", type=int, default=286, help="segmenting size (the training resize)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0 = torch's default); 1 avoids thread thrashing on busy machines")
    parser.add_argument("--class-gain", type=float, default=1.0,
                        help="random mask2former: scale of the class head (more confident queries are kept)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="interleaved repetitions, best time kept (for busy shared machines)")
    return parser


def main() -> None:
    args = build_parser().parse_args()

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-segcache-") as tmp:
        folder = Path(tmp)
        photos = folder / "photos"
        make_photos(photos, args.count)
        weights, note = args.weights, "real weights"
        if weights is None:
            note = ("RANDOMLY INITIALISED weights of the real architecture (the network's speed does not depend "
                    "on the weights; the post-processing's depends on how many queries are kept)")
            weights = (save_random_mask2former(folder / "m2f", args.class_gain) if args.backend == "mask2former"
                       else save_random_panoptic_fpn(folder / "pfpn.pth"))
        segmenter = build_segmenter(args.backend, weights, device, args.precision)
        reference = (mask2former_reference(weights, device, segmenter) if args.backend == "mask2former"
                     else panoptic_fpn_reference(weights, device))
        policy = ResizePolicy.from_options(0, args.square, 0)
        base = SegcacheConfig(backend=args.backend, square=args.square, workers=args.workers, device=str(device),
                              precision=args.precision, quiet=True)

        names = ["plain predictor, one photo per call (no cache written)"]
        batches = sorted({1, args.batch_size})
        names += [f"`advseg segcache --batch-size {b}` (hash, decode, segment, write HDF5)" for b in batches]
        times: list[list[float]] = [[] for _ in names]
        for repeat in range(args.repeat):
            times[0].append(time_reference(reference, photos, policy, device, warm_up=repeat == 0))
            for row, batch in enumerate(batches, start=1):
                config = SegcacheConfig(**{**base.__dict__, "batch_size": batch})
                times[row].append(time_build(segmenter, photos, folder, config, device, repeat))
        rows = [(name, min(seconds)) for name, seconds in zip(names, times)]
        kept = mean_kept_queries(segmenter, photos, policy)

    reference_rate = args.count / rows[0][1]
    print(f"\nMachine: {describe_machine(device)}; device {device}; {args.precision}")
    print(f"Backend: {args.backend} ({segmenter.model_name if args.weights else 'real architecture'}), {note}")
    runs = "one run each" if args.repeat == 1 else f"best of {args.repeat} interleaved runs each"
    print(f"{args.count} JPEG photos 320x240, segmented at {args.square}x{args.square}; {runs}, after one "
          f"warm-up photo; {args.workers} DataLoader workers for advseg")
    if kept is not None:
        print(f"Queries kept per photo (score > threshold): {kept:.1f} on average")
    print()
    print("| path | seconds | photos/s | vs plain |")
    print("|---|---:|---:|---:|")
    for name, seconds in rows:
        rate = args.count / seconds
        print(f"| {name} | {seconds:.2f} | {rate:.2f} | {rate / reference_rate:.2f}x |")


if __name__ == "__main__":
    main()
