"""The ``shapes`` world: procedural photos whose segmentation is known exactly.

Why it exists: no panoptic Seg weights can be had offline, so the adversarial segmentation loss could
never be seen doing anything. Here segmentation has a ground truth, a Seg can be trained on it in
minutes (:mod:`advseg_cli.world.seg`), and what the loss does can be measured.

A photo is a "stuff" background, a top region (sky with a vertical gradient, or a brick wall) over a
bottom region (grass with dark blades, sand with pebbles, or sea with waves: textures a sketch keeps, so
a sketch tells the five apart), with one or two "thing" objects on it, apart from each other, each with a
dark rim inside its outline so that its edge is found on any background. A thing's class is tied to its **shape** and its colour is class-specific with some variation,
so a sketch (which has no colour) tells the right colours only through what the object is. Class ids
are those of the 135-class layout (things from 1..80, stuff from 82..134), so maps, discriminators and
caches work unchanged. Photos are drawn at twice their size and box-filtered down, so edges are
anti-aliased; the label of a pixel is the majority label of its four sub-pixels.

Everything is a pure function of the scene, and scenes are a pure function of ``(seed, split, index)``:
the same ``--seed`` gives byte-identical photos and ground truth.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from advseg_cli.segmentation.classes import CLASS_NAMES

WORLD_VERSION = 2  # bump when rendering changes: Seg weights record the version they were trained on
# v2: outlined, larger, separated objects (1-2); grass blades and sand pebbles that a sketch shows (v1's
# sketches lost small objects on brick and could not tell grass from sand)


@dataclasses.dataclass(frozen=True)
class ThingClass:
    """A thing: its shape decides its class; its colour is the class's, varied per object."""

    name: str  # a COCO thing name of the 135 layout
    shape: str  # circle | triangle | square | cross
    rgb: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class StuffClass:
    """A background region with a texture of its own."""

    name: str  # a COCO panoptic stuff name of the 135 layout
    region: str  # top | bottom
    rgb: tuple[int, int, int]


THINGS: tuple[ThingClass, ...] = (
    ThingClass("sports ball", "circle", (236, 128, 32)),
    ThingClass("kite", "triangle", (205, 30, 60)),
    ThingClass("tv", "square", (48, 44, 70)),
    ThingClass("airplane", "cross", (240, 214, 40)),
)
STUFF: tuple[StuffClass, ...] = (
    StuffClass("sky-other-merged", "top", (90, 150, 225)),
    StuffClass("wall-brick", "top", (168, 84, 62)),
    StuffClass("grass-merged", "bottom", (62, 140, 52)),
    StuffClass("sand", "bottom", (218, 192, 134)),
    StuffClass("sea", "bottom", (28, 84, 150)),
)


def class_id(name: str) -> int:
    """The 135-layout id of a class name."""
    return CLASS_NAMES.index(name)


WORLD_CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in THINGS) + tuple(s.name for s in STUFF)
WORLD_CLASS_IDS: tuple[int, ...] = tuple(class_id(name) for name in WORLD_CLASS_NAMES)  # world index -> 135 id
TOP_STUFF = tuple(s for s in STUFF if s.region == "top")
BOTTOM_STUFF = tuple(s for s in STUFF if s.region == "bottom")


@dataclasses.dataclass(frozen=True)
class Thing:
    """One object of a scene, in units of the photo's side (0..1)."""

    kind: str  # a ThingClass name
    x: float  # centre
    y: float
    radius: float  # half the object's extent
    angle: float  # rotation in radians (triangle, square, cross)
    rgb: tuple[int, int, int]  # this object's colour (the class colour, varied)


@dataclasses.dataclass(frozen=True)
class Scene:
    """Everything needed to draw one photo and its label map."""

    size: int  # output side in pixels
    horizon: float  # where the top region ends (0..1 from the top)
    top: str  # a top StuffClass name
    bottom: str  # a bottom StuffClass name
    top_rgb: tuple[int, int, int]
    bottom_rgb: tuple[int, int, int]
    things: tuple[Thing, ...]
    texture_seed: int  # seeds the noise textures


def _vary(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)  # type: ignore[return-value]


THING_RADIUS = (0.15, 0.24)  # half extents, in units of the side: at a 48 px crop still 7-11 px
THING_CENTRE = (0.22, 0.78)  # centres keep most of every object inside the photo and inside a training crop
THING_SEPARATION = 0.8  # centres at least this times the sum of the radii apart: shapes stay readable
PLACEMENT_TRIES = 20  # draws of a position before an object is left out


