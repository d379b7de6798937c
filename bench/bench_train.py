"""Benchmark: ``advseg train`` speed for every model x advseg variant, Seg's share of a step, loop overhead.

For each variant (cyclegan / pix2pix / autopainter / cut / fastcut x advseg none / multi / binary / both with
``--seg-grad soft``, plus ``compat`` for the variants named by ``--compat``), one run on the same machine
measures:

* **loop**: the real ``Trainer.run()`` (DataLoader with ``--workers``, decode, resize, crop, the
  segcache read, device copy, ``Trainer.step``, metric logging every ``--log-every`` steps), timed over
  ``--steps`` steps after ``--warmup`` steps: seconds per step and training images per second;
* **bare**: the same networks, optimizers and image pools on a batch already on the device: translate
  + generator losses + backward + Adam step + discriminator losses + backward + Adam step (CUT / FastCUT:
  the discriminators' half first, and the projection head's Adam step with G's, as in their public code),
  nothing else. ``loop overhead = loop s/step / bare s/step - 1`` (target: under 10 %). On the CPU every
  timed loop step is paired with a bare step on the same batch (after it, or before it every other
  step), and the bare time is taken out of the loop's: both halves see the same load, which matters
  on a shared machine. On CUDA the loop runs alone (a synchronisation per step would stop the CPU
  from running ahead of the GPU) and the bare steps follow on one pre-loaded batch;
* **Seg share**: the time inside the frozen segmentation network per bare step, forward
  (``soft_probs`` / ``hard_labels``) *and* backward (soft mode: the gradient's way back through Seg
  to the generated pixels, timed by two identity autograd nodes around Seg), over the bare step time.
  On CUDA every timestamp is taken after a device synchronisation, in a bare pass of its own.

Both clocks are reported on the CPU: wall, and the CPU time of the training process (DataLoader
workers excluded), which moves less when other processes load a shared machine.

The loop's own time is also split into ``step()`` (compute + per-step bookkeeping), waiting for the
DataLoader, metric logging, and the rest (progress bar, positions): the "where the time goes" table.

Seg: ``mask2former-tiny-random`` (CPU default) is transformers' real Mask2Former architecture in a
reduced configuration (small Swin, 32 queries) with random weights; ``mask2former-swin-tiny-random``
(CUDA default) is the real Swin-T COCO panoptic configuration with random weights; or pass a folder of
real weights (``save_pretrained``). Speed depends on the architecture, not the weights; the output
says which was used. The segcache of the photos is built with the same Seg before timing.

AutoPainter's VGG16 (up to relu3_2) has random weights too, in torchvision's file layout.

Data: ``--images`` real photos (crops of scikit-image's photos, stored at the crop size like the
public 256 px datasets and resized to ``load = crop * 286 / 256`` by the loader) and their Canny
sketches, with the same names (pix2pix pairs them). By default there are enough images for one epoch
to cover every timed step, as in a real run whose epochs are thousands of steps long; with fewer, the
DataLoader is rebuilt (workers restarted) at each epoch boundary inside the timing.

    python bench/bench_train.py                                  # CPU: 64 px, ngf 16, tiny Seg
    python bench/bench_train.py --device cuda --precision bf16 --batch-size max
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import default_collate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import advseg_cli.training.loop as loop_module  # noqa: E402
from advseg_cli.devices import autocast, check_precision, resolve_device  # noqa: E402
from advseg_cli.models.advseg import ADVSEG_MODES, MODELS as MODEL_TYPES, build_model, model_config  # noqa: E402
from advseg_cli.models.perceptual import PerceptualFeatures, build_perceptual  # noqa: E402
from advseg_cli.segcache import SegcacheConfig, build_segcache  # noqa: E402
from advseg_cli.segmentation.base import build_segmenter  # noqa: E402
from advseg_cli.segmentation.classes import COCO_STUFF_NAMES, COCO_THING_NAMES, NUM_CLASSES  # noqa: E402
from advseg_cli.training.loop import TrainConfig, Trainer, _to_device  # noqa: E402
from bench.machine import describe_machine  # noqa: E402
from hed import canny  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")  # shipped
MODELS = ("cyclegan", "pix2pix", "autopainter", "cut", "fastcut")
SEG_CHOICES = ("mask2former-tiny-random", "mask2former-swin-tiny-random")
NEVER = 10**9  # sample_every / save_every: no grid or checkpoint inside the timed window


# ----------------------------------------------------------------------------- inputs
def make_dataset(root: Path, count: int, size: int) -> Path:
    """trainA (Canny sketches) and trainB (photos), ``count`` size x size PNGs with the same names."""
    import skimage.data

    (root / "trainA").mkdir(parents=True)
    (root / "trainB").mkdir(parents=True)
    for index in range(count):
        rgb = getattr(skimage.data, PHOTOS[index % len(PHOTOS)])()[:, :, :3]
        side = round(size * (1.25 + 0.05 * (index // len(PHOTOS) % 10)))  # a different crop of each photo
        scale = side / min(rgb.shape[:2])
        image = Image.fromarray(rgb).resize((round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)),
                                            Image.BICUBIC)
        offset = (index * 7) % (side - size + 1)
        crop = np.ascontiguousarray(np.asarray(image)[offset:offset + size, offset:offset + size])
        Image.fromarray(crop).save(root / "trainB" / f"{index:05d}.png")
        Image.fromarray(canny(crop)).save(root / "trainA" / f"{index:05d}.png")
    return root


def save_reduced_mask2former(folder: Path) -> Path:
    """transformers' Mask2Former (Swin backbone, pixel decoder, masked-attention decoder) in a reduced
    configuration with random weights and the 133 COCO panoptic classes, saved like real weights."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    names = [*COCO_THING_NAMES, *COCO_STUFF_NAMES]
    backbone = SwinConfig(embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], window_size=7,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, feature_size=64, mask_feature_size=64, hidden_dim=64,
                               encoder_feedforward_dim=128, encoder_layers=2, decoder_layers=4,
                               num_attention_heads=4, dim_feedforward=128, num_queries=32,
                               id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    torch.manual_seed(0)
    Mask2FormerForUniversalSegmentation(config).eval().save_pretrained(folder)
    return folder


