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
continued, not redone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advseg_cli.errors import AdvsegError

MODES: dict[str, dict[str, str]] = {  # mode name -> model options it sets
    "none": {"advseg": "none"},
    "compat": {"advseg": "both", "seg_grad": "compat"},
    "soft": {"advseg": "both", "seg_grad": "soft"},
    "straight": {"advseg": "both", "seg_grad": "straight"},
}
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

    @property
    def eval_steps(self) -> list[int]:
        return sorted({max(1, round(self.steps * k / self.evaluations)) for k in range(1, self.evaluations + 1)})


PRESETS: dict[str, Preset] = {
    # The test suite's: every code path, minutes on 2 cores; its numbers mean nothing.
    "quick": Preset("quick", world_train=12, world_test=6, world_size=64, seg_photos=160, seg_epochs=6, seg_batch=8,
                    models=("cyclegan", "pix2pix"), modes=tuple(MODES), seeds=(0, 1), steps=4, evaluations=2,
                    load_size=56, crop_size=48, ngf=4, ndf=4, edges_pad=16, own_seg=True),
    # The default: within 90 minutes on a 2-core CPU (docs/evidence.md has the measured time).
    "default": Preset("default", world_train=300, world_test=100, world_size=128, seg_photos=800, seg_epochs=8, seg_batch=16,
                      models=("cyclegan", "pix2pix"), modes=tuple(MODES), seeds=(0, 1, 2), steps=600,
                      evaluations=3, load_size=72, crop_size=64, ngf=16, ndf=16),
    # A GPU machine: larger photos, wider networks, more steps.
    "gpu": Preset("gpu", world_train=1000, world_test=200, world_size=128, seg_photos=800, seg_epochs=8, seg_batch=16,
                  models=("cyclegan", "pix2pix"), modes=tuple(MODES), seeds=(0, 1, 2), steps=20000,
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

    options = {"ngf": preset.ngf, "ndf": preset.ndf, **MODES[mode]}
    uses_seg = options["advseg"] != "none"
    # whole epochs of the world's training photos: the first half at the full rate, then linear decay
    epochs_in_total = max(1, math.ceil(preset.steps / preset.world_train))
    epochs = math.ceil(epochs_in_total / 2)
    return TrainConfig(
        name=run_name(model, mode, seed), sketches=world / "trainA", photos=world / "trainB", model=model,
        model_options=options, runs_dir=runs, segcache=world / "segmaps.h5" if uses_seg else None,
        seg_weights=seg_weights if uses_seg else None, load_size=preset.load_size, crop_size=preset.crop_size,
        epochs=epochs, epochs_decay=epochs_in_total - epochs, seed=seed, device=device,
        workers=0, max_steps=max_steps, log_every=max(1, min(10, preset.steps // 4)), log_seg_grad_norm=uses_seg,
        sample_every=10**9, save_every=max_steps, resume=resume, quiet=True)


def _colorized(scorer: Scorer, folder: Path) -> np.ndarray:
    from advseg_cli.images import read_rgb

    return np.stack([read_rgb(folder / Path(name).with_suffix(".png")) for name in scorer.names])


def seg_grad_norms(run_dir: Path) -> list[tuple[int, float]]:
    """(step, grad/G_seg_norm) rows of a run's metrics.csv (empty without the column)."""
    import csv

    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [(int(row["step"]), float(row["grad/G_seg_norm"])) for row in rows if row.get("grad/G_seg_norm")]


def evaluate_run(out: Path, world: Path, seg_weights: Path, scorer: Scorer, preset: Preset, model: str, mode: str,
                 seed: int, device: str) -> list[dict[str, Any]]:
    """Train one run in segments and score it at each evaluation step (resumable per evaluation)."""
    from advseg_cli.colorize import ColorizeConfig, colorize_folder
    from advseg_cli.training.loop import train

    name = run_name(model, mode, seed)
    rows = []
    for step in preset.eval_steps:
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
               "seg_grad_norm": float(np.mean(norms)) if norms else None}
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------ tables and plots
def mean_and_spread(values: Iterable[float | None]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (ddof 1; 0 for a single value) of the values that exist."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    return float(np.mean(present)), float(np.std(present, ddof=1)) if len(present) > 1 else 0.0


def summary_table(rows: list[dict[str, Any]], preset: Preset) -> list[dict[str, Any]]:
    """One line per model and mode: every metric at the last step, mean and spread over seeds."""
    last = preset.eval_steps[-1]
    table = []
    for model in preset.models:
        for mode in preset.modes:
            cell = [row for row in rows if row["model"] == model and row["mode"] == mode and row["step"] == last]
            table.append({"model": model, "mode": mode, "seeds": len(cell),
                          **{metric: mean_and_spread(row[metric] for row in cell) for metric in METRICS}})
    return table


def _format(stat: tuple[float, float] | None, digits: int) -> str:
    return "n/a" if stat is None else f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}"


def markdown_table(table: list[dict[str, Any]], references: dict[str, float], preset: Preset) -> str:
    lines = [f"Final step {preset.eval_steps[-1]}, mean ± standard deviation over seeds {list(preset.seeds)} "
             f"({preset.world_test} held-out test sketches).", "",
             "| model | mode | eval-Seg mIoU ↑ | MAE (levels) ↓ | Fréchet (eval-Seg features) ↓ | seg-gradient norm |",
             "|---|---|---:|---:|---:|---:|"]
    for line in table:
        lines.append(f"| {line['model']} | {line['mode']} | {_format(line['miou'], 3)} | {_format(line['mae'], 1)} | "
                     f"{_format(line['frechet'], 3)} | {_format(line['seg_grad_norm'], 3)} |")
    lines += ["", f"Scored at the colorizers' output size, {references['size']} px. "
              "References: evaluation segmenter on the test photos themselves "
              f"{references['miou_test_photos']:.3f} mIoU, on a constant grey image {references['miou_grey']:.3f}; "
              f"MAE of a constant grey image {references['mae_grey']:.1f}; Fréchet distance between the world's "
              f"train and test photos {references['frechet_train_vs_test_photos']:.3f}."]
    return "\n".join(lines) + "\n"


def write_plots(rows: list[dict[str, Any]], preset: Preset, folder: Path) -> list[Path]:
    """One PNG per metric: the metric against training steps, a line per mode (band: ± one deviation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, meaning in METRICS.items():
        figure, axes = plt.subplots(1, len(preset.models), figsize=(5 * len(preset.models), 3.6), squeeze=False)
        for axis, model in zip(axes[0], preset.models):
            for mode in preset.modes:
                points = [(step, mean_and_spread(row[metric] for row in rows if row["model"] == model
                                                 and row["mode"] == mode and row["step"] == step))
                          for step in preset.eval_steps]
                points = [(step, stat) for step, stat in points if stat is not None]
                if not points:
                    continue
                steps = np.array([step for step, _ in points])
                mean = np.array([stat[0] for _, stat in points])
                spread = np.array([stat[1] for _, stat in points])
                axis.plot(steps, mean, marker="o", label=mode)
                axis.fill_between(steps, mean - spread, mean + spread, alpha=0.2)
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


# ------------------------------------------------------------------------------------ the experiment
def run_seg_effect(out: Path, preset_name: str = "default", device: str = "cpu", quiet: bool = False,
                   models: tuple[str, ...] | None = None, modes: tuple[str, ...] | None = None,
                   seeds: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Run (or continue) the experiment into ``out``; returns what results.json holds."""
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
    started = time.perf_counter()
    say = (lambda message: None) if quiet else (lambda message: print(f"seg-effect: {message}", flush=True))
    out.mkdir(parents=True, exist_ok=True)
    say(f"preset {preset.name}: world, its Seg, sketches and label maps under {out / 'world'}")
    world, seg_weights, eval_weights = prepare_world(out, preset, device, quiet)
    scorer = Scorer.load(world, eval_weights)
    references = reference_scores(scorer, world, preset.crop_size)
    rows: list[dict[str, Any]] = []
    runs = [(model, mode, seed) for model in preset.models for mode in preset.modes for seed in preset.seeds]
    for number, (model, mode, seed) in enumerate(runs, 1):
        say(f"run {number}/{len(runs)}: {run_name(model, mode, seed)} ({preset.steps} steps)")
        rows += evaluate_run(out, world, seg_weights, scorer, preset, model, mode, seed, device)
    table = summary_table(rows, preset)
    results = {"experiment": "seg-effect", "preset": dataclasses.asdict(preset), "eval_steps": preset.eval_steps,
               "references": references, "metrics": METRICS, "table": table, "rows": rows,
               "seg_weights": str(seg_weights), "eval_weights": str(eval_weights),
               "seconds": round(time.perf_counter() - started, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "table.md").write_text(markdown_table(table, references, preset), encoding="utf-8")
    write_plots(rows, preset, out / "plots")
    say(f"done in {results['seconds']} s: {out / 'results.json'}, {out / 'table.md'}, {out / 'plots'}")
    return results
