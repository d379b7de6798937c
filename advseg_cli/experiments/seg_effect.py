"""``advseg experiment seg-effect OUT``: what the adversarial segmentation loss does, measured in the
shapes world, where segmentation has a ground truth and a trained Seg exists offline.

It drives the stage functions the commands use: ``prepare_dataset`` (render -> seg -> edges ->
segcache), ``training.loop.train`` (in segments, each continuing the last with ``resume``, so the
same run is scored at several steps), ``colorize_folder`` on the held-out test sketches, and FID's
``frechet_distance``. For each model, mode (``--advseg none``; ``both`` with ``--seg-grad compat``,
``soft``, ``straight``) and seed, at every evaluation step, on the test sketches:

* ``miou``: the **evaluation** segmenter's map of each colorized image against the ground truth
  (segmentation consistency). The evaluation segmenter never appears in a training loss;
* ``mae``: mean absolute error against the ground-truth photo, in 8-bit levels (the world is paired,
  even for CycleGAN, which never sees the pairs);
* ``frechet``: Fréchet distance between the test photos and the colorized images on the evaluation
  segmenter's bottleneck features (a trained network of this world; Inception is not available offline
  and knows nothing of it);
* ``seg_grad_norm``: the norm of the segmentation terms' gradient on the photo generator, from the
  run's metrics (``--log-seg-grad-norm``; exactly 0 in compat, and absent without --advseg).

Reference values put them in scale: the evaluation segmenter on the test photos themselves (its
ceiling) and on a constant grey image (chance), and the Fréchet distance between the world's train
and test photos (the noise floor of two samples of the same world).

Everything is resumable: each evaluation is a JSON file under ``OUT/evals``, and a run that is there is
continued, not redone. A stop signal (Ctrl-C, SIGTERM) ends every run in progress after its step (in the
``--jobs`` workers too), starts no queued one, leaves ``OUT/advseg-run.json`` saying "interrupted", and
prints the experiment's own command, which continues it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advseg_cli.errors import AdvsegError
from advseg_cli.experiments.statistics import CONFIDENCE, has_converged, paired_difference
from advseg_cli.interrupts import StageInterrupted
from advseg_cli.runrecord import FOLDER_RECORD_NAME, RunRecord

MODES: dict[str, dict[str, Any]] = {  # mode name -> model options it sets
    "none": {"advseg": "none"},
    "compat": {"advseg": "both", "seg_grad": "compat"},
    "soft": {"advseg": "both", "seg_grad": "soft"},
    "straight": {"advseg": "both", "seg_grad": "straight"},
    # The variants that make a loss against a frozen network trainable (advseg_cli.models.seg_variants),
    # each on top of ``soft``, and all of them together; ``consistency`` is the non-adversarial control
    # (paired models only). Not in the presets' default modes: ask for them with --modes.
    "soft-real": {"advseg": "both", "seg_grad": "soft", "seg_real": "soft"},
    "soft-augment": {"advseg": "both", "seg_grad": "soft", "seg_augment": "translation,cutout"},
    "soft-warmup": {"advseg": "both", "seg_grad": "soft", "seg_warmup": 1000},
    "soft-balance": {"advseg": "both", "seg_grad": "soft", "seg_balance": 1.0},
    "soft-all": {"advseg": "both", "seg_grad": "soft", "seg_real": "soft", "seg_augment": "translation,cutout",
                 "seg_warmup": 1000, "seg_balance": 1.0},
    # D_M judges Seg's projected last features instead of its class map (Projected GAN), with soft-all's parts
    "soft-all-features": {"advseg": "both", "seg_grad": "soft", "seg_real": "soft", "seg_augment": "translation,cutout",
                          "seg_warmup": 1000, "seg_balance": 1.0, "seg_features": 64},
    "consistency": {"advseg": "none", "seg_consistency": 10.0},
}
BASE_MODES: tuple[str, ...] = ("none", "compat", "soft", "straight")  # the presets' modes
VARIANT_MODES: tuple[str, ...] = tuple(mode for mode in MODES if mode not in BASE_MODES)
PAIRED_ONLY_MODES: tuple[str, ...] = ("consistency",)
METRICS: dict[str, str] = {  # name -> how it reads
    "miou": "mIoU of the evaluation segmenter vs ground truth (higher is better)",
    "mae": "mean |colorized - photo| in 8-bit levels (lower is better)",
    "frechet": "Fréchet distance on the evaluation segmenter's features (lower is better)",
    "seg_grad_norm": "norm of the segmentation terms' gradient on the generator (mean over training)",
}


@dataclasses.dataclass(frozen=True)
class Preset:
    """One size of the experiment. Every field is recorded in results.json."""

    name: str
    world_train: int
    world_test: int
    world_size: int
    seg_photos: int  # photos the world's Seg trains on (quick presets train their own, smaller)
    seg_epochs: int
    seg_batch: int  # batch size of that Seg training
    models: tuple[str, ...]
    modes: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int  # training steps of every run
    evaluations: int  # scored at steps/evaluations, 2 steps/evaluations, ..., steps
    load_size: int
    crop_size: int
    ngf: int
    ndf: int
    edges_pad: int = 32  # HED reflect padding of the world's small photos (advseg edges --pad)
    own_seg: bool = False  # train a Seg for this experiment (in OUT/seg) instead of using $ADVSEG_HOME's
    batch_size: int = 1  # advseg train --batch-size of every run
    model_options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # model -> options it
    #                                            sets beyond the public defaults (recorded, see docs/evidence.md)

    model_steps: dict[str, int] = dataclasses.field(default_factory=dict)  # model -> its steps, where not ``steps``
    grad_norm_every: int = 0  # steps between the gradient-norm measurements (0: every metric row); each costs a
    #                           backward per generator term (a fifth of a Pix2Pix step at every 10th), and the
    #                           training is the same whatever the interval

    def steps_for(self, model: str) -> int:
        """Training steps of a model's runs (unpaired models may need more than paired ones)."""
        return self.model_steps.get(model, self.steps)

    def eval_steps_for(self, model: str) -> list[int]:
        """Scored at steps/evaluations, 2 steps/evaluations, ..., steps of that model."""
        steps = self.steps_for(model)
        return sorted({max(1, round(steps * k / self.evaluations)) for k in range(1, self.evaluations + 1)})

    @property
    def eval_steps(self) -> dict[str, list[int]]:
        return {model: self.eval_steps_for(model) for model in self.models}