def prepare_seg(spec: str, folder: Path) -> tuple[Path, str]:
    """The weights folder of the training Seg and a sentence saying what it is."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # no "Writing model shards" bar in the report
    if spec == "mask2former-tiny-random":
        return (save_reduced_mask2former(folder / "m2f-reduced"),
                "Mask2Former, REDUCED config (Swin embed 32, depths 1-1-2-1, 32 queries, 2 encoder / 4 decoder "
                "layers), RANDOM weights")
    if spec == "mask2former-swin-tiny-random":
        from bench.bench_segcache import save_random_mask2former

        return (save_random_mask2former(folder / "m2f-swin-tiny"),
                "Mask2Former Swin-T COCO panoptic (real architecture: 100 queries, 6 encoder / 10 decoder layers), "
                "RANDOM weights")
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise SystemExit(f"--seg {spec}: not one of {', '.join(SEG_CHOICES)} nor a save_pretrained folder")
    return path, f"Mask2Former weights from {path}"


# ----------------------------------------------------------------------------- timing helpers
def save_random_vgg16(path: Path) -> Path:
    """AutoPainter's feature network with PyTorch's default init, saved in torchvision's key layout."""
    state = {f"features.{name}": tensor for name, tensor in PerceptualFeatures().features.state_dict().items()}
    torch.save(state, path)
    return path


