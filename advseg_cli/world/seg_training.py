"""Training the shapes world's two segmenters (the training Seg and the evaluation segmenter).

Each is trained on photos of the world and their ground truth, drawn from the world's own stream for
Seg (``scene_for(seed, "seg-train", i)``: the same distribution as every dataset of the world, but not
the photos of any dataset a user renders), and validated on held-out photos of another stream
(``"seg-val"``): the validation mIoU goes into its run record and is printed. So one trained Seg serves
every rendering of the world (the demo's small one and the experiment's), it never saw a test photo,
and it does not change when a dataset is rendered with more or fewer photos.
Training is deterministic from the role's seed on a given machine: a fixed order of batches, of
scales and of augmentations drawn from a NumPy generator seeded with it, and torch's seed for the
initial weights.

Augmentations make Seg useful on *generated* photos and at the colorizers' scale: every batch is
resized to a random side between half and the full photo size (the colorizers train on 64-128 px
crops), flipped, and sometimes blurred (down- and up-sampled), as generated photos often are.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advseg_cli.errors import AdvsegError
from advseg_cli.progress import progress
from advseg_cli.runrecord import RunRecord, record_path_for
from advseg_cli.segmentation.base import uint8_to_model_range
from advseg_cli.segmentation.metrics import confusion_matrix, mean_iou, per_class_iou
from advseg_cli.world.render import WORLD_CLASS_IDS, WORLD_VERSION, render_scene, scene_for
from advseg_cli.world.seg import ARCHITECTURES, NUM_WORLD_CLASSES, ROLES, build_network, save_network, world_logits

IGNORE = 255  # a 135-layout label that is not one of the world's classes (never in the world's truth)


@dataclasses.dataclass(frozen=True)
class SegTrainingConfig:
    """How one segmenter is trained (the record stores it)."""

    epochs: int = 8
    batch_size: int = 16
    lr: float = 3e-3  # Adam, decayed linearly to 0 over the run
    min_scale: float = 0.5  # batches are resized to a random side in [min_scale, 1] x the photo's
    blur_probability: float = 0.3  # share of batches down- and up-sampled by 2 (blurry, like generated photos)
    photos: int = 800  # training photos of the world's "seg-train" stream
    validation_photos: int = 200  # held-out photos of its "seg-val" stream
    size: int = 128  # their side
    world_seed: int = 0
    quiet: bool = False

    def validate(self) -> SegTrainingConfig:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or not 0 < self.min_scale <= 1 \
                or self.photos < 1 or self.validation_photos < 1:
            raise AdvsegError("shapes Seg training: epochs, batch size and photo counts >= 1, lr > 0, "
                              "0 < min_scale <= 1")
        return self


def to_world_index(labels: np.ndarray) -> np.ndarray:
    """135-layout labels -> 0..8 world class indices (IGNORE for anything else)."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[list(WORLD_CLASS_IDS)] = np.arange(len(WORLD_CLASS_IDS), dtype=np.uint8)
    return lut[labels]