PRESETS: dict[str, Preset] = {
    # The test suite's: every code path, minutes on 2 cores; its numbers mean nothing.
    "quick": Preset("quick", world_train=12, world_test=6, world_size=64, seg_photos=160, seg_epochs=6, seg_batch=8,
                    models=("cyclegan", "pix2pix"), modes=BASE_MODES, seeds=(0, 1), steps=4, evaluations=2,
                    load_size=56, crop_size=48, ngf=4, ndf=4, edges_pad=16, own_seg=True,
                    model_steps={"cyclegan": 6}, model_options={"pix2pix": {"norm": "instance"}}),
    # The default (docs/evidence.md has the measured times): Pix2Pix converges here in 5000 steps once its
    # norm is instance norm (batch norm at batch 1 is instance norm in training but running averages in
    # eval mode); CycleGAN gets 12000 steps and still learns slowly (docs/evidence.md).
    "default": Preset("default", world_train=300, world_test=100, world_size=128, seg_photos=800, seg_epochs=8, seg_batch=16,
                      models=("cyclegan", "pix2pix"), modes=BASE_MODES, seeds=(0, 1, 2, 3, 4), steps=5000,
                      evaluations=5, load_size=72, crop_size=64, ngf=16, ndf=16, model_steps={"cyclegan": 12000},
                      model_options={"pix2pix": {"norm": "instance"}}, grad_norm_every=100),
    # A GPU machine: larger photos, wider networks, more steps.
    "gpu": Preset("gpu", world_train=1000, world_test=200, world_size=128, seg_photos=800, seg_epochs=8, seg_batch=16,
                  models=("cyclegan", "pix2pix"), modes=BASE_MODES, seeds=(0, 1, 2), steps=20000,
                  evaluations=10, load_size=143, crop_size=128, ngf=64, ndf=64),
}


def run_name(model: str, mode: str, seed: int) -> str:
    return f"{model}-{mode}-s{seed}"