def perceptual_weights_for(model: str, vgg_file: Path) -> Path | None:
    return vgg_file if MODEL_TYPES[model][1].uses_perceptual else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Stamp(torch.autograd.Function):
    """Identity whose backward records when the gradient passes it (Seg's backward starts / ends)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, on_backward: Callable[[], None]) -> Tensor:
        ctx.on_backward = on_backward
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        ctx.on_backward()
        return grad, None


@dataclasses.dataclass
class Clock:
    """Wall seconds and this process's CPU seconds (all its threads; DataLoader workers excluded).

    On a shared CPU machine the wall clock also counts the time other processes hold the cores;
    the CPU clock counts only the work this process did, so CPU-time ratios stay comparable when the
    load changes between passes. On CUDA only the wall clock (after a synchronisation) means anything.
    """

    wall: float = 0.0
    cpu: float = 0.0

    @staticmethod
    def now() -> Clock:
        return Clock(time.perf_counter(), time.process_time())

    def __sub__(self, other: Clock) -> Clock:
        return Clock(self.wall - other.wall, self.cpu - other.cpu)

    def __add__(self, other: Clock) -> Clock:
        return Clock(self.wall + other.wall, self.cpu + other.cpu)

    def __truediv__(self, count: float) -> Clock:
        return Clock(self.wall / count, self.cpu / count)


class SegTimer:
    """Time inside Seg: forward of soft_probs / hard_labels, and the backward through soft_probs.

    Installed on the Segmenter instance (instance attributes shadow its methods). The backward is
    the interval between the gradient reaching Seg's output and leaving at its input; autograd runs
    Seg's nodes in that interval (they were created together, so they are contiguous in the engine's
    order, which runs the most recently created ready node first).
    """

    def __init__(self, seg: torch.nn.Module, device: torch.device) -> None:
        self.seg, self.device, self.spent = seg, device, Clock()
        self._backward_began: Clock | None = None
        self._originals = {"soft_probs": seg.soft_probs, "hard_labels": seg.hard_labels}
        seg.soft_probs = self._timed_soft
        seg.hard_labels = self._timed_hard

    def remove(self) -> None:
        for name in self._originals:
            delattr(self.seg, name)

    def _now(self) -> Clock:
        synchronize(self.device)
        return Clock.now()

    def _backward_begins(self) -> None:
        self._backward_began = self._now()

    def _backward_ends(self) -> None:
        if self._backward_began is not None:
            self.spent = self.spent + (self._now() - self._backward_began)
            self._backward_began = None

    def _timed_soft(self, images: Tensor) -> Tensor:
        start = self._now()
        if images.requires_grad:
            images = _Stamp.apply(images, self._backward_ends)
        probs = self._originals["soft_probs"](images)
        if probs.requires_grad:
            probs = _Stamp.apply(probs, self._backward_begins)
        self.spent = self.spent + (self._now() - start)
        return probs

    def _timed_hard(self, images: Tensor) -> Tensor:
        start = self._now()
        labels = self._originals["hard_labels"](images)
        self.spent = self.spent + (self._now() - start)
        return labels


@dataclasses.dataclass
class LoopSplit:
    """Where the loop's time went inside the timed window (totals over the window)."""

    step: Clock = dataclasses.field(default_factory=Clock)  # in Trainer.step: compute + per-step bookkeeping
    data: Clock = dataclasses.field(default_factory=Clock)  # in next(loader), incl. an epoch's loader start/end
    log: Clock = dataclasses.field(default_factory=Clock)  # in Trainer._log: one sync, a metrics.csv row


def time_loop(trainer: Trainer, warmup: int, steps: int,
              paired: Callable[[dict[str, Any]], None] | None = None) -> tuple[Clock, LoopSplit, Clock]:
    """Run the real loop for warmup + steps + 1 steps; time per step between the starts of step
    ``warmup`` and step ``warmup + steps`` (the run's final checkpoint and sample are outside).

    ``paired(batch)``, when given, runs next to each timed loop step on that step's batch (already on
    the device), after it or before it in turn; its time is taken out of the loop's and returned as
    the third value (per step).
    """
    device, starts, split, inserted = trainer.device, [], LoopSplit(), Clock()
    original_step, original_log, original_loader = trainer.step, trainer._log, loop_module.make_loader

    def in_window() -> bool:  # between the starts of step ``warmup`` and step ``warmup + steps``
        return warmup < len(starts) <= warmup + steps

    def run_paired(batch: dict[str, Any]) -> None:
        nonlocal inserted
        begin = Clock.now()
        paired(batch)
        synchronize(device)
        inserted = inserted + (Clock.now() - begin)

    def step(batch: dict[str, Any]) -> dict[str, Tensor]:
        index = len(starts)
        timed = warmup <= index < warmup + steps
        if index in (warmup, warmup + steps):
            synchronize(device)
        starts.append(Clock.now())
        # the paired step goes after the loop's step, or before it every other step: order effects cancel
        if timed and paired is not None and (index - warmup) % 2 == 1:
            run_paired(batch)
        begin = Clock.now()
        result = original_step(batch)
        if timed:
            split.step = split.step + (Clock.now() - begin)
        if timed and paired is not None and (index - warmup) % 2 == 0:
            run_paired(batch)
        return result

    def log(*args: Any) -> dict[str, float]:
        begin = Clock.now()
        result = original_log(*args)
        if in_window():
            split.log = split.log + (Clock.now() - begin)
        return result

    def make_loader(*args: Any) -> Iterator[dict[str, Any]]:
        begin = Clock.now()
        iterator = original_loader(*args)
        if in_window():
            split.data = split.data + (Clock.now() - begin)
        while True:
            begin = Clock.now()
            try:
                batch = next(iterator)
            except StopIteration:  # an epoch ends: the exhausted loader shuts its workers down in there
                if in_window():
                    split.data = split.data + (Clock.now() - begin)
                return
            if in_window():
                split.data = split.data + (Clock.now() - begin)
            yield batch

    trainer.step, trainer._log = step, log
    loop_module.make_loader = make_loader
    try:
        trainer.run()
    finally:
        loop_module.make_loader = original_loader
        del trainer.step, trainer._log
    return (starts[warmup + steps] - starts[warmup] - inserted) / steps, split, inserted / steps


