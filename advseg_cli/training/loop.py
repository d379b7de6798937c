"""``advseg train``: the training loop around the models of ``advseg_cli.models``.

options -> ``TrainConfig`` (frozen, JSON-able, written to ``runs/NAME/config.json`` before the first
step) -> ``train(config)``. The loop owns what the models deliberately do not: optimizers, the
constant-then-linear learning-rate schedule, mixed precision, distributed gradient averaging,
checkpoints, samples and metrics.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from advseg_cli import __version__
from advseg_cli.devices import autocast, check_precision, resolve_device
from advseg_cli.errors import (AdvsegError, IncompatibleInputError, TrainingDivergedError, WeightsMismatchError,
                               WeightsNotFoundError)
from advseg_cli.files import sha256_file, write_bytes_atomic
from advseg_cli.images import write_png
from advseg_cli.interrupts import (StageInterrupted, StopAtStepBoundary, leave_stop_signals_to_the_main_process,
                                   same_command, signals_deferred, stop_already_under_way)
from advseg_cli.models.advseg import MODELS, AdvSegModel, build_model, model_config, uses_segmenter
from advseg_cli.progress import progress
from advseg_cli.runrecord import FOLDER_RECORD_NAME, RunRecord, read_record, record_path_for
from advseg_cli.training.checkpoint import (
    Position, load_checkpoint, restore_rng_states, rng_states, save_checkpoint)
from advseg_cli.training.data import SEGCACHE_MISSING, Augmentation, SketchPhotoDataset
from advseg_cli.training.geometry import crop_size_refusal


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run, resolved. Written to config.json; checkpoints carry it too."""

    name: str  # run folder name under runs_dir
    sketches: Path  # domain A folder (trainA)
    photos: Path  # domain B folder (trainB)
    model: str = "cyclegan"  # cyclegan, cut, fastcut (unpaired) | pix2pix, autopainter (paired: same relative paths)
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # overrides of the model's defaults
    runs_dir: Path = Path("runs")
    segcache: Path | None = None  # HDF5 label maps of the photos (needed by --advseg multi/binary/both)
    segcache_missing: str = "error"  # error | skip photos without a fresh map
    seg_backend: str | None = None  # None: the backend that made the segcache
    seg_weights: Path | None = None  # weights of the training Seg (default: the segcache's, else the backend's own)
    perceptual_weights: Path | None = None  # AutoPainter's VGG16 (default: resolved like every weights file)
    load_size: int = 286  # photos and sketches are resized to load_size x load_size (bicubic)
    crop_size: int = 256  # then randomly cropped to crop_size x crop_size
    flip: bool = True  # random horizontal flips
    batch_size: int = 1
    epochs: int = 100  # epochs at the initial learning rate
    epochs_decay: int = 100  # epochs of linear decay to 0 after them
    lr: float = 2e-4  # Adam learning rate (generators and discriminators)
    beta1: float = 0.5  # Adam beta1 (beta2 = 0.999)
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 uses a gradient scaler)
    channels_last: bool = False
    compile: bool = False  # torch.compile the networks' forward
    workers: int = 4  # DataLoader processes
    max_steps: int = 0  # stop after this many steps in total (0: train all epochs)
    max_items: int = 0  # use at most this many training samples per epoch (0: all)
    log_every: int = 10  # steps between metric rows (and NaN checks)
    log_seg_grad_norm: bool = False  # at each metric row, the norm of the segmentation terms' gradient on the
    #                                  photo generator (one extra backward; 0 exactly when no gradient reaches it)
    grad_norm_every: int = 0  # steps between those measurements (0: at every metric row); they cost a backward
    #                           per term, and training is the same whatever the interval
    sample_every: int = 500  # steps between sample grids
    save_every: int = 1000  # steps between latest.pt saves
    save_epoch_every: int = 5  # epochs between epoch_NNN.pt snapshots
    resume: bool = False  # continue runs/NAME from checkpoints/latest.pt
    init_from: Path | None = None  # start from these generator weights (ours or public-code .pth), step 0
    quiet: bool = False

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.epochs_decay

    def validate(self) -> TrainConfig:
        if self.segcache_missing not in SEGCACHE_MISSING:
            raise AdvsegError(f"--segcache-missing: use one of {', '.join(SEGCACHE_MISSING)}")
        if self.crop_size > self.load_size:
            raise AdvsegError(f"--crop-size {self.crop_size} is larger than --load-size {self.load_size}: the crop is "
                              f"taken from the resized photo; use --load-size {self.crop_size} or more, or a smaller "
                              "--crop-size")
        if self.grad_norm_every < 0:
            raise AdvsegError(f"--grad-norm-every {self.grad_norm_every}: use 0 (every metric row) or a number of steps")
        if self.grad_norm_every and not self.log_seg_grad_norm:
            raise AdvsegError("--grad-norm-every sets how often --log-seg-grad-norm measures: add --log-seg-grad-norm")
        if self.resume and self.init_from is not None:
            raise AdvsegError("--resume continues a run, --init-from starts a new one from weights: pick one")
        resolved = model_config(self.model, **self.model_options)  # validates the model options
        if uses_segmenter(resolved) and self.segcache is None:
            wanted = f"--advseg {resolved.advseg}" if resolved.advseg != "none" else "--seg-consistency"
            raise AdvsegError(f"{wanted} needs the photos' label maps: pass --segcache "
                              "(made with `advseg segcache PHOTOS OUT.h5`)")
        refusal = crop_size_refusal(self.model, resolved, self.crop_size, self.load_size, self.batch_size)
        if refusal:
            raise AdvsegError(refusal)
        if self.perceptual_weights is not None and not MODELS[self.model][1].uses_perceptual:
            raise AdvsegError(f"--perceptual-weights: --model {self.model} has no feature loss (AutoPainter has)")
        return self

    def to_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            return str(value) if isinstance(value, Path) else value
        return {key: plain(value) for key, value in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class TrainSummary:
    run_dir: Path
    steps: int
    epoch: int
    last_losses: dict[str, float]
    already_complete: bool = False  # --resume of a run that had reached its planned end: nothing was done


# ----------------------------------------------------------------------------- distributed
@dataclasses.dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Under torchrun (WORLD_SIZE > 1): one process per device, gloo on CPU and NCCL on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed(), resolve_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world), device


