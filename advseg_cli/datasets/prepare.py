"""``advseg data prepare NAME ROOT``: from nothing to ``ROOT/NAME/{trainA,trainB,testA,testB,segmaps.h5}``.

Steps, each resumable and each with its own run record:

1. ``fetch``: the photos of the dataset's file list into ``trainB/`` and ``testB/`` (record:
   ``ROOT/NAME/advseg-data.json``, written only once every photo is in place or reported; a signal
   leaves ``advseg-data.interrupted.json`` instead, saying how far it got); for the generated ``shapes``
   world, rendering its photos and their ground truth (``truth/``);
2. ``seg`` (``shapes`` only): train the world's Seg and its evaluation segmenter into ``$ADVSEG_HOME``
   (or ``--seg-out``), unless they are there already;
3. ``edges``: ``advseg edges`` of ``trainB``/``testB`` into ``trainA``/``testA`` (their own records);
4. ``segcache``: ``advseg segcache`` of ``trainB`` into ``segmaps.h5`` (record ``segmaps.h5.run.json``).

Sketch and photo of one image share their file stem, so the same folders are the paired layout that
Pix2Pix reads (``trainA/x.png`` pairs with ``trainB/x.jpg``) and the unpaired one CycleGAN reads.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

from PIL import Image

from advseg_cli.datasets.catalog import DatasetSpec, dataset_spec
from advseg_cli.download import DownloadFailedError, Expected, download, with_mirror
from advseg_cli.datasets.lists import (ListEntry, list_digest, read_list, split_counts, write_list)
from advseg_cli.datasets.selection import CocoRule, SceneRule, select_coco, select_scenes
from advseg_cli.edges import EdgesConfig, extract_edges
from advseg_cli.errors import AdvsegError, AllInputsFailedError
from advseg_cli.files import atomic_path, sha256_file
from advseg_cli.images import list_images
from advseg_cli.interrupts import same_command, signals_deferred
from advseg_cli.progress import progress
from advseg_cli.runrecord import RunRecord
from advseg_cli.segcache import SegcacheConfig, build_segcache
from advseg_cli.world.render import WorldConfig
from advseg_cli.world.seg_training import SegTrainingConfig
from advseg_cli.world.seg import world_segmenter_path
from advseg_cli.world.steps import render_step, seg_step

STEPS = ("fetch", "seg", "edges", "segcache")
DATA_RECORD = "advseg-data.json"  # its presence means "fetched": every photo in place or reported
INTERRUPTED_RECORD = "advseg-data.interrupted.json"  # a fetch stopped by a signal: how far it got, how to go on
DERIVED_LIST = "list.tsv"
TEST_EVERY = 10  # user folders without their own split: every 10th photo (by name) is a test photo


@dataclasses.dataclass
class PrepareConfig:
    """Every option of ``advseg data prepare``."""

    steps: tuple[str, ...] | None = None  # None: the dataset's own steps (DatasetSpec.steps)
    source: Path | None = None  # folder datasets: the data the user obtained
    lists: Path | None = None  # a folder of NAME.tsv lists to use instead of data/lists
    mirror: str | None = None  # scheme://host[:port] that replaces the datasets' hosts
    downloads: Path | None = None  # where archives go [ROOT/downloads]
    edges: EdgesConfig = dataclasses.field(default_factory=EdgesConfig)
    segcache: SegcacheConfig = dataclasses.field(default_factory=SegcacheConfig)
    world: WorldConfig = dataclasses.field(default_factory=WorldConfig)  # generated datasets: what to render
    seg_training: SegTrainingConfig = dataclasses.field(default_factory=SegTrainingConfig)  # their Seg's training
    seg_out: Path | None = None  # generated datasets: where their trained Seg goes [$ADVSEG_HOME]
    seg_roles: tuple[str, ...] = ("seg", "eval")  # the training Seg, and the evaluation segmenter (experiments)
    quiet: bool = False

    def steps_for(self, spec: DatasetSpec) -> tuple[str, ...]:
        """The steps to run for ``spec``, checked: unknown names, or a Seg to train for a dataset without one."""
        steps = spec.steps if self.steps is None else self.steps
        unknown = [step for step in steps if step not in STEPS]
        if unknown or not steps:
            raise AdvsegError(f"--steps: {', '.join(unknown) or 'none given'}; choose from {', '.join(STEPS)}")
        if "seg" in steps and spec.kind != "generated":
            raise AdvsegError(f"--steps seg: {spec.name} uses a published Seg (--seg-backend); only a generated "
                              "world (shapes) trains its own")
        return steps

    def validate(self) -> None:
        if self.steps is not None:
            unknown = [step for step in self.steps if step not in STEPS]
            if unknown or not self.steps:
                raise AdvsegError(f"--steps: {', '.join(unknown) or 'none given'}; choose from {', '.join(STEPS)}")
        self.world.validate()
        self.seg_training.validate()


@dataclasses.dataclass(frozen=True)
class PrepareSummary:
    folder: Path
    counts: dict[str, int]
    failed: int
    steps_run: tuple[str, ...]


def _decode_problem(path: Path) -> str | None:
    """Why a downloaded photo is not a whole image (a truncated JPEG often still opens)."""
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as exc:  # Pillow raises many types for broken data
        return f"not a decodable image ({type(exc).__name__}: {exc})"
    return None


def expected_for(entry: ListEntry) -> Expected:
    return Expected(size=entry.size, digest=entry.sha256, validate=_decode_problem)


# ---------------------------------------------------------------------------------------------- lists

def _downloads(root: Path, config: PrepareConfig) -> Path:
    return config.downloads or root / "downloads"


def _fetch_metadata(spec: DatasetSpec, root: Path, config: PrepareConfig) -> Path:
    assert spec.metadata is not None
    archive = spec.metadata
    target = _downloads(root, config) / archive.filename
    try:
        return download(with_mirror(archive.url, config.mirror), target,
                        Expected(digest=archive.sha1, algorithm="sha1"), quiet=config.quiet)
    except DownloadFailedError as exc:
        raise AdvsegError(f"{exc}; try again later, or put a good copy of {archive.filename} at {target}") from None


def _derive_coco_list(spec: DatasetSpec, root: Path, config: PrepareConfig) -> list[ListEntry]:
    assert isinstance(spec.rule, CocoRule)
    bundle = _fetch_metadata(spec, root, config)
    entries: list[ListEntry] = []
    with zipfile.ZipFile(bundle) as archive:
        for split, folder in (("train", "train2017"), ("test", "val2017")):
            with archive.open(f"annotations/instances_{folder}.json") as handle:
                entries += select_coco(json.load(handle), spec.rule, split, folder)
    return entries


def _derive_scene_list(spec: DatasetSpec, root: Path, config: PrepareConfig) -> list[ListEntry]:
    assert isinstance(spec.rule, SceneRule)
    bundle = _fetch_metadata(spec, root, config)
    with zipfile.ZipFile(bundle) as archive:
        text = archive.read(f"{spec.rule.archive_root}/sceneCategories.txt").decode("utf-8")
    return select_scenes(text.splitlines(), spec.rule)


def _derive_folder_list(source: Path) -> list[ListEntry]:
    """A user folder: its own train/test (or trainB/testB, Cityscapes' leftImg8bit/train|val) split when it
    has one, else every TEST_EVERY-th photo by name is a test photo."""
    layouts = (("train", "test"), ("trainB", "testB"), ("leftImg8bit/train", "leftImg8bit/val"))
    for train, test in layouts:
        if (source / train).is_dir() and (source / test).is_dir():
            return [ListEntry(split, relative.name, f"{folder}/{relative.as_posix()}")
                    for split, folder in (("train", train), ("test", test))
                    for relative in list_images(source / folder)]
    return [ListEntry("test" if index % TEST_EVERY == TEST_EVERY - 1 else "train", relative.name, relative.as_posix())
            for index, relative in enumerate(list_images(source))]


def resolve_list(spec: DatasetSpec, root: Path, config: PrepareConfig) -> tuple[list[ListEntry], str]:
    """The dataset's file list and where it came from: --lists, data/lists, or derived (and saved)."""
    if config.lists is not None:
        chosen = config.lists / f"{spec.name}.tsv"
        if not chosen.is_file():
            raise AdvsegError(f"--lists: {chosen} does not exist; the folder must hold {spec.name}.tsv")
        return read_list(chosen), str(chosen)
    if spec.shipped_list().is_file():
        return read_list(spec.shipped_list()), str(spec.shipped_list())
    derived = root / spec.name / DERIVED_LIST
    if spec.kind == "folder":
        assert config.source is not None  # _fetch_step checked it
        entries = _derive_folder_list(config.source)
        if not entries:
            raise AdvsegError(f"--source: no images under {config.source}")
    elif derived.is_file():
        return read_list(derived), str(derived)
    else:
        entries = _derive_coco_list(spec, root, config) if spec.kind == "coco" else _derive_scene_list(spec, root, config)
    _refuse_duplicate_names(entries, config.source)
    write_list(derived, entries, list_comments(spec, config.source))
    return entries, str(derived)


def list_comments(spec: DatasetSpec, source: Path | None) -> list[str]:
    rule = spec.rule.describe() if spec.rule else f"every image under the --source folder ({source})"
    return [f"{spec.name}: {spec.title}", f"rule: {rule}", f"licence: {spec.licence}"]


def _refuse_duplicate_names(entries: list[ListEntry], source: Path | None) -> None:
    seen: dict[tuple[str, str], str] = {}
    for entry in entries:
        other = seen.setdefault((entry.split, entry.file), entry.source)
        if other != entry.source:
            raise AdvsegError(f"{source}: {other} and {entry.source} would both become {entry.split}B/{entry.file}; "
                              "rename one of them")


# ---------------------------------------------------------------------------------------------- fetch

def _destination(folder: Path, entry: ListEntry) -> Path:
    return folder / f"{entry.split}B" / entry.file


def _copy_verified(read: Any, destination: Path, entry: ListEntry) -> None:
    """Write bytes from ``read()`` (a file object) atomically, then check them like a download."""
    with atomic_path(destination) as tmp:
        with open(tmp, "wb") as handle:
            shutil.copyfileobj(read, handle, 1 << 20)
        problem = expected_for(entry).problem_with(tmp)
        if problem:
            raise DownloadFailedError(f"{entry.source}: {problem}")


class _Fetcher:
    """Brings each list entry's photo into place; per-file problems are recorded, never fatal."""

    def __init__(self, spec: DatasetSpec, root: Path, folder: Path, config: PrepareConfig, record: RunRecord):
        self.spec, self.root, self.folder, self.config, self.record = spec, root, folder, config, record
        self.archive: zipfile.ZipFile | None = None

    def __enter__(self) -> _Fetcher:
        if self.spec.kind == "archive":
            self.archive = zipfile.ZipFile(_fetch_metadata(self.spec, self.root, self.config))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.archive is not None:
            self.archive.close()

    def fetch(self, entry: ListEntry) -> None:
        destination = _destination(self.folder, entry)
        if destination.exists() and expected_for(entry).problem_with(destination) is None:
            self.record.counts["skipped"] += 1
            return
        try:
            self._bring(entry, destination)
        except (DownloadFailedError, KeyError, OSError) as exc:
            self.record.add_failure(f"{entry.split}/{entry.file}", str(exc).strip("'\""))
            return
        self.record.counts["done"] += 1

    def _bring(self, entry: ListEntry, destination: Path) -> None:
        if self.spec.kind == "coco":
            assert self.spec.images_url is not None
            url = with_mirror(f"{self.spec.images_url}/{entry.source}", self.config.mirror)
            download(url, destination, expected_for(entry), quiet=True)
        elif self.spec.kind == "archive":
            assert self.archive is not None
            with self.archive.open(entry.source) as member:
                _copy_verified(member, destination, entry)
        else:
            assert self.config.source is not None
            with open(self.config.source / entry.source, "rb") as handle:
                _copy_verified(handle, destination, entry)


def _fetch_step(spec: DatasetSpec, root: Path, folder: Path, config: PrepareConfig) -> RunRecord:
    if spec.kind == "folder" and (config.source is None or not config.source.is_dir()):
        where = "" if config.source is None else f"--source {config.source} is not a folder; "
        raise AdvsegError(f"{where}{spec.name} cannot be downloaded freely: request it from {spec.request}")
    entries, origin = resolve_list(spec, root, config)
    record = RunRecord("data-fetch", {"dataset": spec.name, "list": origin, "mirror": config.mirror,
                                      "source": str(config.source) if config.source else None})
    record.extra.update(list_sha256=list_digest(entries), splits=split_counts(entries),
                        paper_split=spec.paper_split, licence=spec.licence)
    for split in ("train", "test"):
        (folder / f"{split}B").mkdir(parents=True, exist_ok=True)
    try:
        with _Fetcher(spec, root, folder, config, record) as fetcher:
            for entry in progress(entries, desc=f"fetch {spec.name}", quiet=config.quiet, unit="photo"):
                fetcher.fetch(entry)
    except KeyboardInterrupt:  # the photos in place stay; the dataset's record would say "fetched": not it
        with signals_deferred():  # a second signal must not cut the only record of the interruption
            record.extra["continue_with"] = same_command()
            record.finish("interrupted")
            record.write(folder / INTERRUPTED_RECORD)
        raise
    if record.counts["failed"] == len(entries):
        raise AllInputsFailedError(f"{spec.name}: no photo could be fetched (first problem: "
                                   f"{record.failures[0]['reason'] if record.failures else 'empty list'})")
    record.finish("complete" if not record.failures else "complete-with-failures")
    record.write(folder / DATA_RECORD)  # only now: its presence means every photo is in place or reported
    (folder / INTERRUPTED_RECORD).unlink(missing_ok=True)  # after it: one of the two always says where it is
    return record


# ---------------------------------------------------------------------------------------------- steps

def prepare_dataset(name: str, root: Path, config: PrepareConfig = PrepareConfig()) -> PrepareSummary:
    """Run the chosen steps for dataset ``name`` under ``root``; finished work is skipped."""
    config.validate()
    spec = dataset_spec(name)
    steps = config.steps_for(spec)
    folder = root / spec.name
    failed = 0
    if "fetch" in steps:
        if spec.kind == "generated":
            render_step(folder, config.world, folder / DATA_RECORD, folder / INTERRUPTED_RECORD, config.quiet)
        else:
            failed += _fetch_step(spec, root, folder, config).counts["failed"]
    elif not (folder / DATA_RECORD).exists():
        raise AdvsegError(f"{folder}: not fetched yet; run `advseg data prepare {name} {root} --steps fetch` first")
    if "seg" in steps:
        seg_step(config.seg_roles, config.seg_out, config.seg_training, config.quiet)
    if "edges" in steps:
        for split in ("train", "test"):
            failed += extract_edges(folder / f"{split}B", folder / f"{split}A", config.edges).failed
    if "segcache" in steps:
        segcache = config.segcache
        if spec.kind == "generated" and segcache.backend == "shapes" and segcache.weights is None:
            segcache = dataclasses.replace(segcache, weights=world_segmenter_path("seg", config.seg_out))
        build_segcache(folder / "trainB", folder / "segmaps.h5", segcache)
    counts = {f"{split}{side}": _count_images(folder / f"{split}{side}")
              for split in ("train", "test") for side in "AB"}
    return PrepareSummary(folder, counts, failed, steps)


def _count_images(folder: Path) -> int:
    return len(list_images(folder)) if folder.is_dir() else 0



def freeze_list(spec: DatasetSpec, root: Path, target: Path) -> int:
    """Write the list of a fetched dataset with each photo's size and sha256 (what data/lists ships)."""
    folder = root / spec.name
    record = folder / DATA_RECORD
    if not record.exists():
        raise AdvsegError(f"{folder}: not fetched yet; run `advseg data prepare {spec.name} {root} --steps fetch`")
    used = Path(json.loads(record.read_text(encoding="utf-8"))["options"]["list"])
    entries = read_list(used)
    missing = [entry.file for entry in entries if not _destination(folder, entry).is_file()]
    if missing:
        raise AdvsegError(f"{folder}: {len(missing)} listed photos are missing (first: {missing[0]}); "
                          "re-run prepare --steps fetch, or remove them from the list")
    frozen = [dataclasses.replace(entry, size=_destination(folder, entry).stat().st_size,
                                  sha256=sha256_file(_destination(folder, entry))) for entry in entries]
    write_list(target, frozen, list_comments(spec, None))
    return len(frozen)