def preloaded_batch(trainer: Trainer, batch_size: int) -> dict[str, Any]:
    items = [trainer.dataset[index] for index in range(batch_size)]
    return _to_device(default_collate(items), trainer.device, trainer.config.channels_last)


def bare_step(trainer: Trainer, batch: dict[str, Any]) -> None:
    """The networks' forward/backward and the optimizer steps, nothing of the loop around them, in the
    model's order (CUT: discriminators first, then G with its projection head F and F's own optimizer)."""
    model, device, precision, scaler = trainer.model, trainer.device, trainer.config.precision, trainer.scaler
    model.data_dependent_initialize(batch)  # CUT's F: made on the first batch (the loop's first step made it)
    for name, parameters in model.late_parameter_groups().items():
        if name not in trainer.late_optimizers:
            trainer.late_optimizers[name] = torch.optim.Adam(parameters)
    with autocast(device, precision):
        fakes = model.translate(batch)

    def generators() -> None:
        with autocast(device, precision):
            g = model.generator_losses(batch, fakes)
        optimizers = [trainer.opt_G, *trainer.late_optimizers.values()]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        scaler.scale(g["total"]).backward()
        for optimizer in optimizers:
            scaler.step(optimizer)

    def discriminators() -> None:
        with autocast(device, precision):
            d = model.discriminator_losses(batch, fakes)
        trainer.opt_D.zero_grad(set_to_none=True)
        scaler.scale(d["total"]).backward()
        scaler.step(trainer.opt_D)

    for update in (discriminators, generators) if model.discriminators_first else (generators, discriminators):
        update()
    scaler.update()


def time_bare(trainer: Trainer, batch: dict[str, Any], warmup: int, steps: int,
              seg_timer: SegTimer | None = None) -> tuple[Clock, Clock]:
    """Time per bare step, and time inside Seg per step (zero without a timer)."""
    for _ in range(warmup):
        bare_step(trainer, batch)
    if seg_timer is not None:
        seg_timer.spent = Clock()
    synchronize(trainer.device)
    start = Clock.now()
    for _ in range(steps):
        bare_step(trainer, batch)
    synchronize(trainer.device)
    per_step = (Clock.now() - start) / steps
    return per_step, (seg_timer.spent / steps if seg_timer is not None else Clock())


# ----------------------------------------------------------------------------- largest batch (CUDA)
def largest_batch(fits: Callable[[int], bool], start: int = 1, limit: int = 4096) -> int:
    """The largest batch size for which ``fits`` holds: doubling, then bisection between the last
    size that fitted and the first that did not (``fits`` is assumed monotone)."""
    if not fits(start):
        raise SystemExit(f"not even batch {start} fits on the device")
    good, bad = start, None
    while bad is None and good < limit:
        candidate = min(good * 2, limit)
        if fits(candidate):
            good = candidate
        else:
            bad = candidate
    while bad is not None and bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return good


def _is_out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "ALLOC_FAILED" in text