def render_split(stream: str, count: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Photos [N,H,W,3] uint8 and their world-index truth [N,H,W] of one stream of the world, in memory."""
    rendered = [render_scene(scene_for(seed, stream, index, size)) for index in range(count)]
    return np.stack([photo for photo, _ in rendered]), np.stack([to_world_index(labels) for _, labels in rendered])


def _batch_tensors(photos: np.ndarray, labels: np.ndarray) -> tuple[Tensor, Tensor]:
    return uint8_to_model_range(photos), torch.from_numpy(labels.astype(np.int64))


def _augment(images: Tensor, labels: Tensor, rng: np.random.Generator, config: SegTrainingConfig) -> tuple[Tensor, Tensor]:
    side = images.shape[-1]
    new_side = int(round(side * rng.uniform(config.min_scale, 1.0) / 8)) * 8
    if new_side != side:
        images = F.interpolate(images, size=(new_side, new_side), mode="bilinear", antialias=True, align_corners=False)
        labels = F.interpolate(labels[:, None].float(), size=(new_side, new_side), mode="nearest")[:, 0].long()
    if rng.uniform() < 0.5:
        images, labels = images.flip(-1), labels.flip(-1)
    if rng.uniform() < config.blur_probability:
        small = F.interpolate(images, scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)
        images = F.interpolate(small, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return images, labels


def train_network(arch: str, seed: int, photos: np.ndarray, labels: np.ndarray,
                  config: SegTrainingConfig, desc: str = "train Seg") -> tuple[nn.Module, list[float]]:
    """Train one network from scratch; returns it (eval mode) and the mean loss of each epoch."""
    config.validate()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = build_network(arch)
    steps_per_epoch = max(1, len(photos) // config.batch_size)
    total = steps_per_epoch * config.epochs
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total)
    network.train()
    history = []
    with progress(total=total, desc=desc, quiet=config.quiet, unit="step") as bar:
        for _ in range(config.epochs):
            order, losses = rng.permutation(len(photos)), []
            for step in range(steps_per_epoch):
                chosen = np.sort(order[step * config.batch_size:(step + 1) * config.batch_size])
                images, targets = _augment(*_batch_tensors(photos[chosen], labels[chosen]), rng, config)
                loss = F.cross_entropy(world_logits(network, images), targets, ignore_index=IGNORE)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(float(loss.detach()))
                bar.update(1)
            history.append(float(np.mean(losses)))
    return network.eval(), history


@torch.no_grad()
def predict_world(network: nn.Module, photos: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """[N,H,W,3] uint8 photos -> [N,H,W] world-index predictions."""
    network.eval()
    out = [world_logits(network, uint8_to_model_range(photos[start:start + batch_size])).argmax(1).numpy()
           for start in range(0, len(photos), batch_size)]
    return np.concatenate(out).astype(np.uint8)


def validation_scores(network: nn.Module, photos: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """mIoU (and per-class IoU, pixel accuracy) of ``network`` on held-out photos."""
    confusion = confusion_matrix(predict_world(network, photos), labels, NUM_WORLD_CLASSES)
    return {"miou": mean_iou(confusion), "per_class_iou": [round(float(v), 4) for v in per_class_iou(confusion)],
            "pixel_accuracy": float(np.diag(confusion).sum() / max(1, confusion.sum())), "photos": int(len(photos))}


def train_role(role: str, out: Path, config: SegTrainingConfig = SegTrainingConfig()) -> dict[str, Any]:
    """Train the ``role`` ('seg' | 'eval') network into ``out`` (safetensors) and its record ``out.run.json``
    (sha256, validation mIoU, settings)."""
    spec, arch, seed = ROLES[role]
    config.validate()
    started = time.perf_counter()
    train = render_split("seg-train", config.photos, config.size, config.world_seed)
    held_out = render_split("seg-val", config.validation_photos, config.size, config.world_seed)
    network, history = train_network(arch, seed, *train, config, desc=f"train {spec.name} ({arch})")
    scores = validation_scores(network, *held_out)
    record = RunRecord(f"shapes-{role}", {"role": role, "arch": arch, "width": ARCHITECTURES[arch][1], "seed": seed,
                                          "world_version": WORLD_VERSION, **dataclasses.asdict(config)})
    record.extra.update(sha256=save_network(network, arch, ARCHITECTURES[arch][1], out),
                        validation=scores, epoch_losses=history,
                        seconds=round(time.perf_counter() - started, 1), torch_threads=torch.get_num_threads())
    record.counts = {"done": int(len(train[0])), "skipped": 0, "failed": 0}
    record.finish()
    record.write(record_path_for(out))
    return record.to_json()


def ensure_trained(role: str, out: Path, config: SegTrainingConfig = SegTrainingConfig()) -> tuple[dict[str, Any], bool]:
    """The record of ``role``'s weights at ``out``, training them first when they are not there.

    Returns (record, trained now?). A file that is there but does not match its record is refused
    (never silently replaced: it may be someone's work).
    """
    from advseg_cli.runrecord import read_record
    from advseg_cli.world.seg import verify_against_record

    if out.exists():
        verify_against_record(out)
        return read_record(record_path_for(out)) or {}, False
    return train_role(role, out, config), True


def describe_scores(record: dict[str, Any]) -> str:
    """'validation mIoU 0.95 on 200 held-out photos' from a weights record."""
    validation = record.get("extra", {}).get("validation", {})
    return f"validation mIoU {validation.get('miou', float('nan')):.3f} on {validation.get('photos', 0)} held-out photos"