@contextlib.contextmanager
def main_process_first(ddp: Distributed) -> Iterator[None]:
    """Rank 0 runs the block first, then the other ranks: a download into the shared weights cache
    happens once, and the others find the finished file instead of racing on its ``.part``."""
    if ddp.world > 1 and not ddp.is_main:
        dist.barrier()
    try:
        yield
    finally:
        if ddp.world > 1 and ddp.is_main:
            dist.barrier()


def leave_process_group(synchronise: bool) -> None:
    """Leave torchrun's process group before the process exits.

    A rank that exits still holding its gloo group can abort in the group's threads ("terminate called
    without an active exception", SIGABRT) while another rank is still finishing its last step, and
    torchrun then reports the finished job as failed. ``synchronise`` waits for every rank first; it is
    only safe when all of them reach this point (an agreed end or an agreed stop), not after an error
    or a second signal on one rank.
    """
    if not dist.is_available() or not dist.is_initialized():
        return
    if synchronise:
        dist.barrier()
    dist.destroy_process_group()


def average_gradients(parameters: list[torch.nn.Parameter], world: int) -> None:
    """All-reduce the gradients (one flat buffer), as DistributedDataParallel does after backward.

    The models call each network several times per step and freeze the discriminators during the
    generator step, which does not fit DDP's one-forward-one-backward wrapper; averaging the same
    gradients explicitly gives the same result and keeps every rank's parameters identical.
    """
    if world == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def broadcast_tensors(tensors: list[Tensor], world: int) -> None:
    """Rank 0's values of ``tensors`` on every rank (for parts a model creates after the start)."""
    if world == 1:
        return
    for tensor in tensors:
        dist.broadcast(tensor.data, 0)


def broadcast_parameters(model: torch.nn.Module, world: int) -> None:
    """Start every rank from rank 0's weights, whatever their seeds did."""
    if world == 1:
        return
    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, 0)


# ----------------------------------------------------------------------------- set-up
def linear_decay_factor(epochs: int, epochs_decay: int) -> Any:
    """The public code's 'linear' policy: 1 for ``epochs`` epochs, then linearly towards 0.

    The scheduler's counter c starts at 0 for epoch 1: factor = 1 - max(0, c + 1 - epochs) / (epochs_decay + 1).
    """
    def factor(counter: int) -> float:
        return 1.0 - max(0, counter + 1 - epochs) / float(epochs_decay + 1)
    return factor


def weights_the_cache_was_made_with(segcache: Path, sha256: str) -> Path | None:
    """The Seg weights named in the segcache's run record, when they are still there.

    So that ``advseg train`` needs no ``--seg-weights`` after ``advseg segcache --weights X``. A file is
    used only when its sha256 is the one the cache records (it may be a pickle: we unpickle only files
    the user named or whose hash we checked); a folder's weights are compared after loading, as always.
    """
    for entry in (read_record(record_path_for(segcache)) or {}).get("weights") or []:
        path = Path(str(entry.get("path", "")))
        if path.is_dir():
            return path
        if path.is_file() and sha256 and sha256_file(path) == sha256:
            return path
    return None


def build_segmenter_for(config: TrainConfig, device: torch.device) -> Any:
    """The training Seg: the same backend/model/weights as the segcache, so real and fake maps agree."""
    if not uses_segmenter(model_config(config.model, **config.model_options)):
        return None
    from advseg_cli.segcache import SegmentationCache
    from advseg_cli.segmentation.base import build_segmenter, same_weights

    assert config.segcache is not None
    cache_meta = SegmentationCache(config.segcache).metadata
    backend = config.seg_backend or cache_meta.backend
    weights = config.seg_weights
    if weights is None and backend == cache_meta.backend:
        weights = weights_the_cache_was_made_with(config.segcache, cache_meta.weights_sha256)
    try:
        seg = build_segmenter(backend, weights, device, config.precision)
    except (WeightsNotFoundError, WeightsMismatchError) as exc:  # the backends speak of segcache's option
        raise type(exc)(str(exc).replace("--weights", "--seg-weights")) from None
    made_with = {"backend": cache_meta.backend, "model": cache_meta.model_name, "weights": cache_meta.weights_sha256}
    training = {"backend": seg.backend, "model": seg.model_name,
                "weights": (seg.weights_record or {}).get("sha256")}
    names_matter = not same_weights(made_with["weights"], training["weights"])
    differs = [f"{key}: cache {made_with[key]!r}, training {training[key]!r}" for key in made_with
               if made_with[key] != training[key] and (key != "model" or names_matter)]
    if differs:
        raise IncompatibleInputError(
            f"--segcache {config.segcache} was made with another segmentation network ({'; '.join(differs)}); "
            "rebuild it with the training's --seg-backend/--seg-weights or train with the cache's")
    return seg