def fits_on_device(model_name: str, options: dict[str, Any], seg_folder: Path | None, vgg_file: Path, size: int,
                   device: torch.device, precision: str) -> Callable[[int], bool]:
    """A probe: do three bare steps of this variant at this batch size run without running out of
    memory? (Three, so that the image pools hold up to 3 batches, as they do during training.)"""
    def probe(batch_size: int) -> bool:
        parts: dict[str, Any] = {}
        try:
            parts["seg"] = (build_segmenter("mask2former", seg_folder, device, precision)
                            if options["advseg"] != "none" else None)
            vgg = perceptual_weights_for(model_name, vgg_file)
            perceptual = build_perceptual("relu3_2", vgg, device) if vgg is not None else None
            model = build_model(model_name, model_config(model_name, **options), parts["seg"],
                                perceptual=perceptual).to(device).train()
            parts["trainer"] = argparse.Namespace(
                model=model, device=device, config=argparse.Namespace(precision=precision),
                scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
                opt_G=torch.optim.Adam(model.generator_parameters()),
                opt_D=torch.optim.Adam(model.discriminator_parameters()), late_optimizers={})
            del model
            parts["batch"] = {
                "real_A": torch.rand(batch_size, 3, size, size, device=device) * 2 - 1,
                "real_B": torch.rand(batch_size, 3, size, size, device=device) * 2 - 1,
                "real_B_labels": torch.randint(0, NUM_CLASSES, (batch_size, size, size), device=device,
                                               dtype=torch.uint8)}
            for _ in range(3):
                bare_step(parts["trainer"], parts["batch"])
            synchronize(device)
            fitted = True
        except RuntimeError as error:  # torch.OutOfMemoryError is one
            if not _is_out_of_memory(error):
                raise
            fitted = False
        parts.clear()
        gc.collect()
        torch.cuda.empty_cache()
        return fitted
    return probe


# ----------------------------------------------------------------------------- one variant
@dataclasses.dataclass
class Row:
    model: str
    advseg: str
    seg_grad: str
    loop: Clock  # per step of the real loop
    bare: Clock  # per bare step
    seg_share: float | None  # Seg's time / the bare step's (CPU clock on the CPU, wall after syncs on CUDA)
    split: LoopSplit  # window totals
    images_per_step: int

    def overhead(self, clock: str) -> float:
        return getattr(self.loop, clock) / getattr(self.bare, clock) - 1.0


def measure_variant(model: str, advseg: str, seg_grad: str, base: TrainConfig, args: argparse.Namespace,
                    segcache: Path, seg_folder: Path, vgg_file: Path) -> Row:
    """CPU: each timed loop step is followed by a bare step on the same batch (paired: both see the
    same load of a shared machine). CUDA: a clean loop pass, then bare passes on a pre-loaded batch,
    because synchronising after every loop step would stop the CPU from running ahead of the GPU."""
    options = {"advseg": advseg, "seg_grad": seg_grad, "ngf": args.ngf, "ndf": args.ndf, "arch": args.arch}
    uses_seg = advseg != "none"
    config = dataclasses.replace(base, name=f"{model}-{advseg}-{seg_grad}", model=model, model_options=options,
                                 segcache=segcache if uses_seg else None, seg_weights=seg_folder if uses_seg else None,
                                 perceptual_weights=perceptual_weights_for(model, vgg_file))
    trainer = Trainer(config)
    seg_spent = Clock()
    if trainer.device.type != "cuda":
        def paired(batch: dict[str, Any]) -> None:
            nonlocal seg_spent
            timer = SegTimer(trainer.model.seg, trainer.device) if uses_seg else None
            bare_step(trainer, batch)
            if timer is not None:
                seg_spent = seg_spent + timer.spent
                timer.remove()

        loop, split, bare = time_loop(trainer, args.warmup, args.steps, paired)
        seg_share = seg_spent.cpu / args.steps / bare.cpu if uses_seg else None
    else:
        loop, split, _ = time_loop(trainer, args.warmup, args.steps)
        batch = preloaded_batch(trainer, config.batch_size)
        bare, _ = time_bare(trainer, batch, 1, args.steps)
        seg_share = None
        if uses_seg:  # the timer synchronises: its own pass, so that the bare timing stays clean
            timer = SegTimer(trainer.model.seg, trainer.device)
            timed, seg = time_bare(trainer, batch, 1, args.steps, timer)
            timer.remove()
            seg_share = seg.wall / timed.wall
    return Row(model, advseg, seg_grad, loop, bare, seg_share, split, config.batch_size)