def _place_thing(cls: ThingClass, placed: list[Thing], rng: np.random.Generator) -> Thing | None:
    """An object of ``cls`` away from those already placed, or None when no draw found room.

    Every draw is made whether or not it is used, so a scene stays a pure function of its generator.
    """
    for _ in range(PLACEMENT_TRIES):
        radius = float(rng.uniform(*THING_RADIUS))
        x, y = (float(v) for v in rng.uniform(*THING_CENTRE, size=2))
        if all(math.hypot(x - t.x, y - t.y) > THING_SEPARATION * (radius + t.radius) for t in placed):
            return Thing(cls.name, x, y, radius, float(rng.uniform(-0.3, 0.3)), _vary(cls.rgb, rng, 18))
    return None


def random_scene(rng: np.random.Generator, size: int) -> Scene:
    """A scene drawn from the world's distribution: one or two outlined objects, apart."""
    top, bottom = TOP_STUFF[rng.integers(len(TOP_STUFF))], BOTTOM_STUFF[rng.integers(len(BOTTOM_STUFF))]
    things: list[Thing] = []
    for _ in range(int(rng.integers(1, 3))):
        thing = _place_thing(THINGS[rng.integers(len(THINGS))], things, rng)
        if thing is not None:
            things.append(thing)
    return Scene(size, float(rng.uniform(0.35, 0.65)), top.name, bottom.name, _vary(top.rgb, rng, 14),
                 _vary(bottom.rgb, rng, 14), tuple(things), int(rng.integers(2**31)))


STREAMS = {"train": 0, "test": 1, "seg-train": 2, "seg-val": 3}  # independent random streams of one seed


def scene_for(seed: int, split: str, index: int, size: int) -> Scene:
    """The ``index``-th scene of ``split``: independent of how many others are drawn."""
    stream = STREAMS[split]
    return random_scene(np.random.default_rng([seed, stream, index]), size)