def check_segmenter_runs_at(seg: Any, crop_size: int, device: torch.device) -> None:
    """Refuse, before the run folder exists, a crop size the training Seg cannot segment.

    The Seg segments every generated crop; a backend whose deepest features vanish at that size (Mask2Former's
    stride-32 GroupNorm below 64 px, for instance) would otherwise fail at the first step, after the run has
    started. One forward of a blank crop is the exact test.
    """
    if seg is None:
        return
    try:
        with torch.no_grad():
            seg.soft_probs(torch.zeros(1, 3, crop_size, crop_size, device=device))
    except (RuntimeError, ValueError) as exc:
        raise AdvsegError(f"--crop-size {crop_size}: the {seg.backend} segmentation network cannot segment "
                          f"{crop_size}x{crop_size} crops ({str(exc).splitlines()[0]}); use a larger --crop-size "
                          "(and --load-size)") from None


def build_perceptual_for(config: TrainConfig, model_options: Any, device: torch.device) -> Any:
    """AutoPainter's frozen VGG16 features with real weights; None for models (or settings) without them."""
    if not MODELS[config.model][1].uses_perceptual or model_options.lambda_feat == 0:
        return None
    from advseg_cli.models.perceptual import build_perceptual

    return build_perceptual(model_options.perceptual_layer, config.perceptual_weights, device)


def make_loader(dataset: SketchPhotoDataset, config: TrainConfig, ddp: Distributed, epoch: int,
                skip_batches: int) -> Iterator[dict[str, Any]]:
    """The batches of one epoch, starting after ``skip_batches`` (resume), identical across resumes."""
    sampler = DistributedSampler(dataset, num_replicas=ddp.world, rank=ddp.rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    sampler.set_epoch(epoch)
    dataset.set_epoch(epoch)
    indices = list(sampler)[skip_batches * config.batch_size:]
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=indices, num_workers=config.workers,
                        drop_last=True, pin_memory=torch.cuda.is_available() and config.device != "cpu",
                        persistent_workers=False, generator=loader_generator(config.seed, epoch, ddp.rank),
                        worker_init_fn=leave_stop_signals_to_the_main_process)
    return iter(loader)


def loader_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """The DataLoader's own generator, so that starting an epoch's iterator draws nothing from the global one.

    A DataLoader without one takes its base seed from the global torch generator when its iterator is made:
    at the start of each epoch in an uninterrupted run, but in the middle of one after a resume, which would
    shift every later dropout mask and pool draw. Our samples take their randomness from their own generators
    (``data.sample_generator``), so this seed only feeds the workers' unused default seeds.
    """
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 101 + rank)


def steps_per_epoch(dataset: SketchPhotoDataset, config: TrainConfig, ddp: Distributed) -> int:
    per_rank = len(dataset) // ddp.world
    return per_rank // config.batch_size


# ----------------------------------------------------------------------------- the run folder
class RunFolder:
    """config.json, metrics.csv, TensorBoard events, samples/ and checkpoints/ of one run."""

    def __init__(self, config: TrainConfig, enabled: bool) -> None:
        self.root = config.run_dir
        self.enabled = enabled
        self.checkpoints = self.root / "checkpoints"
        self.samples = self.root / "samples"
        self._csv_columns: list[str] | None = None
        self._tensorboard = None
        if enabled:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            self.samples.mkdir(parents=True, exist_ok=True)

    def write_config(self, config: TrainConfig, extra: dict[str, Any]) -> None:
        if self.enabled:
            text = json.dumps({"advseg_version": __version__, **config.to_json(), **extra}, indent=2) + "\n"
            write_bytes_atomic(self.root / "config.json", text.encode())

    def log(self, step: int, epoch: int, values: dict[str, float]) -> None:
        """One row of metrics.csv (and the same scalars as TensorBoard events)."""
        if not self.enabled:
            return
        path = self.root / "metrics.csv"
        row = {"step": step, "epoch": epoch, **{k: f"{v:.8g}" for k, v in values.items()}}
        if self._csv_columns is None:
            self._csv_columns = self._existing_columns(path)  # a resumed run keeps its file's columns
            if self._csv_columns is None:
                self._csv_columns = list(row)
                with open(path, "w", newline="") as handle:
                    csv.writer(handle).writerow(self._csv_columns)
        with open(path, "a", newline="") as handle:
            csv.DictWriter(handle, self._csv_columns, extrasaction="ignore").writerow(row)
        writer = self._tensorboard_writer()
        if writer is not None:
            for key, value in values.items():
                writer.add_scalar(key, value, step)
            writer.flush()

    @staticmethod
    def _existing_columns(path: Path) -> list[str] | None:
        if not path.exists():
            return None
        with open(path, newline="") as handle:
            return next(csv.reader(handle), None)

    def _tensorboard_writer(self) -> Any:
        if self._tensorboard is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional; metrics.csv always holds the same numbers
                self._tensorboard = False
                return None
            self._tensorboard = SummaryWriter(str(self.root / "tensorboard"))
        return self._tensorboard or None

    def close(self) -> None:
        if self._tensorboard:
            self._tensorboard.close()