# ----------------------------------------------------------------------------- report
def print_tables(rows: list[Row], steps: int, on_cuda: bool) -> None:
    head = "| model | advseg | seg-grad | batch | s/step | img/s | bare s/step | Seg share % | loop overhead % |"
    rule = "|---|---|---|---:|---:|---:|---:|---:|---:|"
    if not on_cuda:
        head += " CPU s/step | bare CPU s/step | loop overhead % (CPU time) |"
        rule += "---:|---:|---:|"
    print(head)
    print(rule)
    for r in rows:
        share = "-" if r.seg_share is None else f"{100 * r.seg_share:.1f}"
        line = (f"| {r.model} | {r.advseg} | {r.seg_grad} | {r.images_per_step} | {r.loop.wall:.3f} | "
                f"{r.images_per_step / r.loop.wall:.2f} "
                f"| {r.bare.wall:.3f} | {share} | {100 * r.overhead('wall'):+.1f} |")
        if not on_cuda:
            line += f" {r.loop.cpu:.3f} | {r.bare.cpu:.3f} | {100 * r.overhead('cpu'):+.1f} |"
        print(line)
    for clock in ("wall",) if on_cuda else ("wall", "cpu"):
        values = [r.overhead(clock) for r in rows]
        print(f"\nLoop overhead ({clock} clock): median {100 * statistics.median(values):+.1f} %, "
              f"range {100 * min(values):+.1f} .. {100 * max(values):+.1f} %", end="")
    print("\n\nWhere the loop's time goes, per step of the timed window (s; wall clock, CPU clock in brackets; "
          + ("on CUDA, step() is launch time, not GPU time" if on_cuda else "CPU clock of the main process") + "):\n")
    print("| model | advseg | seg-grad | loop | in step() | step() - bare | waiting for data | logging | other |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        step, data, log = r.split.step / steps, r.split.data / steps, r.split.log / steps
        other = r.loop - (step + data + log)
        extra = step - r.bare

        def both(clock: Clock, digits: int) -> str:
            return f"{clock.wall:.{digits}f} ({clock.cpu:.{digits}f})"
        print(f"| {r.model} | {r.advseg} | {r.seg_grad} | {both(r.loop, 3)} | {both(step, 3)} | "
              f"{extra.wall:+.3f} ({extra.cpu:+.3f}) | {both(data, 4)} | {both(log, 4)} | {both(other, 4)} |")


def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg", encoding="utf-8").read().split()[:3])
    except OSError:
        return "unknown"


def variants(compat: list[str]) -> list[tuple[str, str, str]]:
    rows = [(model, advseg, "soft") for model in MODELS for advseg in ADVSEG_MODES]
    rows += [(model, advseg, "compat") for model in MODELS for advseg in compat]
    return sorted(rows, key=lambda v: (MODELS.index(v[0]), ADVSEG_MODES.index(v[1]), v[2] == "compat"))


def build_parser() -> argparse.ArgumentParser:
    """The options (also read by bench/gpu_check.py, which checks its commands against them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, help="crop size (default 256 on CUDA, 64 on CPU)")
    parser.add_argument("--steps", type=int, default=16, help="timed steps per variant (each of loop and bare)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed loop steps before the timing")
    parser.add_argument("--batch-size", default="1", help="an integer, or 'max' (CUDA): the largest that fits")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--ngf", type=int, help="generator width (default 64 on CUDA, 16 on CPU)")
    parser.add_argument("--ndf", type=int, help="discriminator width (default 64 on CUDA, 16 on CPU)")
    parser.add_argument("--arch", default="resnet_9blocks", help="generator architecture")
    parser.add_argument("--seg", help=f"{' | '.join(SEG_CHOICES)} | a save_pretrained folder of real weights "
                                      "(default: tiny on CPU, swin-tiny on CUDA)")
    parser.add_argument("--workers", type=int, help="DataLoader processes of the loop (default: train's 4, at most "
                                                   "the number of cores)")
    parser.add_argument("--log-every", type=int, default=10, help="steps between metric rows (the CLI default)")
    parser.add_argument("--images", type=int, default=0,
                        help="training images (default: enough that one epoch covers every timed step)")
    parser.add_argument("--compat", default="both", help="comma-separated advseg modes also run with --seg-grad "
                                                         "compat ('' for none)")
    parser.add_argument("--only", default="", help="comma-separated model-advseg-seggrad names to run (default all)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--max-batch", type=int, default=4096,
                        help="--batch-size max searches up to this batch (a cap keeps the search short)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    device = resolve_device(args.device)
    check_precision(args.precision, device)
    on_cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    args.size = args.size or (256 if on_cuda else 64)
    args.ngf = args.ngf or (64 if on_cuda else 16)
    args.ndf = args.ndf or (64 if on_cuda else 16)
    args.seg = args.seg or SEG_CHOICES[1 if on_cuda else 0]
    if args.workers is None:
        args.workers = min(TrainConfig.workers, os.cpu_count() or 1)
    load_size = 2 * round(args.size * 286 / 256 / 2)
    compat = [mode for mode in args.compat.split(",") if mode]
    todo = variants(compat)
    if args.only:
        wanted = set(args.only.split(","))
        todo = [v for v in todo if "-".join(v) in wanted]
        if not todo:
            raise SystemExit(f"--only {args.only}: no such variant; names look like cyclegan-multi-soft")
    load_before = load_average()
    try:  # the loop's first metrics row tries this import once per process (0.2 s when it fails):
        importlib.import_module("torch.utils.tensorboard")  # pay it here, outside every variant's timing
    except ImportError:
        pass

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp)
        seg_folder, seg_note = prepare_seg(args.seg, root)
        vgg_file = save_random_vgg16(root / "vgg16-random.pth")
        batch_sizes = {}
        for variant in todo:
            if args.batch_size != "max":
                batch_sizes[variant] = int(args.batch_size)
                continue
            if not on_cuda:
                raise SystemExit("--batch-size max searches the GPU memory: it needs a CUDA device")
            options = {"advseg": variant[1], "seg_grad": variant[2], "ngf": args.ngf, "ndf": args.ndf,
                       "arch": args.arch}
            batch_sizes[variant] = largest_batch(fits_on_device(variant[0], options, seg_folder, vgg_file, args.size,
                                                                device, args.precision), limit=args.max_batch)
            print(f"largest batch of {'-'.join(variant)}: {batch_sizes[variant]}", flush=True)
        largest = max(batch_sizes.values())
        count = max(args.images or largest * (args.warmup + args.steps + 1), largest)
        data = make_dataset(root / "data", count, args.size)
        segcache = root / "segcache.h5"
        build_segcache(data / "trainB", segcache,
                       SegcacheConfig(backend="mask2former", weights=seg_folder, square=load_size, batch_size=8,
                                      workers=0, device=str(device), precision="fp32", quiet=True))
        base = TrainConfig(name="x", sketches=data / "trainA", photos=data / "trainB", runs_dir=root / "runs",
                           load_size=load_size, crop_size=args.size, batch_size=1, epochs=1000, epochs_decay=0,
                           device=str(device), precision=args.precision, workers=args.workers,
                           max_steps=args.warmup + args.steps + 1, log_every=args.log_every, sample_every=NEVER,
                           save_every=NEVER, save_epoch_every=NEVER, quiet=True)
        rows = []
        for model, advseg, seg_grad in todo:
            config = dataclasses.replace(base, batch_size=batch_sizes[(model, advseg, seg_grad)])
            rows.append(measure_variant(model, advseg, seg_grad, config, args, segcache, seg_folder, vgg_file))
            print(f"  done {model}-{advseg}-{seg_grad}: {rows[-1].loop.wall:.3f} s/step", file=sys.stderr, flush=True)

    print(f"\nMachine: {describe_machine(device)}; device {device}; {args.precision}; "
          f"load average {load_before} before, {load_average()} after")
    print(f"Seg: {seg_note}")
    print(f"Networks: {args.arch} generators ngf {args.ngf}, 70x70 PatchGAN ndf {args.ndf} (public-code defaults "
          f"otherwise); crop {args.size} px from {load_size} px; batch "
          f"{'largest that fits per variant' if args.batch_size == 'max' else args.batch_size}; "
          f"{args.workers} DataLoader workers; metrics every {args.log_every} steps; {count} training images")
    how = ("each loop step paired with a bare step on its batch" if not on_cuda
           else "loop alone, then bare steps on a pre-loaded batch")
    print(f"Timing: {args.steps} steps per variant after {args.warmup} warm-up steps, {how}; "
          "loop overhead = loop s/step / bare s/step - 1\n")
    print_tables(rows, args.steps, on_cuda)


if __name__ == "__main__":
    main()