# ------------------------------------------------------------------------------------ drawing
def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in units of the side, [side, side] each (y down, x right)."""
    centres = (np.arange(side, dtype=np.float64) + 0.5) / side
    return np.meshgrid(centres, centres, indexing="ij")


def thing_mask(thing: Thing, shape: str, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Boolean mask of a thing on a coordinate grid."""
    dy, dx = ys - thing.y, xs - thing.x
    cos, sin = math.cos(thing.angle), math.sin(thing.angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # object frame
    r = thing.radius
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
    if shape == "cross":
        arm = 0.3 * r
        return ((np.abs(u) <= r) & (np.abs(v) <= arm)) | ((np.abs(u) <= arm) & (np.abs(v) <= r))
    if shape == "triangle":  # apex up in the object frame (v grows downwards)
        corners = ((0.0, -r), (0.866 * r, 0.5 * r), (-0.866 * r, 0.5 * r))
        inside = np.ones_like(u, dtype=bool)
        for (au, av), (bu, bv) in zip(corners, corners[1:] + corners[:1]):
            inside &= (bu - au) * (v - av) - (bv - av) * (u - au) >= 0  # left of every edge, clockwise
        return inside
    raise ValueError(f"unknown shape {shape!r}")


def _smooth_noise(rng: np.random.Generator, side: int, cell: int) -> np.ndarray:
    """Value noise in [-1, 1]: random values on a coarse grid, bilinearly interpolated."""
    coarse = rng.uniform(-1, 1, (side // cell + 2, side // cell + 2))
    position = np.arange(side) / cell
    i0, frac = np.floor(position).astype(int), position - np.floor(position)
    rows = coarse[i0] * (1 - frac)[:, None] + coarse[i0 + 1] * frac[:, None]
    return rows[:, i0] * (1 - frac)[None, :] + rows[:, i0 + 1] * frac[None, :]


def _texture(name: str, rgb: tuple[int, int, int], rng: np.random.Generator, ys: np.ndarray,
             xs: np.ndarray) -> np.ndarray:
    """[side, side, 3] float colours of a stuff class over the whole canvas (masked by the caller)."""
    side = ys.shape[0]
    base = np.array(rgb, dtype=np.float64)
    if name == "sky-other-merged":  # darker at the top, paler towards the horizon
        light = (0.55 + 0.6 * ys)[..., None]
        return np.clip(base * light + (1 - light) * 40 + 30 * ys[..., None], 0, 255)
    if name == "wall-brick":  # bricks with light mortar lines, alternate rows offset
        rows = ys * 10.0
        offset = (np.floor(rows) % 2) * 0.5
        mortar = (rows % 1 < 0.14) | (((xs * 5.0 + offset) % 1) < 0.07)
        shade = 1 + 0.08 * rng.uniform(-1, 1, (side, side))
        colour = base[None, None, :] * shade[..., None]
        colour[mortar] = (205, 200, 190)
        return colour
    if name == "grass-merged":  # dark vertical blades in 40 columns, each column's blades at its own phase
        columns = GRASS_COLUMNS
        phase = rng.uniform(0, 1, columns)[np.floor(xs * columns).astype(int) % columns]
        blade = (np.abs((xs * columns) % 1 - 0.5) < 0.12) & (((ys * 6 + phase) % 1) < 0.6)
        colour = base * (1 + 0.08 * rng.uniform(-1, 1, (side, side)))[..., None]
        colour[blade] *= 0.45
        return np.clip(colour, 0, 255)
    if name == "sand":  # fine grain with dark pebbles large enough to survive in a sketch
        colour = base * (1 + 0.05 * rng.uniform(-1, 1, (side, side)))[..., None]
        for cy, cx in rng.uniform(0, 1, (SAND_PEBBLES, 2)):
            colour[(ys - cy) ** 2 + (xs - cx) ** 2 < PEBBLE_RADIUS ** 2] *= 0.5
        return np.clip(colour, 0, 255)
    if name == "sea":  # horizontal waves, lighter crests
        wave = np.sin(2 * np.pi * (ys * 14 + 0.3 * _smooth_noise(rng, side, max(1, side // 6))))
        crest = (wave > 0.75)[..., None]
        return np.clip(base * (1 + 0.15 * wave)[..., None] + crest * 70, 0, 255)
    raise ValueError(f"unknown stuff {name!r}")


GRASS_COLUMNS = 40  # blade columns across the side
SAND_PEBBLES = 70  # pebbles per canvas
PEBBLE_RADIUS = 0.018  # in units of the side (about 2 px at 128 px)
OUTLINE = 0.012  # width of an object's dark rim, in units of the side: an edge HED finds on any background
OUTLINE_RGB = 25.0


def _erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` shrunk by ``pixels`` (4-neighbour erosion, repeated); outside the canvas counts as outside."""
    inner = mask.copy()
    for _ in range(pixels):
        padded = np.pad(inner, 1, constant_values=False)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inner


def _thing_colour(thing: Thing, ys: np.ndarray) -> np.ndarray:
    """A thing's colour with soft shading: lighter at its top, as if lit from above."""
    shade = 1.12 - 0.5 * np.clip((ys - (thing.y - thing.radius)) / (2 * thing.radius), 0, 1)
    return np.clip(np.array(thing.rgb, dtype=np.float64) * shade[..., None], 0, 255)


def _majority_downsample(labels: np.ndarray) -> np.ndarray:
    """[2H, 2W] labels -> [H, W]: the most frequent of each 2x2 block (ties: the top-left's order)."""
    blocks = np.stack([labels[0::2, 0::2], labels[0::2, 1::2], labels[1::2, 0::2], labels[1::2, 1::2]])
    votes = np.stack([(blocks == candidate).sum(0) for candidate in blocks])
    return np.take_along_axis(blocks, votes.argmax(0)[None], 0)[0]


def render_scene(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """A scene -> (photo [size, size, 3] uint8 RGB, labels [size, size] uint8 in the 135 layout)."""
    side = 2 * scene.size
    ys, xs = _grid(side)
    rng = np.random.default_rng(scene.texture_seed)
    top = ys < scene.horizon
    photo = np.where(top[..., None], _texture(scene.top, scene.top_rgb, rng, ys, xs),
                     _texture(scene.bottom, scene.bottom_rgb, rng, ys, xs))
    labels = np.where(top, class_id(scene.top), class_id(scene.bottom)).astype(np.uint8)
    shapes = {cls.name: cls.shape for cls in THINGS}
    rim = max(1, round(OUTLINE * side))
    for thing in scene.things:
        mask = thing_mask(thing, shapes[thing.kind], ys, xs)
        photo[mask] = OUTLINE_RGB  # the rim: the object's own pixels, drawn dark, inside its outline
        inner = _erode(mask, rim)
        photo[inner] = _thing_colour(thing, ys)[inner]
        labels[mask] = class_id(thing.kind)
    small = photo.reshape(scene.size, 2, scene.size, 2, 3).mean(axis=(1, 3))
    return np.clip(np.round(small), 0, 255).astype(np.uint8), _majority_downsample(labels)


# ------------------------------------------------------------------------------------ the dataset on disk
@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """How many photos of which size; the record stores it."""

    seed: int = 0
    train: int = 1000
    test: int = 200
    size: int = 128

    def validate(self) -> WorldConfig:
        from advseg_cli.errors import AdvsegError

        if self.train < 1 or self.test < 1:
            raise AdvsegError("--world-train / --world-test: at least one photo each")
        if not 32 <= self.size <= 1024 or self.size % 4:
            raise AdvsegError(f"--world-size: a multiple of 4 between 32 and 1024, got {self.size}")
        return self


# ROOT/shapes/truth/: {trainB,testB}.h5 (segcache format), labels/{trainB,testB}/*.png (8-bit PNGs whose values
# are the 135-layout ids: byte-identical for a seed, unlike HDF5 files, which carry creation times) and
# previews/{trainB,testB}/*.png (the same in colour, advseg_cli.segmentation.maps.colorize)
TRUTH_FOLDER = "truth"


def photo_name(index: int) -> str:
    return f"{index:05d}.png"


def truth_metadata() -> object:
    """Segcache attributes of the ground truth: 'backend' ground-truth, the world's version as model."""
    from advseg_cli.segcache import CacheMetadata, ResizePolicy

    return CacheMetadata(backend="ground-truth", model_name=f"shapes-world-v{WORLD_VERSION}", weights_sha256="",
                         thresholds={}, resize_policy=ResizePolicy("native", 0, 0))


def _truth_files(folder: Path, split: str, name: str) -> tuple[Path, Path, Path]:
    """A photo's label PNG, its preview and the photo itself, in the order they are written: the photo last,
    so that a photo on disk always has its truth (a signal between two writes leaves no photo without it)."""
    truth = folder / TRUTH_FOLDER
    return truth / "labels" / f"{split}B" / name, truth / "previews" / f"{split}B" / name, folder / f"{split}B" / name


def rendered_photos(folder: Path, config: WorldConfig) -> int:
    """How many photos of ``config`` are in place with their truth (what a continued render skips)."""
    return sum(all(path.exists() for path in _truth_files(folder, split, photo_name(index)))
               for split in ("train", "test") for index in range(getattr(config, split)))


def write_split(folder: Path, split: str, count: int, config: WorldConfig, quiet: bool = True) -> int:
    """Render ``count`` photos of ``split`` into ``folder/{split}B`` and their truth; returns how many were new.

    Photos already there with their truth are kept (a re-run continues an interrupted render); the truth
    file is rewritten whole from the scenes, so it always matches the photos, and replaces the old one only
    once it is whole: an interrupted re-render keeps the complete file it would have cut.
    """
    from advseg_cli.files import sha256_file
    from advseg_cli.images import write_png
    from advseg_cli.interrupts import signals_deferred
    from advseg_cli.progress import progress
    from advseg_cli.segcache import EntryInfo, SegcacheWriter
    from advseg_cli.segmentation.maps import colorize

    for made_folder in _truth_files(folder, split, "x"):
        made_folder.parent.mkdir(parents=True, exist_ok=True)
    made = 0
    writer = SegcacheWriter(folder / TRUTH_FOLDER / f"{split}B.h5", truth_metadata(),  # type: ignore[arg-type]
                            fresh=True, commit_every=1e9)
    try:
        with progress(range(count), desc=f"render shapes {split}", quiet=quiet, unit="photo") as bar:
            for index in bar:  # the bar is closed here, not by a finaliser that a second signal would interrupt
                photo, labels = render_scene(scene_for(config.seed, split, index, config.size))
                name = photo_name(index)
                label_png, preview, photo_png = _truth_files(folder, split, name)
                if not all(path.exists() for path in (label_png, preview, photo_png)):
                    write_png(label_png, labels)
                    write_png(preview, colorize(labels))
                    write_png(photo_png, photo)
                    made += 1
                writer.put(EntryInfo(name, config.size, config.size, sha256_file(photo_png), config.size,
                                     config.size), labels)
    except BaseException:
        with signals_deferred():  # a second signal must not leave the working copy behind
            writer.close(commit=False)
        raise
    writer.close()
    return made


def render_world(folder: Path, config: WorldConfig, quiet: bool = False,
                 records: tuple[Path, ...] = ()) -> dict[str, int]:
    """ROOT/shapes/{trainB,testB} and truth/ for ``config``; refuses a folder that ``records`` (the dataset's
    record, and that of an interrupted render) say was rendered with other settings."""
    import json

    from advseg_cli.errors import AdvsegError

    config.validate()
    for record_file in records:
        if record_file.exists():
            previous = json.loads(record_file.read_text(encoding="utf-8")).get("options", {}).get("world")
            if previous is not None and previous != dataclasses.asdict(config):
                raise AdvsegError(f"{folder}: rendered with other settings ({previous}); choose another ROOT or "
                                  f"delete {folder}")
    return {split: write_split(folder, split, getattr(config, split), config, quiet) for split in ("train", "test")}