def trim_metrics(path: Path, after_step: int) -> None:
    """On resume, drop metric rows past the checkpoint (they will be logged again, identically)."""
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = [rows[0]] + [row for row in rows[1:] if row and int(row[0]) <= after_step]
    write_bytes_atomic(path, "".join(",".join(row) + "\r\n" for row in kept).encode())


def to_uint8_image(tensor: Tensor) -> np.ndarray:
    """[3,H,W] in [-1,1] -> HxWx3 uint8."""
    array = ((tensor.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte()
    return array.permute(1, 2, 0).numpy()


@torch.no_grad()
def sample_grid(model: AdvSegModel, batch: dict[str, Tensor], limit: int = 4) -> np.ndarray:
    """Rows of sketch | generated | photo (| map of the generated photo | map of the real photo)."""
    from advseg_cli.segmentation.maps import colorize

    was_training = model.training
    model.eval()
    real_A, real_B = batch["real_A"][:limit], batch["real_B"][:limit]
    fake_B = model.photo_generator(real_A)
    model.train(was_training)
    rows = []
    for index in range(real_A.shape[0]):
        cells = [to_uint8_image(real_A[index]), to_uint8_image(fake_B[index]), to_uint8_image(real_B[index])]
        if model.seg is not None:
            fake_labels = model.seg.hard_labels(fake_B[index:index + 1].float())[0].cpu().numpy()
            cells.append(colorize(fake_labels))
            if "real_B_labels" in batch:
                cells.append(colorize(batch["real_B_labels"][index].cpu().numpy()))
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


# ----------------------------------------------------------------------------- the loop
def _to_device(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    moved = {}
    for key, value in batch.items():
        if isinstance(value, Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and value.dim() == 4:
                value = value.contiguous(memory_format=torch.channels_last)
        moved[key] = value
    return moved


def adam(parameters: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Adam:
    """The public code's Adam (beta2 0.999), with the multi-tensor implementation also on the CPU.

    torch picks it by itself only for CUDA tensors; on the CPU it gives the same values, bit for bit, as
    the one-tensor-at-a-time loop, a quarter faster for a generator's ~50 tensors (docs/benchmarks.md).
    """
    return torch.optim.Adam(parameters, lr=config.lr, betas=(config.beta1, 0.999), foreach=True)


class Trainer:
    """One training run; ``run()`` trains until the last epoch or ``max_steps``."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config.validate()
        self.ddp, self.device = setup_distributed(config.device)
        check_precision(config.precision, self.device)
        torch.manual_seed(config.seed)
        self.dataset = SketchPhotoDataset(
            config.sketches, config.photos, paired=MODELS[config.model][1].paired,
            aug=Augmentation(config.load_size, config.crop_size, config.flip), seed=config.seed,
            segcache=config.segcache, segcache_missing=config.segcache_missing, max_items=config.max_items or None)
        self.steps_per_epoch = steps_per_epoch(self.dataset, config, self.ddp)
        if self.steps_per_epoch == 0:
            raise AdvsegError(f"--batch-size {config.batch_size}: larger than the {len(self.dataset)} training "
                              f"samples per process; use a smaller batch")
        model_options = model_config(config.model, **config.model_options)
        with main_process_first(self.ddp):  # frozen networks whose weights may be downloaded
            seg = build_segmenter_for(config, self.device)
            perceptual = build_perceptual_for(config, model_options, self.device)
        check_segmenter_runs_at(seg, config.crop_size, self.device)
        self.model = build_model(config.model, model_options, seg, pool_seed=config.seed * 1000 + self.ddp.rank,
                                 perceptual=perceptual).to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        broadcast_parameters(self.model, self.ddp.world)
        self.opt_G = adam(self.model.generator_parameters(), config)
        self.opt_D = adam(self.model.discriminator_parameters(), config)
        decay = linear_decay_factor(config.epochs, config.epochs_decay)
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, decay)
        self.sched_D = torch.optim.lr_scheduler.LambdaLR(self.opt_D, decay)
        self.late_optimizers: dict[str, torch.optim.Optimizer] = {}  # CUT's F: joins once the first batch made it
        self.late_schedulers: dict[str, torch.optim.lr_scheduler.LambdaLR] = {}
        self.first_batch_seen = False  # data-dependent parts (CUT's F) are made on the first batch of a session
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.position = Position()
        self.folder = RunFolder(config, enabled=self.ddp.is_main)
        self.last_good: Path | None = None
        self._prepare_start()
        if config.compile:
            for network in self.model.generator_modules() + self.model.discriminator_modules():
                network.forward = torch.compile(network.forward)

    # -- start: fresh, resumed or initialised from weights
    def _prepare_start(self) -> None:
        config, latest = self.config, self.config.run_dir / "checkpoints" / "latest.pt"
        if config.resume:
            if not latest.exists():
                raise AdvsegError(f"--resume: {latest} does not exist; start the run without --resume")
            self._restore(load_checkpoint(latest))
            self.last_good = latest
            if self.ddp.is_main:
                trim_metrics(config.run_dir / "metrics.csv", self.position.step)
            return
        if latest.exists():
            raise AdvsegError(self._occupied_run_folder_message())
        if config.init_from is not None:
            self._initialise_generators(config.init_from)
        self.folder.write_config(config, {"model_config": dataclasses.asdict(self.model.config),
                                          "steps_per_epoch": self.steps_per_epoch, "world_size": self.ddp.world,
                                          "segmenter": self.model.seg.describe() if self.model.seg else None,
                                          "perceptual": self.model.perceptual.describe() if self.model.perceptual
                                          else None})

    def _occupied_run_folder_message(self) -> str:
        """Why a new run cannot start in this folder, and what the user most likely wants instead."""
        run_dir = self.config.run_dir
        record = read_record(run_dir / FOLDER_RECORD_NAME) or {}
        counts = record.get("counts", {})
        if record.get("status") == "complete":
            return (f"{run_dir} holds a complete run ({counts.get('steps')} of {counts.get('planned_steps')} steps): "
                    f"colorize it (advseg colorize {run_dir} SKETCHES OUT), train it further with --resume and a "
                    "larger --max-steps, or choose another --name")
        return f"{run_dir} already holds a run; continue it with --resume or choose another --name"

    def _initialise_generators(self, path: Path) -> None:
        """Weights only (ours or a public-code generator), starting at step 0 with fresh optimizers."""
        from advseg_cli.models.public_checkpoints import load_public_generator

        generator = self.model.photo_generator
        try:
            payload = load_checkpoint(path)
        except AdvsegError:
            load_public_generator(Path(path), generator)  # raises a clear error for other files
            return
        # The source run's sketch -> photo generator (G_A of a CycleGAN run can seed CUT's G, and back).
        source = MODELS.get(payload.get("model_name"), MODELS[self.config.model])[1]
        prefix = source.generator_names[0] + "."
        state = {k[len(prefix):]: v for k, v in payload["model"].items() if k.startswith(prefix)}
        try:
            generator.load_state_dict(state)
        except RuntimeError as exc:
            raise AdvsegError(f"--init-from {path}: its {prefix[:-1]} does not fit this run's generator "
                              f"({generator.spec.options()}); give the options it was trained with "
                              f"({str(exc).strip().splitlines()[0]})") from None

    def _restore(self, payload: dict[str, Any]) -> None:
        if payload["model_name"] != self.config.model:
            raise AdvsegError(f"--resume: the checkpoint is a {payload['model_name']} run, not {self.config.model}")
        if payload["model_config"] != dataclasses.asdict(self.model.config):
            raise AdvsegError("--resume: the model options differ from the checkpoint's; resume with the same options")
        self.model.load_state_dict(payload["model"])
        self.model.load_pools_state_dict(payload["pools"])
        self._join_late_optimizers()
        for name, optimizer in [("G", self.opt_G), ("D", self.opt_D), *self.late_optimizers.items()]:
            optimizer.load_state_dict(payload["optimizers"][name])
        for name, scheduler in [("G", self.sched_G), ("D", self.sched_D), *self.late_schedulers.items()]:
            scheduler.load_state_dict(payload["schedulers"][name])
        self.scaler.load_state_dict(payload["scaler"])
        restore_rng_states(payload["rng"], self.device)
        self.position = Position(**payload["position"])

    def _payload(self) -> dict[str, Any]:
        return {
            "model_name": self.config.model,
            "model_config": dataclasses.asdict(self.model.config),
            "train_config": self.config.to_json(),
            "model": self.model.state_dict(),
            "pools": self.model.pools_state_dict(),
            "optimizers": {"G": self.opt_G.state_dict(), "D": self.opt_D.state_dict(),
                           **{name: opt.state_dict() for name, opt in self.late_optimizers.items()}},
            "schedulers": {"G": self.sched_G.state_dict(), "D": self.sched_D.state_dict(),
                           **{name: sched.state_dict() for name, sched in self.late_schedulers.items()}},
            "scaler": self.scaler.state_dict(),
            "rng": rng_states(self.device),
            "position": dataclasses.asdict(self.position),
        }

    def save(self, epoch_snapshot: bool = False) -> None:
        if not self.ddp.is_main:
            return
        payload = self._payload()
        latest = self.folder.checkpoints / "latest.pt"
        save_checkpoint(latest, payload)
        self.last_good = latest
        if epoch_snapshot:
            save_checkpoint(self.folder.checkpoints / f"epoch_{self.position.epoch - 1:03d}.pt", payload)

    # -- parts created on the first batch (CUT's projection head)
    def _join_late_optimizers(self) -> None:
        """Give each parameter group the model created after construction its own Adam and schedule.

        As in the public CUT code, where ``data_dependent_initialize`` appends the projection head's
        optimizer to the list that later gets the schedulers: same lr, betas and linear policy as G's.
        """
        for name, parameters in self.model.late_parameter_groups().items():
            if name in self.late_optimizers:
                continue
            broadcast_tensors(parameters, self.ddp.world)
            optimizer = adam(parameters, self.config)
            self.late_optimizers[name] = optimizer
            self.late_schedulers[name] = torch.optim.lr_scheduler.LambdaLR(
                optimizer, linear_decay_factor(self.config.epochs, self.config.epochs_decay))

    # -- one step
    def step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Generators and discriminators on the same generated images, in the model's public order
        (CycleGAN, Pix2Pix: G then D; CUT: D then G with F)."""
        model, device, precision = self.model, self.device, self.config.precision
        if not self.first_batch_seen:  # once per session, not a check on every step
            model.data_dependent_initialize(batch)
            self._join_late_optimizers()
            self.first_batch_seen = True
        model.set_step(self.position.step)
        with autocast(device, precision):
            fakes = model.translate(batch)
        if model.discriminators_first:
            d = self._update_discriminators(batch, fakes)
            g, measured = self._update_generators(batch, fakes)
        else:
            g, measured = self._update_generators(batch, fakes)
            d = self._update_discriminators(batch, fakes)
        self.scaler.update()
        terms = {f"loss/{k}": v.detach() for k, v in g.items() if k != "total"}
        terms.update({f"loss/{k}": v.detach() for k, v in d.items() if k != "total"})
        terms["loss/G_total"], terms["loss/D_total"] = g["total"].detach(), d["total"].detach()
        return {**terms, **measured, **model.step_statistics()}

    def _update_generators(self, batch: dict[str, Any], fakes: Any) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The generator losses, their backward and the step of opt_G (and of the late optimizers)."""
        model = self.model
        with autocast(self.device, self.config.precision):
            g = model.generator_losses(batch, fakes)
        measured = {}
        step = self.position.step  # also at a run's first step: metrics.csv takes its columns from the first row
        if self.config.log_seg_grad_norm and (step == 0 or (step + 1) % self._grad_norm_interval == 0):
            measured.update(term_gradient_norms(model, g))
            if model.seg_kinds:
                measured["grad/G_seg_norm"] = segmentation_gradient_norm(model, g)
        optimizers = [self.opt_G, *self.late_optimizers.values()]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(g["total"]).backward()
        late = [p for group in model.late_parameter_groups().values() for p in group]
        average_gradients(model.generator_parameters() + late, self.ddp.world)
        for optimizer in optimizers:
            self.scaler.step(optimizer)
        return g, measured

    @property
    def _grad_norm_interval(self) -> int:
        return self.config.grad_norm_every or self.config.log_every

    def _update_discriminators(self, batch: dict[str, Any], fakes: Any) -> dict[str, Tensor]:
        """The discriminator losses (detached, pooled fakes), their backward and the step of opt_D."""
        with autocast(self.device, self.config.precision):
            d = self.model.discriminator_losses(batch, fakes)
        self.opt_D.zero_grad(set_to_none=True)
        self.scaler.scale(d["total"]).backward()
        average_gradients(self.model.discriminator_parameters(), self.ddp.world)
        self.scaler.step(self.opt_D)
        return d

    def _check_finite(self, values: dict[str, float]) -> None:
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            where = f"the last good checkpoint is {self.last_good}" if self.last_good else "no checkpoint was saved yet"
            raise TrainingDivergedError(f"step {self.position.step}: {', '.join(bad)} became non-finite; "
                                        f"training stopped, {where}")

    @property
    def planned_steps(self) -> int:
        """Where this run ends: all epochs, or --max-steps when that comes first."""
        planned = self.steps_per_epoch * self.config.total_epochs
        return min(planned, self.config.max_steps) if self.config.max_steps else planned

    def run(self) -> TrainSummary:
        config, total_steps = self.config, self.planned_steps
        self.model.train()
        last: dict[str, float] = {}
        pending: list[dict[str, Tensor]] = []
        batch: dict[str, Any] | None = None
        timer = time.perf_counter()
        quiet = config.quiet or not self.ddp.is_main
        plan = PlanAnnouncer(self, quiet=quiet)
        with progress(total=total_steps, desc=f"train {config.name}", quiet=quiet, unit="step",
                      initial=self.position.step) as bar, StopAtStepBoundary() as stop:
            while self.position.epoch <= config.total_epochs and self.position.step < total_steps:
                epoch = self.position.epoch
                for batch in make_loader(self.dataset, config, self.ddp, epoch, self.position.batch):
                    batch = _to_device(batch, self.device, config.channels_last)
                    pending.append(self.step(batch))
                    self.position = Position(self.position.step + 1, epoch, self.position.batch + 1)
                    bar.update(1)
                    step = self.position.step
                    plan.after_step(step)
                    if step % config.log_every == 0 or step == total_steps:
                        last = self._log(pending, time.perf_counter() - timer)
                        pending, timer = [], time.perf_counter()
                        bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in last.items()
                                         if k in ("loss/G_total", "loss/D_total")})
                    if self.ddp.is_main and step % config.sample_every == 0:
                        write_png(self.folder.samples / f"step_{step:07d}.png", sample_grid(self.model, batch))
                    # Decided once per step, and the save and the stop both follow that decision: a signal that
                    # lands after it (between the two) is acted on at the next step, never as a stop without save
                    stopping = self._stop_agreed(stop)
                    if step % config.save_every == 0 or step == total_steps or stopping:
                        last = self._log(pending, time.perf_counter() - timer) if pending else last
                        pending, timer = [], time.perf_counter()
                        with signals_deferred():  # a second signal waits for the checkpoint: never cut one
                            self.save()
                    if stopping and step < total_steps:
                        raise TrainingInterrupted(self._interrupted_message(stop.requested))
                    if step >= total_steps:
                        break
                else:
                    self._end_epoch(epoch)
                    continue
                break
            if self.ddp.is_main and batch is not None and self.position.step % config.sample_every != 0:
                write_png(self.folder.samples / f"step_{self.position.step:07d}.png", sample_grid(self.model, batch))
        self.folder.close()
        return TrainSummary(config.run_dir, self.position.step, self.position.epoch, last)

    def _stop_agreed(self, stop: StopAtStepBoundary) -> bool:
        """Whether a stop was asked for, on any process: every rank must stop after the same step."""
        if self.ddp.world == 1:
            return stop.requested is not None
        flag = torch.tensor([stop.requested is not None], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and stop.requested is None:
            stop.requested = "a signal to another process"
        return bool(flag.item())

    def _interrupted_message(self, cause: str) -> str:
        return (f"interrupted ({cause}) at step {self.position.step} of {self.planned_steps}; its checkpoint is "
                f"{self.config.run_dir / 'checkpoints' / 'latest.pt'}; continue with: "
                f"{resume_command(self.config, self.ddp.world)}")

    def _end_epoch(self, epoch: int) -> None:
        for scheduler in [self.sched_G, self.sched_D, *self.late_schedulers.values()]:
            scheduler.step()
        self.position = Position(self.position.step, epoch + 1, 0)
        snapshot = epoch % self.config.save_epoch_every == 0 or epoch == self.config.total_epochs
        if snapshot:
            self.save(epoch_snapshot=True)

    def _log(self, pending: list[dict[str, Tensor]], seconds: float) -> dict[str, float]:
        """Average the pending steps' losses (one device sync), check them, write one metrics row."""
        if not pending:
            return {}
        keys = list(dict.fromkeys(key for step in pending for key in step))  # some are measured at some steps only
        means = [torch.stack([step[k].float() for step in pending if k in step]).mean() for k in keys]
        values = dict(zip(keys, torch.stack(means).tolist()))
        self._check_finite(values)
        values["lr"] = self.opt_G.param_groups[0]["lr"]
        values["time/seconds_per_step"] = seconds / len(pending)
        self.folder.log(self.position.step, self.position.epoch, values)
        return values


CPU_WARNING_HOURS = 3.0  # a CPU run predicted longer than this gets one line naming the options that shrink it
TIMED_STEPS = 3  # steps after the first (which pays for warm-up) that the estimate is measured over


def format_duration(seconds: float) -> str:
    """A duration as a person reads it: 40 s, 12 min, 3.5 h, 2.1 days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class PlanAnnouncer:
    """The first line of a run: its planned steps and, measured on its first steps, how long it will take.

    Announced after a few timed steps rather than before, because only the machine itself can tell how fast
    this model runs on it; a CPU run that would take hours says so and names the options that shrink it.
    """

    def __init__(self, trainer: Trainer, quiet: bool) -> None:
        self.trainer, self.quiet = trainer, quiet
        self.first_step = trainer.position.step
        self.total = trainer.planned_steps
        self.clock: float | None = None
        self.done = self.first_step >= self.total

    def after_step(self, step: int) -> None:
        if self.done:
            return
        if self.clock is None:  # the first step of this session pays for warm-up: timing starts after it
            self.clock = time.perf_counter()
            if step >= self.total:
                self._announce(step, per_step=None)
            return
        timed = step - self.first_step - 1
        if timed >= TIMED_STEPS or step >= self.total:
            self._announce(step, per_step=(time.perf_counter() - self.clock) / timed)

    def _announce(self, step: int, per_step: float | None) -> None:
        self.done = True
        config, remaining = self.trainer.config, self.total - step
        left = per_step * remaining if per_step is not None else 0.0
        if not self.quiet:
            limit = f", --max-steps {config.max_steps}" if config.max_steps else ""
            speed = f"{per_step:.2g} s/step on {self.trainer.device.type}, " if per_step is not None else ""
            click.echo(f"train {config.name}: step {step} of {self.total} planned ({self.trainer.steps_per_epoch} "
                       f"per epoch x {config.total_epochs} epochs{limit}); {speed}about {format_duration(left)} left",
                       err=True)
        if self.trainer.device.type == "cpu" and left > CPU_WARNING_HOURS * 3600:
            click.echo(f"train {config.name}: this run would take about {format_duration(left)} on this CPU; "
                       "shrink it with --max-steps, --crop-size/--load-size, --ngf/--ndf or --epochs/--epochs-decay, "
                       "or train on a GPU (--device cuda)", err=True)


def gradient_norm_on(term: Tensor, parameters: list[torch.nn.Parameter]) -> Tensor:
    """L2 norm of d term / d parameters on this step's graph (kept for the real backward); 0 when unreachable."""
    zero = torch.zeros((), device=parameters[0].device)
    if not term.requires_grad:
        return zero
    grads = torch.autograd.grad(term.float(), parameters, retain_graph=True, allow_unused=True)
    squares = [(grad.float() ** 2).sum() for grad in grads if grad is not None]
    return torch.stack(squares).sum().sqrt().detach() if squares else zero


def term_gradient_norms(model: AdvSegModel, generator_terms: dict[str, Tensor]) -> dict[str, Tensor]:
    """``grad/G_<term>_norm``: the L2 norm of each weighted generator term's gradient on the photo generator.

    Shows the balance of the terms (GAN, L1 / cycle / identity / NCE, each segmentation term) that their
    loss values cannot: a term of small value can dominate the update, and a constant one does nothing.
    """
    parameters = [p for p in model.photo_generator.parameters() if p.requires_grad]
    return {f"grad/G_{name}_norm": gradient_norm_on(term, parameters)
            for name, term in generator_terms.items() if name != "total"}


def segmentation_gradient_norm(model: AdvSegModel, generator_terms: dict[str, Tensor]) -> Tensor:
    """L2 norm of d(sum of the segmentation terms G_M, G_Bin)/d(photo generator's weights).

    Measured on the graph of this step (kept for the real backward), so training is unchanged. A term
    that does not depend on the generator (``--seg-grad compat``: hard maps) gives exactly 0.
    """
    seg_terms = [term for name, term in generator_terms.items() if name in ("G_M", "G_Bin")]
    parameters = [p for p in model.photo_generator.parameters() if p.requires_grad]
    if not seg_terms:
        return torch.zeros((), device=parameters[0].device)
    return gradient_norm_on(torch.stack([term.float() for term in seg_terms]).sum(), parameters)


class TrainingInterrupted(StageInterrupted):
    """Training stopped on a signal after saving the checkpoint of the step it had finished."""


def resume_command(config: TrainConfig, world: int = 1) -> str:
    """The command that continues this run: its config.json supplies every other option.

    A run of N processes continues with N, under torchrun as it was started: each process's share of an
    epoch depends on N, so one process would not continue the same run.
    """
    words = ["train", "--name", config.name, "--runs-dir", str(config.runs_dir), "--resume"]
    if world == 1:
        return shlex.join(["advseg", *words])
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    nodes = ["--standalone"] if per_node == world else ["--nnodes", str(world // per_node)]  # + rendezvous
    return shlex.join(["torchrun", *nodes, "--nproc_per_node", str(per_node), "-m", "advseg_cli.cli", *words])


def _record_start(record: RunRecord, config: TrainConfig, trainer: Trainer) -> None:
    """Say "running" while the run trains (also when resumed), keeping when its first session started."""
    if not trainer.ddp.is_main:
        return
    path = config.run_dir / FOLDER_RECORD_NAME
    previous = read_record(path) if config.resume else None
    if previous:
        record.extra["first_started"] = previous.get("extra", {}).get("first_started", previous.get("started"))
    record.write(path)


def _record_interruption(record: RunRecord, config: TrainConfig, trainer: Trainer | None) -> None:
    """RUN/advseg-run.json says "interrupted" and at which step, so nobody mistakes the run for finished."""
    if trainer is None or not trainer.ddp.is_main or not config.run_dir.is_dir():
        return
    record.counts = {"steps": trainer.position.step, "planned_steps": trainer.planned_steps,
                     "epoch": trainer.position.epoch}
    record.extra["continue_with"] = resume_command(config, trainer.ddp.world)
    record.finish("interrupted")
    record.write(config.run_dir / FOLDER_RECORD_NAME)


def train(config: TrainConfig) -> TrainSummary:
    """Train (or resume) one run; returns where it stands.

    When the run reaches its planned end, ``RUN/advseg-run.json`` records it: its presence means the run
    is finished (what ``make reproduce`` waits for), while checkpoints alone may belong to a stopped run.
    A signal stops the run at the end of the current step with a checkpoint there, and the record says
    "interrupted" with the command that continues it.
    """
    record = RunRecord("train", config.to_json())
    trainer: Trainer | None = None
    agreed = False  # whether every rank ends here at the same step (then they can wait for each other)
    try:
        trainer = Trainer(config)
        if trainer.position.step >= trainer.planned_steps:  # a resumed run that had already ended
            agreed = True
            return TrainSummary(config.run_dir, trainer.position.step, trainer.position.epoch, {}, True)
        _record_start(record, config, trainer)
        summary = trainer.run()
        agreed = True
    except TrainingInterrupted:
        agreed = True  # the ranks stop after the same step (Trainer._stop_agreed)
        with stop_already_under_way():  # a second signal now would only cut the record
            _record_interruption(record, config, trainer)
        raise
    except KeyboardInterrupt:  # a second signal, or one before the first step: no checkpoint of this moment
        _record_interruption(record, config, trainer)
        latest = config.run_dir / "checkpoints" / "latest.pt"
        advice = resume_command(config, trainer.ddp.world if trainer else 1) if latest.exists() else same_command()
        raise TrainingInterrupted(f"interrupted before the end of a step; continue with: {advice}") from None
    finally:
        leave_process_group(synchronise=agreed)
    if trainer.ddp.is_main:
        planned = trainer.planned_steps
        record.counts = {"steps": summary.steps, "planned_steps": planned, "epoch": summary.epoch}
        record.extra["last_losses"] = summary.last_losses
        record.finish("complete" if summary.steps >= planned else "stopped")
        record.write(config.run_dir / FOLDER_RECORD_NAME)
    return summary