# ------------------------------------------------------------------------------------ the world
def prepare_world(out: Path, preset: Preset, device: str, quiet: bool) -> tuple[Path, Path, Path]:
    """The world's dataset under OUT/world/shapes, and the (seg, eval) weights files it uses."""
    from advseg_cli.datasets.prepare import PrepareConfig, prepare_dataset
    from advseg_cli.edges import EdgesConfig
    from advseg_cli.segcache import SegcacheConfig
    from advseg_cli.world.render import WorldConfig
    from advseg_cli.world.seg import world_segmenter_path
    from advseg_cli.world.seg_training import SegTrainingConfig

    seg_out = out / "seg" if preset.own_seg else None
    config = PrepareConfig(
        world=WorldConfig(seed=0, train=preset.world_train, test=preset.world_test, size=preset.world_size),
        seg_training=SegTrainingConfig(epochs=preset.seg_epochs, photos=preset.seg_photos, batch_size=preset.seg_batch,
                                       validation_photos=max(16, preset.seg_photos // 4), size=preset.world_size,
                                       quiet=quiet),
        seg_out=seg_out, quiet=quiet,
        edges=EdgesConfig(size=0, pad=preset.edges_pad, device=device, workers=0, quiet=quiet),
        segcache=SegcacheConfig(backend="shapes", square=preset.load_size, device=device, quiet=quiet))
    summary = prepare_dataset("shapes", out / "world", config)
    return summary.folder, world_segmenter_path("seg", seg_out), world_segmenter_path("eval", seg_out)


# ------------------------------------------------------------------------------------ scoring
def resized_truth(photos: np.ndarray, labels: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The test photos (bicubic, as the training loader resizes) and labels (nearest) at ``side``."""
    from PIL import Image

    if photos.shape[1] == side:
        return photos, labels
    resized = np.stack([np.asarray(Image.fromarray(p).resize((side, side), Image.BICUBIC)) for p in photos])
    nearest = np.stack([np.asarray(Image.fromarray(l).resize((side, side), Image.NEAREST)) for l in labels])
    return resized, nearest


@dataclasses.dataclass
class Scorer:
    """The evaluation segmenter and the test split's truth, loaded once.

    Colorized images are scored at the size the colorizer makes them (the training crop); the test
    photos and their truth are resized to it, rather than the results enlarged to the photos' size.
    """

    network: torch.nn.Module
    photos: np.ndarray  # [N,H,W,3] uint8, the world's test photos
    truth: np.ndarray  # [N,H,W] world class indices
    names: list[str]
    _at_size: dict[int, tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]] = dataclasses.field(
        default_factory=dict)

    @classmethod
    def load(cls, world: Path, eval_weights: Path) -> Scorer:
        from advseg_cli.images import list_images, read_rgb
        from advseg_cli.segcache import SegmentationCache, key_of
        from advseg_cli.world.seg import load_network
        from advseg_cli.world.seg_training import to_world_index

        network, _ = load_network(eval_weights)
        names = [p.as_posix() for p in list_images(world / "testB")]
        photos = np.stack([read_rgb(world / "testB" / name) for name in names])
        with SegmentationCache(world / "truth" / "testB.h5") as truth:
            labels = np.stack([to_world_index(truth.labels(key_of(name))) for name in names])
        return cls(network, photos, labels, names)

    def truth_at(self, side: int) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """(photos, labels, feature statistics of the photos) at ``side``, computed once per size."""
        if side not in self._at_size:
            photos, labels = resized_truth(self.photos, self.truth, side)
            self._at_size[side] = (photos, labels, self.gaussian(photos))
        return self._at_size[side]

    def features(self, images: np.ndarray) -> np.ndarray:
        from advseg_cli.segmentation.base import uint8_to_model_range
        from advseg_cli.world.seg import pad_to_multiple

        with torch.no_grad():
            return torch.cat([self.network.features(pad_to_multiple(uint8_to_model_range(images[i:i + 32]))[0])
                              for i in range(0, len(images), 32)]).numpy()

    def gaussian(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from advseg_cli.fid import gaussian_of

        return gaussian_of(self.features(images))

    def miou(self, images: np.ndarray) -> float:
        from advseg_cli.segmentation.metrics import confusion_matrix, mean_iou
        from advseg_cli.world.seg import NUM_WORLD_CLASSES
        from advseg_cli.world.seg_training import predict_world

        _, labels, _ = self.truth_at(images.shape[1])
        return mean_iou(confusion_matrix(predict_world(self.network, images), labels, NUM_WORLD_CLASSES))

    def frechet(self, images: np.ndarray) -> float:
        from advseg_cli.fid import frechet_distance

        return frechet_distance(*self.truth_at(images.shape[1])[2], *self.gaussian(images))

    def score(self, images: np.ndarray) -> dict[str, float]:
        """The three image metrics of colorized test images (in the order of ``names``)."""
        photos, _, _ = self.truth_at(images.shape[1])
        mae = float(np.abs(images.astype(np.float64) - photos.astype(np.float64)).mean())
        return {"miou": self.miou(images), "mae": mae, "frechet": self.frechet(images)}


def reference_scores(scorer: Scorer, world: Path, side: int) -> dict[str, float]:
    """Where the metrics stand, at the colorizers' output size ``side``: for the test photos themselves,
    for chance (a constant grey image), and for two samples of one world (train vs test photos)."""
    from advseg_cli.images import list_images, read_rgb

    photos, _, _ = scorer.truth_at(side)
    grey = np.full_like(photos, 128)
    train = np.stack([read_rgb(world / "trainB" / p) for p in list_images(world / "trainB")])
    train, _ = resized_truth(train, np.zeros(train.shape[:3], dtype=np.uint8), side)
    return {"size": side, "miou_test_photos": scorer.miou(photos), "miou_grey": scorer.miou(grey),
            "frechet_train_vs_test_photos": scorer.frechet(train), "mae_grey": scorer.score(grey)["mae"]}


# ------------------------------------------------------------------------------------ one run
def _train_config(world: Path, runs: Path, seg_weights: Path, preset: Preset, model: str, mode: str, seed: int,
                  max_steps: int, resume: bool, device: str) -> Any:
    from advseg_cli.training.loop import TrainConfig

    options = {"ngf": preset.ngf, "ndf": preset.ndf, **preset.model_options.get(model, {}), **MODES[mode]}
    uses_seg = options["advseg"] != "none" or options.get("seg_consistency", 0) > 0
    # whole epochs of the world's training photos: the first half at the full rate, then linear decay
    epochs_in_total = max(1, math.ceil(preset.steps_for(model) * preset.batch_size / preset.world_train))
    epochs = math.ceil(epochs_in_total / 2)
    return TrainConfig(
        name=run_name(model, mode, seed), sketches=world / "trainA", photos=world / "trainB", model=model,
        model_options=options, runs_dir=runs, segcache=world / "segmaps.h5" if uses_seg else None,
        seg_weights=seg_weights if uses_seg else None, load_size=preset.load_size, crop_size=preset.crop_size,
        epochs=epochs, epochs_decay=epochs_in_total - epochs, seed=seed, device=device, batch_size=preset.batch_size,
        workers=0, max_steps=max_steps, log_every=max(1, min(10, preset.steps_for(model) // 4)), log_seg_grad_norm=True,
        grad_norm_every=preset.grad_norm_every, sample_every=10**9, save_every=max_steps, resume=resume, quiet=True)


def _colorized(scorer: Scorer, folder: Path) -> np.ndarray:
    from advseg_cli.images import read_rgb

    return np.stack([read_rgb(folder / Path(name).with_suffix(".png")) for name in scorer.names])


def _metric_rows(run_dir: Path) -> list[dict[str, str]]:
    import csv

    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def seg_grad_norms(run_dir: Path) -> list[tuple[int, float]]:
    """(step, grad/G_seg_norm) rows of a run's metrics.csv (empty without the column)."""
    return [(int(row["step"]), float(row["grad/G_seg_norm"])) for row in _metric_rows(run_dir)
            if row.get("grad/G_seg_norm")]


def term_gradient_norms(run_dir: Path, until: int) -> dict[str, float]:
    """Each generator term's mean gradient norm (grad/G_<term>_norm) over the rows up to step ``until``:
    the balance of the terms, which their loss values do not show."""
    found: dict[str, list[float]] = {}
    for row in _metric_rows(run_dir):
        if int(row["step"]) > until:
            continue
        for column, value in row.items():
            if column.startswith("grad/G_") and column.endswith("_norm") and column != "grad/G_seg_norm" and value:
                found.setdefault(column[len("grad/G_"):-len("_norm")], []).append(float(value))
    return {term: float(np.mean(values)) for term, values in found.items()}


def evaluate_run(out: Path, world: Path, seg_weights: Path, scorer: Scorer, preset: Preset, model: str, mode: str,
                 seed: int, device: str) -> list[dict[str, Any]]:
    """Train one run in segments and score it at each evaluation step (resumable per evaluation)."""
    from advseg_cli.colorize import ColorizeConfig, colorize_folder
    from advseg_cli.training.loop import train

    name = run_name(model, mode, seed)
    rows = []
    for step in preset.eval_steps_for(model):
        cached = out / "evals" / name / f"step_{step:07d}.json"
        if cached.exists():
            rows.append(json.loads(cached.read_text(encoding="utf-8")))
            continue
        latest = out / "runs" / name / "checkpoints" / "latest.pt"
        started = time.perf_counter()
        train(_train_config(world, out / "runs", seg_weights, preset, model, mode, seed, step, latest.exists(), device))
        seconds = time.perf_counter() - started
        colorized = out / "colorized" / name / f"step_{step:07d}"
        colorize_folder(out / "runs" / name, world / "testA", colorized,
                        ColorizeConfig(device=device, quiet=True, overwrite=True))
        norms = [value for at, value in seg_grad_norms(out / "runs" / name) if at <= step]
        row = {"model": model, "mode": mode, "seed": seed, "step": step, "train_seconds": round(seconds, 2),
               **scorer.score(_colorized(scorer, colorized)),
               "seg_grad_norm": float(np.mean(norms)) if norms else None,
               "term_grad_norms": term_gradient_norms(out / "runs" / name, step)}
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------ tables and plots
HIGHER_IS_BETTER: dict[str, bool] = {"miou": True, "mae": False, "frechet": False}  # the image metrics
BASELINE_MODE = "none"


def mean_and_spread(values: Iterable[float | None]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (ddof 1; 0 for a single value) of the values that exist."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    return float(np.mean(present)), float(np.std(present, ddof=1)) if len(present) > 1 else 0.0


def _values(rows: list[dict[str, Any]], model: str, mode: str, step: int, metric: str) -> dict[int, float]:
    """seed -> value of one cell at one step."""
    return {row["seed"]: row[metric] for row in rows if row["model"] == model and row["mode"] == mode
            and row["step"] == step and row[metric] is not None}


def convergence(rows: list[dict[str, Any]], preset: Preset, model: str, mode: str, metric: str) -> dict[str, Any]:
    """The learning curve of one cell (mean over seeds per evaluation) and whether it has converged."""
    curve = [mean_and_spread(_values(rows, model, mode, step, metric).values())
             for step in preset.eval_steps_for(model)]
    means = [stat[0] for stat in curve if stat is not None]
    last = curve[-1]
    spread = last[1] if last is not None else float("nan")
    return {"curve": means, "last_spread": spread,
            "converged": last is not None and len(means) == len(curve) and has_converged(means, spread)}


def differences_to_baseline(rows: list[dict[str, Any]], preset: Preset) -> list[dict[str, Any]]:
    """For every mode but ``none``: the paired difference to ``none`` of each image metric at the last step."""
    found = []
    for model in preset.models:
        last = preset.eval_steps_for(model)[-1]
        for mode in preset.modes:
            if mode == BASELINE_MODE or BASELINE_MODE not in preset.modes:
                continue
            for metric, higher in HIGHER_IS_BETTER.items():
                difference = paired_difference(_values(rows, model, mode, last, metric),
                                               _values(rows, model, BASELINE_MODE, last, metric), higher)
                if difference is not None:
                    found.append({"model": model, "mode": mode, "metric": metric, "step": last,
                                  **difference.as_json()})
    return found


def summary_table(rows: list[dict[str, Any]], preset: Preset) -> list[dict[str, Any]]:
    """One line per model and mode: every metric at the last step, mean and spread over seeds, and
    whether its mIoU and MAE curves have converged."""
    table = []
    for model in preset.models:
        last = preset.eval_steps_for(model)[-1]
        for mode in preset.modes:
            cell = [row for row in rows if row["model"] == model and row["mode"] == mode and row["step"] == last]
            table.append({"model": model, "mode": mode, "step": last, "seeds": len(cell),
                          **{metric: mean_and_spread(row[metric] for row in cell) for metric in METRICS},
                          "converged": {metric: convergence(rows, preset, model, mode, metric)["converged"]
                                        for metric in ("miou", "mae")},
                          "term_grad_norms": mean_term_gradient_norms(cell)})
    return table


def mean_term_gradient_norms(cell: list[dict[str, Any]]) -> dict[str, float]:
    """Each generator term's gradient norm, averaged over the seeds of a cell that recorded it."""
    terms = sorted({term for row in cell for term in row.get("term_grad_norms") or {}})
    return {term: float(np.mean([row["term_grad_norms"][term] for row in cell
                                 if term in (row.get("term_grad_norms") or {})])) for term in terms}


def _format(stat: tuple[float, float] | None, digits: int) -> str:
    return "n/a" if stat is None else f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}"


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "**no**"


def markdown_table(table: list[dict[str, Any]], differences: list[dict[str, Any]], references: dict[str, float],
                   preset: Preset) -> str:
    final = ", ".join(f"{model} {preset.steps_for(model)}" for model in preset.models)
    lines = [f"Final step ({final}), mean ± standard deviation over seeds {list(preset.seeds)} "
             f"({preset.world_test} held-out test sketches). Converged: the last two evaluations' means differ by "
             "less than the seed spread at the last one.", "",
             "| model | mode | eval-Seg mIoU ↑ | MAE (levels) ↓ | Fréchet (eval-Seg features) ↓ | seg-gradient norm "
             "| converged (mIoU, MAE) |",
             "|---|---|---:|---:|---:|---:|---|"]
    for line in table:
        converged = line.get("converged", {})
        lines.append(f"| {line['model']} | {line['mode']} | {_format(line['miou'], 3)} | {_format(line['mae'], 1)} | "
                     f"{_format(line['frechet'], 3)} | {_format(line['seg_grad_norm'], 3)} | "
                     f"{_yes_no(converged.get('miou', False))}, {_yes_no(converged.get('mae', False))} |")
    if differences:
        lines += ["", f"Paired differences to `{BASELINE_MODE}` (mode − {BASELINE_MODE}, same seeds), mean and "
                  f"{round(CONFIDENCE * 100)} % percentile-bootstrap interval over the seeds; the verdict comes "
                  "from the interval only (it excludes 0, or not).", "",
                  "| model | mode | Δ mIoU [95 % CI] | Δ MAE [95 % CI] | Δ Fréchet [95 % CI] |", "|---|---|---|---|---|"]
        digits = {"miou": 3, "mae": 1, "frechet": 3}
        cells: dict[tuple[str, str], dict[str, str]] = {}
        for d in differences:
            n = digits[d["metric"]]
            cells.setdefault((d["model"], d["mode"]), {})[d["metric"]] = (
                f"{d['mean']:+.{n}f} [{d['low']:+.{n}f}, {d['high']:+.{n}f}] {d['verdict']}")
        for (model, mode), by_metric in cells.items():
            lines.append(f"| {model} | {mode} | " + " | ".join(by_metric.get(m, "n/a") for m in HIGHER_IS_BETTER) + " |")
    balance = [line for line in table if line.get("term_grad_norms")]
    if balance:
        lines += ["", "Gradient norm of each weighted generator term on the photo generator's weights (mean over "
                  "training and seeds; `--log-seg-grad-norm`): which term drives the updates.", "",
                  "| model | mode | gradient norms |", "|---|---|---|"]
        for line in balance:
            norms = ", ".join(f"{term} {value:.3g}" for term, value in line["term_grad_norms"].items())
            lines.append(f"| {line['model']} | {line['mode']} | {norms} |")
    lines += ["", f"Scored at the colorizers' output size, {references['size']} px. "
              "References: evaluation segmenter on the test photos themselves "
              f"{references['miou_test_photos']:.3f} mIoU, on a constant grey image {references['miou_grey']:.3f}; "
              f"MAE of a constant grey image {references['mae_grey']:.1f}; Fréchet distance between the world's "
              f"train and test photos {references['frechet_train_vs_test_photos']:.3f}."]
    return "\n".join(lines) + "\n"


def write_plots(rows: list[dict[str, Any]], preset: Preset, folder: Path) -> list[Path]:
    """One PNG per metric: the metric against training steps, a line per mode (band: ± one deviation),
    and every seed's own curve thin behind it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, meaning in METRICS.items():
        figure, axes = plt.subplots(1, len(preset.models), figsize=(5 * len(preset.models), 3.6), squeeze=False)
        for axis, model in zip(axes[0], preset.models):
            for number, mode in enumerate(preset.modes):
                colour = f"C{number}"
                points = [(step, mean_and_spread(_values(rows, model, mode, step, metric).values()))
                          for step in preset.eval_steps_for(model)]
                points = [(step, stat) for step, stat in points if stat is not None]
                if not points:
                    continue
                for seed in preset.seeds:
                    own = [(step, _values(rows, model, mode, step, metric).get(seed))
                           for step in preset.eval_steps_for(model)]
                    own = [(step, value) for step, value in own if value is not None]
                    if own:
                        axis.plot(*zip(*own), color=colour, linewidth=0.5, alpha=0.35)
                steps = np.array([step for step, _ in points])
                mean = np.array([stat[0] for _, stat in points])
                spread = np.array([stat[1] for _, stat in points])
                axis.plot(steps, mean, marker="o", label=mode, color=colour)
                axis.fill_between(steps, mean - spread, mean + spread, alpha=0.15, color=colour)
            axis.set_title(f"{model}")
            axis.set_xlabel("training step")
            axis.grid(alpha=0.3)
        axes[0][0].set_ylabel(metric)
        axes[0][-1].legend(title="mode", fontsize=8)
        figure.suptitle(meaning, fontsize=10)
        figure.tight_layout()
        path = folder / f"{metric}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


GRID_SKETCHES = 8  # test sketches shown per model in the final grid


def write_grids(out: Path, world: Path, scorer: Scorer, preset: Preset, folder: Path) -> list[Path]:
    """Per model, a PNG of the same first test sketches: photo, sketch, truth, then each mode's colorization
    at the last step (the first seed), all at the colorizers' size, enlarged 3x without smoothing."""
    from PIL import Image

    from advseg_cli.images import read_rgb, write_png
    from advseg_cli.segmentation.maps import colorize as colour_labels

    from advseg_cli.world.render import WORLD_CLASS_IDS

    side, seed = preset.crop_size, preset.seeds[0]
    photos, labels, _ = scorer.truth_at(side)
    ids = np.asarray(WORLD_CLASS_IDS, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for model in preset.models:
        last = preset.eval_steps_for(model)[-1]
        rows = []
        for index, name in enumerate(scorer.names[:GRID_SKETCHES]):
            sketch = np.asarray(Image.fromarray(read_rgb(world / "testA" / name)).resize((side, side), Image.BICUBIC))
            cells = [photos[index], sketch, colour_labels(ids[labels[index]])]
            for mode in preset.modes:
                result = out / "colorized" / run_name(model, mode, seed) / f"step_{last:07d}" / Path(name).with_suffix(".png")
                cells.append(read_rgb(result) if result.is_file() else np.full((side, side, 3), 255, np.uint8))
            rows.append(np.concatenate(cells, axis=1))
        grid = np.concatenate(rows, axis=0)
        path = folder / f"grid_{model}.png"
        write_png(path, np.asarray(Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST)))
        written.append(path)
    return written


# ------------------------------------------------------------------------------------ the experiment
def _worker_started(threads: int) -> None:
    """Set up one worker process of the pool, once.

    It gets its own process group, so that a Ctrl-C at the terminal reaches only the parent, which passes
    each stop signal on exactly once (one that came both ways would count as a second signal: stop inside the
    step). Between runs a stop signal is only noted (``note_stop_signals``): a worker it killed would break
    the pool; the noted signal keeps the worker from starting another run.
    """
    from advseg_cli.interrupts import note_stop_signals

    os.setpgid(0, 0)
    note_stop_signals()
    torch.set_num_threads(threads)


def _evaluate_in_worker(job: tuple[Path, Path, Path, Path, Preset, str, str, int, str]) -> list[dict[str, Any]]:
    """One run in a worker process (its own Scorer); a stop signal interrupts it as in the parent."""
    from advseg_cli.interrupts import interruptible

    out, world, seg_weights, eval_weights, preset, model, mode, seed, device = job
    with interruptible():
        scorer = Scorer.load(world, eval_weights)
        return evaluate_run(out, world, seg_weights, scorer, preset, model, mode, seed, device)


STOP_GRACE_S = 120.0  # how long the runs may take to finish their step and save it before they are killed


def _pass_on(workers: list[Any], signum: int) -> None:
    """Send ``signum`` to each worker process still there (one that ended meanwhile is no error)."""
    for worker in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signum)


def _stop_pool(futures: list[Any], cause: str | None = None) -> None:
    """Stop every run of the pool after a stop signal (or a run's own interruption, or ``cause``: a run's
    failure, after which the pool's shutdown would otherwise run every queued run before the error shows).

    Runs not handed to a worker yet are cancelled (and a worker that was already handed one refuses it);
    each running run gets the signal, finishes its step and saves it; a second signal is passed on too and
    stops them at once. Returns when every run has ended (or was killed after ``STOP_GRACE_S``); the pool's
    shutdown then joins its workers, so the command never exits leaving one training. A signal to the parent
    alone (``kill``, a scheduler) would otherwise never reach the workers, and the pool would hand them the
    next queued run.
    """
    import concurrent.futures
    import multiprocessing
    import signal
    import sys

    from advseg_cli.interrupts import received_signals, signals_deferred

    try:
        with signals_deferred():  # a second signal right now waits until every worker was told
            # Cancelled here, not by shutdown(cancel_futures=True): a future that the pool cancels is never
            # reported to wait(), which would then sit out its whole timeout.
            running = [future for future in futures if not future.cancel()]
            workers = multiprocessing.active_children()  # the pool's processes: the only children here
            signum = (received_signals() or (signal.SIGTERM,))[-1]
            print(f"\nseg-effect: {cause or signal.Signals(signum).name}: stopping each running run after its "
                  "current step (again: at once)", file=sys.stderr, flush=True)
            _pass_on(workers, signum)
        _, left = concurrent.futures.wait(running, timeout=STOP_GRACE_S)
    except KeyboardInterrupt:  # a second signal (the command's own handler raised it)
        print("seg-effect: stopping the runs at once", file=sys.stderr, flush=True)
        _pass_on(workers, (received_signals() or (signal.SIGTERM,))[-1])
        _, left = concurrent.futures.wait(running, timeout=10)
    if left:
        _pass_on(workers, signal.SIGKILL)


def _longest_first(runs: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """Unpaired models and segmentation modes take longest: start them first so the lanes end together."""
    return sorted(runs, key=lambda run: (run[0] not in ("cyclegan", "cut"), run[1] == BASELINE_MODE))


def _run_all(out: Path, world: Path, seg_weights: Path, eval_weights: Path, scorer: Scorer, preset: Preset,
             device: str, jobs: int, threads: int, say: Any) -> list[dict[str, Any]]:
    """Every (model, mode, seed) run, in ``jobs`` processes when more than one."""
    runs = [(model, mode, seed) for model in preset.models for mode in preset.modes for seed in preset.seeds]
    if jobs <= 1:
        rows: list[dict[str, Any]] = []
        for number, (model, mode, seed) in enumerate(runs, 1):
            say(f"run {number}/{len(runs)}: {run_name(model, mode, seed)} ({preset.steps_for(model)} steps)")
            rows += evaluate_run(out, world, seg_weights, scorer, preset, model, mode, seed, device)
        return rows
    import concurrent.futures
    import multiprocessing

    by_run: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    context = multiprocessing.get_context("spawn")  # no OpenMP state inherited through fork
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_started,
                                                initargs=(threads or 1,)) as pool:
        futures: dict[concurrent.futures.Future[list[dict[str, Any]]], tuple[str, str, int]] = {}
        try:
            for run in _longest_first(runs):
                futures[pool.submit(_evaluate_in_worker, (out, world, seg_weights, eval_weights, preset, *run,
                                                          device))] = run
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                by_run[futures[future]] = future.result()
                say(f"run {done}/{len(runs)} finished: {run_name(*futures[future])}")
        except (KeyboardInterrupt, StageInterrupted):  # a signal here, or in a worker (its run's exception)
            _stop_pool(list(futures))
            raise
        except Exception as exc:  # a run failed: stop with its error now, not after every queued run ran
            _stop_pool(list(futures), cause=f"a run failed ({type(exc).__name__})")
            raise
    return [row for run in runs for row in by_run[run]]


def run_seg_effect(out: Path, preset_name: str = "default", device: str = "cpu", quiet: bool = False,
                   models: tuple[str, ...] | None = None, modes: tuple[str, ...] | None = None,
                   seeds: tuple[int, ...] | None = None, jobs: int = 1, threads: int = 0) -> dict[str, Any]:
    """Run (or continue) the experiment into ``out``; returns what results.json holds.

    ``jobs`` > 1 trains that many runs at once in separate processes of ``threads`` torch threads each
    (default 1): on a CPU the runs are independent and each small network uses one core best.
    """
    if preset_name not in PRESETS:
        raise AdvsegError(f"--preset: unknown {preset_name!r}; choose one of {', '.join(PRESETS)}")
    preset = dataclasses.replace(PRESETS[preset_name], **{k: v for k, v in
                                 {"models": models, "modes": modes, "seeds": seeds}.items() if v})
    from advseg_cli.models.advseg import MODELS

    unknown = [mode for mode in preset.modes if mode not in MODES]
    if unknown:
        raise AdvsegError(f"--modes: unknown {', '.join(unknown)}; choose from {', '.join(MODES)}")
    unknown = [model for model in preset.models if model not in MODELS]
    if unknown:
        raise AdvsegError(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    unpaired = [model for model in preset.models if not MODELS[model][1].paired]
    paired_only = [mode for mode in preset.modes if mode in PAIRED_ONLY_MODES]
    if unpaired and paired_only:
        raise AdvsegError(f"--modes {','.join(paired_only)}: needs the photo of each sketch, which "
                          f"{', '.join(unpaired)} never sees; run it with --models pix2pix (or autopainter)")
    if jobs < 1:
        raise AdvsegError(f"--jobs: at least 1, got {jobs}")
    say = (lambda message: None) if quiet else (lambda message: print(f"seg-effect: {message}", flush=True))
    out.mkdir(parents=True, exist_ok=True)
    record = RunRecord("experiment", {"experiment": "seg-effect", "out": str(out), "preset": preset.name,
                                      "models": list(preset.models), "modes": list(preset.modes),
                                      "seeds": list(preset.seeds), "device": device, "jobs": jobs, "threads": threads})
    record.counts = {"evaluations": finished_evaluations(out, preset),
                     "planned_evaluations": planned_evaluations(preset)}
    record.write(out / FOLDER_RECORD_NAME)
    try:
        results = _run_experiment(out, preset, device, quiet, jobs, threads, say)
    except (StageInterrupted, KeyboardInterrupt):
        raise _record_interruption(record, out, preset) from None
    except Exception as exc:
        record.finish(f"failed: {exc}")
        record.write(out / FOLDER_RECORD_NAME)
        raise
    record.counts["evaluations"] = finished_evaluations(out, preset)
    record.finish()
    record.write(out / FOLDER_RECORD_NAME)
    return results


def _cpu_model() -> str:
    """The CPU's model name on Linux (platform.processor() is empty there)."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def machine_description() -> dict[str, Any]:
    """What the numbers depend on beyond the seed: the same runs on an AVX2 and an AVX-512 CPU differ by as
    much as an effect (oneDNN's kernels round differently; docs/evidence.md), so rows of different machines
    must not be paired."""
    import platform

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "processor": _cpu_model() or platform.processor(),
            "machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


class ExperimentInterrupted(StageInterrupted):
    """The experiment stopped on a signal: every finished evaluation is kept, and the experiment's own
    command continues it (each run from its last checkpoint), not the command of the run it was training."""


def _evaluation_files(out: Path, preset: Preset) -> list[Path]:
    return [out / "evals" / run_name(model, mode, seed) / f"step_{step:07d}.json" for model in preset.models
            for mode in preset.modes for seed in preset.seeds for step in preset.eval_steps_for(model)]


def planned_evaluations(preset: Preset) -> int:
    """How many evaluations the whole experiment makes (every run at each of its evaluation steps)."""
    return len(_evaluation_files(Path(), preset))


def finished_evaluations(out: Path, preset: Preset) -> int:
    """How many of the experiment's evaluations are on disk (what a re-run skips)."""
    return sum(path.exists() for path in _evaluation_files(out, preset))


def _record_interruption(record: RunRecord, out: Path, preset: Preset) -> ExperimentInterrupted:
    """OUT/advseg-run.json says "interrupted", how far it got and how to go on; the exception to raise says
    the same. A second signal waits until the record is written."""
    import signal

    from advseg_cli.interrupts import received_signals, same_command, signals_deferred

    with signals_deferred():
        record.counts["evaluations"] = finished_evaluations(out, preset)
        record.extra["continue_with"] = same_command()
        record.finish("interrupted")
        record.write(out / FOLDER_RECORD_NAME)
    cause = signal.Signals(received_signals()[0]).name if received_signals() else "interrupted"
    return ExperimentInterrupted(
        f"interrupted ({cause}); {record.counts['evaluations']} of {record.counts['planned_evaluations']} "
        f"evaluations are finished and kept in {out / 'evals'}, each run's last checkpoint in {out / 'runs'}; "
        f"continue with: {record.extra['continue_with']}")


def _run_experiment(out: Path, preset: Preset, device: str, quiet: bool, jobs: int, threads: int,
                    say: Any) -> dict[str, Any]:
    """Prepare the world, train and score every run, write results.json, the table and the plots."""
    started = time.perf_counter()
    say(f"preset {preset.name}: world, its Seg, sketches and label maps under {out / 'world'}")
    world, seg_weights, eval_weights = prepare_world(out, preset, device, quiet)
    scorer = Scorer.load(world, eval_weights)
    references = reference_scores(scorer, world, preset.crop_size)
    rows = _run_all(out, world, seg_weights, eval_weights, scorer, preset, device, jobs, threads, say)
    table = summary_table(rows, preset)
    differences = differences_to_baseline(rows, preset)
    curves = [{"model": model, "mode": mode, "metric": metric, **convergence(rows, preset, model, mode, metric)}
              for model in preset.models for mode in preset.modes for metric in HIGHER_IS_BETTER]
    results = {"experiment": "seg-effect", "preset": dataclasses.asdict(preset), "eval_steps": preset.eval_steps,
               "references": references, "metrics": METRICS, "table": table, "differences": differences,
               "learning_curves": curves, "rows": rows, "seg_weights": str(seg_weights),
               "eval_weights": str(eval_weights), "jobs": jobs, "threads": threads,
               "seconds": round(time.perf_counter() - started, 1),
               "train_seconds": round(sum(row["train_seconds"] for row in rows), 1), "machine": machine_description()}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "table.md").write_text(markdown_table(table, differences, references, preset), encoding="utf-8")
    write_plots(rows, preset, out / "plots")
    write_grids(out, world, scorer, preset, out / "plots")
    say(f"done in {results['seconds']} s: {out / 'results.json'}, {out / 'table.md'}, {out / 'plots'}")
    return results
