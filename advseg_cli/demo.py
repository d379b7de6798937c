"""``make demo``: the whole chain, offline, on a CPU, in minutes, on photos that scikit-image ships,
and the adversarial segmentation loss itself in the shapes world.

Part 1, scikit-image photos: edges (real HED weights) -> segcache (real Seg weights, when present) -> a
short CycleGAN training (+ AdvSegLoss when the segmentation weights are there; the baseline otherwise)
-> colorize -> FID (real Inception weights, when present).

Part 2, the shapes world (advseg_cli.world), where a real Seg exists offline because the
project trains it (kept in ``$ADVSEG_HOME`` and reused): prepare (render -> seg -> edges -> segcache)
-> Pix2Pix baseline and Pix2Pix ``--advseg both`` -> colorize the held-out test sketches -> Seg's map
of each colorized image. ``index.html`` shows both parts side by side.

Real weights only: where segmentation or Inception weights cannot be had offline, the demo says in one
line what is missing and how to get it, and runs the rest of the chain. It never substitutes random
weights. The photos: astronaut and rocket (NASA, public domain), chelsea, coffee and the motorcycle
pair (CC0), as listed in scikit-image's data README.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

from advseg_cli.errors import AdvsegError

DEMO_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right")
_PHOTO_FILES = {"astronaut": "astronaut.png", "chelsea": "chelsea.png", "coffee": "coffee.png",
                "rocket": "rocket.jpg", "motorcycle_left": "motorcycle_left.png",
                "motorcycle_right": "motorcycle_right.png", "hubble_deep_field": "hubble_deep_field.jpg"}


def sample_photo(name: str) -> np.ndarray:
    """A color photo that the scikit-image wheel ships (no download), as HxWx3 uint8."""
    with Image.open(Path(skimage.data.data_dir) / _PHOTO_FILES[name]) as image:
        return np.asarray(image.convert("RGB"))


@dataclasses.dataclass
class StageNote:
    stage: str
    status: str  # ran | skipped
    detail: str


def write_demo_photos(folder: Path, short_side: int = 256) -> list[Path]:
    """The demo's photos, resized so HED on a CPU takes seconds, as PNG (lossless)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in DEMO_PHOTOS:
        target = folder / f"{name}.png"
        if not target.exists():
            image = Image.fromarray(sample_photo(name))
            scale = short_side / min(image.size)
            image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS).save(target)
        written.append(target)
    return written


_CLOCK_START = time.perf_counter()


def _say(message: str) -> None:
    """Every line carries the seconds since the demo began, so a user sees where the minutes go."""
    print(f"demo: [{time.perf_counter() - _CLOCK_START:6.1f} s] {message}", flush=True)


def run_edges(photos: Path, sketches: Path) -> StageNote:
    from advseg_cli.edges import EdgesConfig, extract_edges

    summary = extract_edges(photos, sketches, EdgesConfig(size=64, workers=0, quiet=True))
    return StageNote("edges", "ran", f"{summary.done + summary.skipped} HED sketches (real BSDS500 weights) at 64 px")


def run_segcache(photos: Path, cache: Path) -> StageNote:
    from advseg_cli.segcache import SegcacheConfig, build_segcache

    try:
        build_segcache(photos, cache, SegcacheConfig(backend="mask2former", square=70, workers=0, quiet=True))
    except AdvsegError as exc:
        return StageNote("segcache", "skipped", f"no segmentation weights offline: {exc}")
    return StageNote("segcache", "ran", f"Mask2Former label maps in {cache.name}")


def run_training(data: Path, runs: Path, segcache: Path | None, steps: int) -> tuple[StageNote, Path]:
    from advseg_cli.training.loop import TrainConfig, Trainer

    advseg = "both" if segcache is not None else "none"
    run_dir = runs / f"cyclegan-{advseg}"
    config = TrainConfig(name=run_dir.name, sketches=data / "trainA", photos=data / "trainB", runs_dir=runs,
                         model="cyclegan", model_options={"ngf": 16, "ndf": 16, "advseg": advseg},
                         segcache=segcache, load_size=70, crop_size=64, epochs=steps, epochs_decay=0,
                         max_steps=steps, workers=0, log_every=10, sample_every=max(1, steps // 4),
                         save_every=steps, quiet=False, device="cpu",
                         resume=(run_dir / "checkpoints" / "latest.pt").exists())
    trainer = Trainer(config)
    summary = trainer.run() if trainer.position.step < steps else None
    what = "CycleGAN + AdvSegLoss (both)" if segcache else "CycleGAN baseline (no segmentation weights)"
    steps_done = summary.steps if summary else steps
    return StageNote("train", "ran", f"{what}, {steps_done} steps at 64 px, ngf 16"), run_dir


def run_colorize(run_dir: Path, sketches: Path, out: Path) -> StageNote:
    from advseg_cli.colorize import ColorizeConfig, colorize_folder

    summary = colorize_folder(run_dir, sketches, out, ColorizeConfig(grid=True, quiet=True, device="cpu"))
    return StageNote("colorize", "ran", f"{summary.done + summary.skipped} colorized sketches")


def run_fid(real: Path, fake: Path) -> tuple[StageNote, float | None]:
    from advseg_cli.fid import FidConfig, compute_fid

    try:
        result = compute_fid(real, fake, FidConfig(device="cpu", quiet=True, cache=False))
    except AdvsegError as exc:
        return StageNote("fid", "skipped", f"no Inception weights offline: {exc}"), None
    return StageNote("fid", "ran", f"FID {result.fid:.2f} on {len(DEMO_PHOTOS)} images (too few to mean much)"), result.fid


def _cell(path: Path, root: Path, caption: str) -> str:
    if not path.exists():
        return f"<td class=missing>{html.escape(caption)}: not made</td>"
    rel = html.escape(path.relative_to(root).as_posix())
    return f'<td><img src="{rel}" alt="{html.escape(caption)}"><br>{html.escape(caption)}</td>'


# ------------------------------------------------------------------------------ part 2: the shapes world
WORLD_TRAIN, WORLD_TEST, WORLD_STEPS = 60, 8, 400  # small: HED on 68 photos and two short trainings


def run_world(out: Path, steps: int = WORLD_STEPS) -> tuple[list[StageNote], list[str]]:
    """The chain in the shapes world with its trained Seg: notes, and the names of the runs made."""
    from advseg_cli.colorize import ColorizeConfig, colorize_folder
    from advseg_cli.datasets.prepare import PrepareConfig, prepare_dataset
    from advseg_cli.edges import EdgesConfig
    from advseg_cli.segcache import SegcacheConfig
    from advseg_cli.training.loop import TrainConfig, Trainer
    from advseg_cli.world.render import WorldConfig

    world = out / "world" / "shapes"
    _say(f"world 1/4 prepare: render {WORLD_TRAIN}+{WORLD_TEST} photos with ground truth, train (or reuse) its Seg, "
         "HED sketches, Seg's label maps")
    prepare_dataset("shapes", out / "world", PrepareConfig(
        world=WorldConfig(seed=0, train=WORLD_TRAIN, test=WORLD_TEST, size=128), quiet=True,
        seg_roles=("seg",),  # the evaluation segmenter scores experiments; the demo shows the training Seg's maps
        edges=EdgesConfig(size=0, pad=32, device="cpu", workers=0, quiet=True),
        segcache=SegcacheConfig(backend="shapes", square=72, device="cpu", quiet=True)))
    notes = [StageNote("world: prepare", "ran", f"{WORLD_TRAIN} training + {WORLD_TEST} test photos with exact "
                       "ground truth, HED sketches, label maps by the trained shapes Seg")]
    runs = []
    for advseg in ("none", "both"):
        name = f"pix2pix-{advseg}"
        _say(f"world {2 if advseg == 'none' else 3}/4 train: Pix2Pix " + ("baseline" if advseg == "none" else
             "+ AdvSegLoss (both, soft)") + f", {steps} steps at 64 px")
        config = TrainConfig(name=name, sketches=world / "trainA", photos=world / "trainB", runs_dir=out / "world-runs",
                             model="pix2pix", model_options={"ngf": 16, "ndf": 16, "advseg": advseg},
                             segcache=world / "segmaps.h5" if advseg != "none" else None, load_size=72, crop_size=64,
                             epochs=steps, epochs_decay=0, max_steps=steps, workers=0, log_every=20,
                             sample_every=steps, save_every=steps, quiet=False, device="cpu",
                             resume=(out / "world-runs" / name / "checkpoints" / "latest.pt").exists())
        trainer = Trainer(config)
        if trainer.position.step < steps:
            trainer.run()
        colorize_folder(out / "world-runs" / name, world / "testA", out / "world-colorized" / name,
                        ColorizeConfig(device="cpu", quiet=True))
        runs.append(name)
    _say("world 4/4 maps: the trained Seg's label map of every colorized test image")
    _world_maps(out, runs)
    notes.append(StageNote("world: train + colorize", "ran", f"Pix2Pix baseline and Pix2Pix + AdvSegLoss (both), "
                           f"{steps} steps each at 64 px, ngf 16; {WORLD_TEST} held-out test sketches colorized"))
    return notes, runs


def _world_maps(out: Path, runs: list[str]) -> None:
    """PNG previews of the shapes Seg's map of each colorized image (what its discriminators judge)."""
    import torch

    from advseg_cli.images import list_images, read_rgb
    from advseg_cli.segmentation import build_segmenter
    from advseg_cli.segmentation.base import uint8_to_model_range
    from advseg_cli.segmentation.maps import colorize

    seg = build_segmenter("shapes", None, torch.device("cpu"))
    for name in runs:
        folder = out / "world-colorized" / name
        target = out / "world-maps" / name
        target.mkdir(parents=True, exist_ok=True)
        for relative in list_images(folder):
            labels = seg.hard_labels(uint8_to_model_range(read_rgb(folder / relative).copy()))[0].numpy()
            Image.fromarray(colorize(labels)).save(target / relative.with_suffix(".png").name)


def _world_rows(out: Path, runs: list[str]) -> str:
    world = out / "world" / "shapes"
    rows = []
    for photo in sorted((world / "testB").glob("*.png")):
        cells = [_cell(photo, out, "photo"), _cell(world / "testA" / photo.name, out, "HED sketch"),
                 _cell(world / "truth" / "previews" / "testB" / photo.name, out, "ground truth map")]
        for name, caption in zip(runs, ("baseline", "AdvSegLoss (both)")):
            cells.append(_cell(out / "world-colorized" / name / photo.name, out, f"{caption} colorized"))
            cells.append(_cell(out / "world-maps" / name / photo.name, out, f"Seg's map of the {caption}"))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(rows)


def write_index(out: Path, notes: list[StageNote], run_dir: Path, fid: float | None,
                world_runs: list[str] | None = None) -> Path:
    """One page: each photo beside its sketch, its label map and its colorization; then the notes."""
    rows = []
    for name in DEMO_PHOTOS:
        rows.append("<tr>" + "".join([
            _cell(out / "data" / "trainB" / f"{name}.png", out, "photo"),
            _cell(out / "data" / "trainA" / f"{name}.png", out, "HED sketch"),
            _cell(out / "segmaps-preview" / f"{name}.png", out, "label map"),
            _cell(out / "colorized" / f"{name}.png", out, "colorized"),
        ]) + "</tr>")
    samples = sorted((run_dir / "samples").glob("*.png"))
    sample_html = "".join(f'<figure><img class=grid src="{html.escape(p.relative_to(out).as_posix())}">'
                          f"<figcaption>{html.escape(p.stem)}</figcaption></figure>" for p in samples[-2:])
    notes_html = "".join(f"<li><b>{html.escape(n.stage)}</b> ({html.escape(n.status)}): {html.escape(n.detail)}</li>"
                         for n in notes)
    world_html = "" if not world_runs else f"""<h2>The adversarial segmentation loss in the shapes world</h2>
<p>Held-out test sketches of the shapes world (things are told apart by shape, stuff by texture; colours are
class-specific), colorized by a Pix2Pix baseline and by Pix2Pix + AdvSegLoss (both discriminators, soft maps), each
followed by the trained shapes Seg's map of the colorized image; compare them with the ground truth map.
Trained for minutes on a CPU: a demonstration, not a measurement (that is <code>make evidence</code>).</p>
<table>{_world_rows(out, world_runs)}</table>"""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>advseg demo</title>
<style>body{{font-family:sans-serif;margin:2em}} img{{width:160px;image-rendering:pixelated;border:1px solid #ccc}}
img.grid{{width:auto;height:160px}} td{{text-align:center;padding:4px;font-size:13px}} .missing{{color:#a00}}
figure{{display:inline-block;margin:4px}}</style></head><body>
<h1>advseg demo</h1>
<p>Trained on the six photos below and colorizing their own sketches: a demonstration of the chain,
not an evaluation. FID: {"%.2f" % fid if fid is not None else "not computed (see notes)"}.</p>
<ul>{notes_html}</ul>
<table>{''.join(rows)}</table>
<h2>Training samples (sketch | generated | photo)</h2>{sample_html}
{world_html}
</body></html>"""
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def preview_segmaps(cache: Path, photos: Path, out: Path) -> None:
    from advseg_cli.segcache import SegmentationCache
    from advseg_cli.segmentation.maps import colorize

    out.mkdir(parents=True, exist_ok=True)
    with SegmentationCache(cache) as maps:
        for key in maps.keys():
            Image.fromarray(colorize(maps.labels(key))).save(out / Path(key).with_suffix(".png").name)


def run_demo(out: Path, steps: int = 200) -> dict[str, object]:
    """Run every stage that real offline weights allow; returns (and writes) a summary."""
    global _CLOCK_START
    os.environ.setdefault("ADVSEG_OFFLINE", "1")
    started = _CLOCK_START = time.perf_counter()
    data, notes = out / "data", []
    write_demo_photos(data / "trainB")
    _say("1/5 edges: HED sketches of the photos")
    notes.append(run_edges(data / "trainB", data / "trainA"))
    _say("2/5 segcache: panoptic label maps of the photos")
    seg_note = run_segcache(data / "trainB", data / "segmaps.h5")
    notes.append(seg_note)
    if seg_note.status == "ran":
        preview_segmaps(data / "segmaps.h5", data / "trainB", out / "segmaps-preview")
    else:
        _say(f"segcache skipped — {seg_note.detail}")
    _say("3/5 train: a short CycleGAN run")
    note, run_dir = run_training(data, out / "runs", data / "segmaps.h5" if seg_note.status == "ran" else None, steps)
    notes.append(note)
    _say("4/5 colorize: the sketches with the trained generator")
    notes.append(run_colorize(run_dir, data / "trainA", out / "colorized"))
    _say("5/5 fid: colorized vs real photos")
    fid_note, fid = run_fid(data / "trainB", out / "colorized")
    notes.append(fid_note)
    if fid is None:
        _say(f"fid skipped — {fid_note.detail}")
    _say("the shapes world: the AdvSegLoss with a real, trained Seg")
    world_notes, world_runs = run_world(out)
    notes.extend(world_notes)
    index = write_index(out, notes, run_dir, fid, world_runs)
    summary = {"seconds": round(time.perf_counter() - started, 1), "fid": fid,
               "stages": [dataclasses.asdict(n) for n in notes],
               "outputs": {"sketches": str(data / "trainA"), "segmaps": str(data / "segmaps.h5"),
                           "run": str(run_dir), "samples": str(run_dir / "samples"),
                           "colorized": str(out / "colorized"), "world": str(out / "world" / "shapes"),
                           "world colorized": str(out / "world-colorized"), "scores": str(out / "demo-summary.json"),
                           "index": str(index)}}
    (out / "demo-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for key, value in summary["outputs"].items():
        _say(f"{key:>15}: {value}" + ("" if Path(value).exists() else "  (not made: see the notes above)"))
    _say(f"done in {summary['seconds']} s; open {index}")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "demo-out")
    try:
        run_demo(out)
    except AdvsegError as exc:
        print(f"advseg demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
