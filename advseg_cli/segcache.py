"""``advseg segcache``: panoptic label maps of a photo folder, computed once and cached in HDF5.

File format (schema version :data:`SCHEMA_VERSION`; DESIGN.md "Segmentation cache")::

    /                    attrs: format="advseg-segcache", schema_version, backend, model_name,
                                weights_sha256 ("" when the backend has no weights file), thresholds
                                (JSON), class_names[135], is_thing[135], is_stuff[135] (uint8 flags),
                                resize_policy (JSON, see ResizePolicy), tool_version
    /entries/<name>      uint8 [H,W] labels in the 135-class layout, chunked + gzip, at the size the
                         map was computed at; attrs: source_width, source_height (the decoded,
                         upright photo), source_sha256 (of the photo file's bytes), computed_width,
                         computed_height
``<name>`` is the photo's path relative to the photo root (POSIX separators) with ``%`` written
``%25`` and ``/`` written ``%2F``, so that every entry is one dataset of one flat group (HDF5 would
otherwise turn folders into nested groups). The binary thing/stuff map is derived with
``binary_from_labels``, never stored.

Crash safety: ``OUT.h5`` itself is never opened for writing. The one writer (the main process)
works on a copy in the same folder and *commits* by closing it and renaming it onto ``OUT.h5``
(``os.replace``, atomic), every ``commit_every`` seconds and at the end; writing goes on in a fresh
copy. A ``kill -9`` at any moment therefore leaves ``OUT.h5`` as the last committed, complete file
(HDF5 files killed mid-write can be unreadable even after flushes, which is why we never write in
place). Readers that have ``OUT.h5`` open keep reading their own consistent version.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from advseg_cli import __version__
from advseg_cli.pipeline import iterate_items
from advseg_cli.devices import check_precision, default_batch_size, resolve_device
from advseg_cli.errors import AdvsegError, AllInputsFailedError, ImageDecodeError, IncompatibleInputError
from advseg_cli.files import TEMP_MARKER, _writer_is_gone, sha256_file, temporary_sibling
from advseg_cli.images import decode_rgb, image_size, list_images, read_rgb, write_png
from advseg_cli.interrupts import signals_deferred
from advseg_cli.progress import progress
from advseg_cli.runrecord import RunRecord, record_path_for
from advseg_cli.segmentation.base import Segmenter, build_segmenter, same_weights, uint8_to_model_range
from advseg_cli.segmentation.classes import CLASS_NAMES, IS_STUFF, IS_THING, NUM_CLASSES
from advseg_cli.segmentation.maps import binary_from_labels, palette
from advseg_cli.sharding import select_shard

SCHEMA_VERSION = 1
FORMAT_NAME = "advseg-segcache"
ENTRIES = "entries"
DEFAULT_BACKEND = "panoptic-fpn"
REBUILD_HINT = "rebuild it with `advseg segcache PHOTOS OUT.h5 --overwrite`"

# Settings that decide what a label map means: entries made with other values must not be mixed in.
IDENTITY_FIELDS = ("schema_version", "backend", "model_name", "weights_sha256", "thresholds",
                   "class_names", "is_thing", "is_stuff", "resize_policy")


# ============================================================================ resize policy
@dataclasses.dataclass(frozen=True)
class ResizePolicy:
    """At which size a photo is segmented; stored in the file, because maps of other sizes differ.

    mode ``native``: the photo's own size, downscaled (aspect kept) so the longer side is at most
    ``max_side`` (0 = no cap). mode ``short_side``: resized so its short side is ``size`` (aspect
    kept), then capped by ``max_side`` like ``native``. mode ``square``: resized to ``size`` x ``size``
    (what the training loader does with photos, so maps line up with its crops; no cap).
    Resampling is bicubic (Pillow), as the training loader's resize.
    """

    mode: str = "native"  # native | short_side | square
    size: int = 0
    max_side: int = 1024
    interpolation: str = "bicubic"

    @classmethod
    def from_options(cls, size: int, square: int, max_side: int) -> ResizePolicy:
        if size and square:
            raise AdvsegError("--size and --square exclude each other; pick one")
        if square:
            return cls("square", square, 0)
        if size:
            return cls("short_side", size, max_side)
        return cls("native", 0, max_side)

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) at which a photo of the given size is segmented."""
        if self.mode == "square":
            return self.size, self.size
        if self.mode == "short_side":
            scale = self.size / min(width, height)
            width, height = max(1, round(width * scale)), max(1, round(height * scale))
        longest = max(width, height)
        if self.max_side and longest > self.max_side:
            scale = self.max_side / longest
            width, height = max(1, round(width * scale)), max(1, round(height * scale))
        return width, height

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 photo -> the photo as it is segmented."""
        height, width = rgb.shape[:2]
        return resize_rgb(rgb, self.target_size(width, height))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ResizePolicy:
        return cls(**json.loads(text))

    def describe(self) -> str:
        cap = f", longer side <= {self.max_side}" if self.max_side else ""
        if self.mode == "square":
            return f"square {self.size}x{self.size}"
        if self.mode == "short_side":
            return f"short side {self.size}{cap}"
        return f"photo's own size{cap}"


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of an HxWx3 uint8 array to (width, height); a no-op at the same size."""
    if (rgb.shape[1], rgb.shape[0]) == tuple(size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BICUBIC))


# ============================================================================ metadata and entries
@dataclasses.dataclass(frozen=True)
class CacheMetadata:
    """The file attributes: what produced the maps and what their labels mean."""

    backend: str
    model_name: str
    weights_sha256: str  # "" when the backend has no weights file (random init in tests)
    thresholds: dict[str, float]
    resize_policy: ResizePolicy
    class_names: tuple[str, ...] = CLASS_NAMES
    is_thing: tuple[bool, ...] = IS_THING
    is_stuff: tuple[bool, ...] = IS_STUFF
    schema_version: int = SCHEMA_VERSION
    tool_version: str = __version__

    @classmethod
    def for_segmenter(cls, segmenter: Segmenter, policy: ResizePolicy) -> CacheMetadata:
        record = segmenter.weights_record or {}
        return cls(backend=segmenter.backend, model_name=segmenter.model_name,
                   weights_sha256=str(record.get("sha256") or ""),
                   thresholds={k: float(v) for k, v in sorted(segmenter.thresholds.items())},
                   resize_policy=policy)

    def identity(self) -> dict[str, Any]:
        """The fields that must agree for two sets of maps to be mixed in one cache."""
        return {name: getattr(self, name) for name in IDENTITY_FIELDS}

    def differences(self, other: CacheMetadata) -> list[str]:
        """'field: ours -> theirs' for every identity field that differs (class lists abbreviated)."""
        mine, theirs = self.identity(), other.identity()
        names_matter = not same_weights(mine["weights_sha256"], theirs["weights_sha256"])
        out = []
        for name in IDENTITY_FIELDS:
            if name == "model_name" and not names_matter:
                continue
            if mine[name] != theirs[name]:
                if name in ("class_names", "is_thing", "is_stuff"):
                    out.append(f"{name}: differs")
                else:
                    out.append(f"{name}: {_short(mine[name])} -> {_short(theirs[name])}")
        return out

    def write_to(self, handle: h5py.File) -> None:
        attrs = handle.attrs
        attrs["format"] = FORMAT_NAME
        attrs["schema_version"] = self.schema_version
        attrs["backend"] = self.backend
        attrs["model_name"] = self.model_name
        attrs["weights_sha256"] = self.weights_sha256
        attrs["thresholds"] = json.dumps(self.thresholds, sort_keys=True)
        attrs["resize_policy"] = self.resize_policy.to_json()
        attrs.create("class_names", np.array(self.class_names, dtype=object), dtype=h5py.string_dtype())
        attrs["is_thing"] = np.array(self.is_thing, dtype=np.uint8)
        attrs["is_stuff"] = np.array(self.is_stuff, dtype=np.uint8)
        attrs["tool_version"] = self.tool_version

    @classmethod
    def read_from(cls, handle: h5py.File, path: Path) -> CacheMetadata:
        """The metadata of an open file, or one clear error when it is not a cache we can read."""
        attrs = handle.attrs
        if _text(attrs.get("format")) != FORMAT_NAME:
            raise IncompatibleInputError(f"{path}: an HDF5 file but not an advseg segmentation cache; "
                                         f"pass the cache that `advseg segcache` wrote, or {REBUILD_HINT}")
        version = int(attrs.get("schema_version", -1))
        if version != SCHEMA_VERSION:
            newer = " (written by a newer advseg: upgrade advseg, or" if version > SCHEMA_VERSION else " ("
            raise IncompatibleInputError(
                f"{path}: segmentation cache schema version {version}, this advseg reads version "
                f"{SCHEMA_VERSION}{newer} {REBUILD_HINT})")
        try:
            return cls(backend=_text(attrs["backend"]), model_name=_text(attrs["model_name"]),
                       weights_sha256=_text(attrs["weights_sha256"]),
                       thresholds=json.loads(_text(attrs["thresholds"])),
                       resize_policy=ResizePolicy.from_json(_text(attrs["resize_policy"])),
                       class_names=tuple(_text(n) for n in attrs["class_names"]),
                       is_thing=tuple(bool(f) for f in attrs["is_thing"]),
                       is_stuff=tuple(bool(f) for f in attrs["is_stuff"]),
                       schema_version=version, tool_version=_text(attrs.get("tool_version", "")))
        except (KeyError, ValueError, TypeError) as exc:
            raise IncompatibleInputError(f"{path}: damaged segmentation cache attributes ({exc}); "
                                         f"{REBUILD_HINT}") from None


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else ("" if value is None else str(value))


def _short(value: Any) -> str:
    text = value.describe() if isinstance(value, ResizePolicy) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclasses.dataclass(frozen=True)
class EntryInfo:
    """Per-entry attributes: where the map came from and at which size it was computed."""

    key: str  # the photo's path relative to the photo root, POSIX separators
    source_width: int
    source_height: int
    source_sha256: str
    computed_width: int
    computed_height: int

    def write_to(self, dataset: h5py.Dataset) -> None:
        for field in ("source_width", "source_height", "source_sha256", "computed_width", "computed_height"):
            dataset.attrs[field] = getattr(self, field)

    @classmethod
    def read_from(cls, dataset: h5py.Dataset, key: str) -> EntryInfo:
        attrs = dataset.attrs
        return cls(key, int(attrs["source_width"]), int(attrs["source_height"]),
                   _text(attrs["source_sha256"]), int(attrs["computed_width"]), int(attrs["computed_height"]))


_ESCAPES = {"%": "%25", "/": "%2F"}
_UNESCAPES = {value: key for key, value in _ESCAPES.items()}


def key_of(relative: str | Path) -> str:
    """The cache key of a photo: its relative path with POSIX separators."""
    return relative.as_posix() if isinstance(relative, Path) else str(relative)


def entry_name(key: str | Path) -> str:
    """Cache key -> HDF5 dataset name inside /entries (one flat group; reversible)."""
    return re.sub(r"[%/]", lambda match: _ESCAPES[match.group(0)], key_of(key))


def key_from_entry_name(name: str) -> str:
    return re.sub(r"%25|%2F", lambda match: _UNESCAPES[match.group(0)], name)


def _chunks(height: int, width: int) -> tuple[int, int]:
    """Chunks of up to 256x256: small maps are one chunk, big ones need not be read whole."""
    return min(height, 256), min(width, 256)


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ============================================================================ reader
def open_cache_file(path: Path) -> h5py.File:
    """Open a cache read-only, with one clear error for anything that is not a cache we can read."""
    path = Path(path)
    if not path.is_file():
        raise AdvsegError(f"{path}: no such segmentation cache; make it with `advseg segcache PHOTOS {path}`")
    if not h5py.is_hdf5(path):
        raise IncompatibleInputError(f"{path}: not an HDF5 file, so not an advseg segmentation cache; "
                                     f"{REBUILD_HINT}")
    try:
        handle = h5py.File(path, "r", locking=False)  # never modified in place (module docstring)
    except OSError as exc:
        raise IncompatibleInputError(f"{path}: unreadable HDF5 file ({exc}); {REBUILD_HINT}") from None
    try:
        CacheMetadata.read_from(handle, path)
        if not isinstance(handle.get(ENTRIES), h5py.Group):
            raise IncompatibleInputError(f"{path}: segmentation cache without its entries group; {REBUILD_HINT}")
    except BaseException:
        handle.close()
        raise
    return handle


class SegmentationCache:
    """Read-only access to a cache, safe to hand to DataLoader workers.

    The HDF5 file is opened lazily, once per process (h5py handles must not cross a fork), so a
    Dataset holding this object can be pickled or forked into workers that each open their own.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open_cache_file(self.path) as handle:
            self.metadata = CacheMetadata.read_from(handle, self.path)
            self._keys = sorted(key_from_entry_name(name) for name in handle[ENTRIES])
        self._key_set = frozenset(self._keys)
        self._handle: h5py.File | None = None
        self._pid = -1

    # -- process-local handle
    def _entries(self) -> h5py.Group:
        if self._handle is None or self._pid != os.getpid():
            self._handle = open_cache_file(self.path)  # never close a parent's handle in a child
            self._pid = os.getpid()
        return self._handle[ENTRIES]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"], state["_pid"] = None, -1
        return state

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle, self._pid = None, -1

    def __enter__(self) -> SegmentationCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lookups
    def __contains__(self, key: object) -> bool:
        return isinstance(key, (str, Path)) and key_of(key) in self._key_set

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> list[str]:
        """Relative photo paths (POSIX), sorted."""
        return list(self._keys)

    def _dataset(self, key: str | Path) -> h5py.Dataset:
        if key not in self:
            raise KeyError(f"{key_of(key)!r} is not in {self.path}")
        return self._entries()[entry_name(key)]

    def labels(self, key: str | Path) -> np.ndarray:
        """[H,W] uint8 labels of one photo (135-class layout), at the size they were computed at."""
        return self._dataset(key)[()]

    def binary(self, key: str | Path) -> torch.Tensor:
        """[3,H,W] float thing/stuff map derived from the labels (never stored)."""
        return binary_from_labels(torch.from_numpy(self.labels(key))[None])[0]

    def entry_info(self, key: str | Path) -> EntryInfo:
        return EntryInfo.read_from(self._dataset(key), key_of(key))

    def is_stale(self, key: str | Path, photo_path: Path) -> bool:
        """Whether the photo's content changed since its map was made (a missing entry is stale too)."""
        if key not in self:
            return True
        return sha256_file(Path(photo_path)) != self.entry_info(key).source_sha256


class SegmentationCacheDataset(Dataset):
    """The cache as a map-style Dataset: item i is {"key": str, "labels": uint8 Tensor[H,W]}.

    With ``binary=True`` items also hold "binary": the derived [3,H,W] thing/stuff map.
    """

    def __init__(self, cache: SegmentationCache | Path, keys: Sequence[str] | None = None,
                 binary: bool = False) -> None:
        self.cache = cache if isinstance(cache, SegmentationCache) else SegmentationCache(Path(cache))
        self.keys = list(self.cache.keys() if keys is None else [key_of(k) for k in keys])
        missing = [key for key in self.keys if key not in self.cache]
        if missing:
            raise IncompatibleInputError(f"{self.cache.path}: no map for {len(missing)} photos "
                                         f"(first: {missing[0]}); run `advseg segcache` on them")
        self.binary = binary

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = self.keys[index]
        labels = torch.from_numpy(self.cache.labels(key))
        item: dict[str, Any] = {"key": key, "labels": labels}
        if self.binary:
            item["binary"] = binary_from_labels(labels[None])[0]
        return item


# ============================================================================ writer
class SegcacheWriter:
    """The one writer of a cache file: works on a copy, commits by atomic rename (module docstring).

    ``fresh=True`` starts from an empty cache (``--overwrite``) instead of a copy of ``path``.
    Commits happen when :meth:`maybe_commit` finds ``commit_every`` seconds passed (stretched to 20x
    the last commit's duration, so that copying a big file stays a small share of the run; 0 means
    at every call), and in :meth:`close`.
    """

    def __init__(self, path: Path, metadata: CacheMetadata, *, fresh: bool = False,
                 commit_every: float = 30.0) -> None:
        self.path = Path(path)
        self.metadata = metadata
        self.fresh = fresh or not self.path.exists()
        self.commit_every = commit_every
        self.commits = 0
        self._work: Path | None = None
        self._handle: h5py.File | None = None
        self._last_commit = time.monotonic()
        self._interval = commit_every
        self._consistent = True  # False while an HDF5 write is under way (then never commit)

    # -- the working copy
    def _open_work(self) -> h5py.Group:
        if self._handle is None:
            self._work = temporary_sibling(self.path)
            if self.fresh:
                self._handle = h5py.File(self._work, "w", libver=("v110", "latest"), locking=False,
                                         fs_strategy="fsm", fs_persist=True)  # reuse space of replaced maps
                self.metadata.write_to(self._handle)
                self._handle.create_group(ENTRIES)
                self.fresh = False
            else:
                shutil.copyfile(self.path, self._work)
                self._handle = h5py.File(self._work, "a", locking=False)  # a private file: no lock needed
        return self._handle[ENTRIES]

    def ensure_file(self) -> None:
        """Make ``path`` exist (an empty cache) even when a run has nothing to add."""
        if self.fresh:
            self._open_work()
            self.commit()

    def put(self, info: EntryInfo, labels: np.ndarray) -> None:
        """Add (or replace) the map of one photo."""
        if labels.dtype != np.uint8 or labels.shape != (info.computed_height, info.computed_width):
            raise ValueError(f"{info.key}: labels {labels.dtype}{labels.shape} do not match the entry")
        entries = self._open_work()
        name = entry_name(info.key)
        self._consistent = False
        if name in entries:
            del entries[name]
        dataset = entries.create_dataset(name, data=labels, chunks=_chunks(*labels.shape),
                                         compression="gzip", compression_opts=4)
        info.write_to(dataset)
        self._consistent = True

    def copy_entry(self, source: h5py.Dataset, key: str) -> None:
        """Copy one entry of another cache file as it is (compressed chunks and attributes)."""
        entries = self._open_work()
        name = entry_name(key)
        self._consistent = False
        if name in entries:
            del entries[name]
        source.file.copy(source, entries, name=name)
        self._consistent = True

    def maybe_commit(self) -> bool:
        if self._handle is None or time.monotonic() - self._last_commit < self._interval:
            return False
        self.commit()
        return True

    def commit(self, reopen: bool = True) -> None:
        """Close the working copy, rename it onto ``path`` and (if ``reopen``) go on in a new copy."""
        if self._handle is None:
            return
        started = time.monotonic()
        self._handle.close()
        self._handle = None
        work, self._work = self._work, None
        _fsync_path(work)
        os.replace(work, self.path)
        _fsync_path(self.path.parent, directory=True)
        self.commits += 1
        duration = time.monotonic() - started
        self._interval = max(self.commit_every, 20 * duration) if self.commit_every else 0.0
        self._last_commit = time.monotonic()
        if reopen:
            self._open_work()

    def close(self, commit: bool = True) -> None:
        """Commit what was written (if the file is consistent) and remove the working copy."""
        try:
            if commit and self._consistent:
                self.commit(reopen=False)
        finally:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
            if self._work is not None:
                self._work.unlink(missing_ok=True)
                self._work = None

    def __enter__(self) -> SegcacheWriter:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        self.close(commit=True)


def remove_stale_work_copies(path: Path) -> int:
    """Delete temporary copies of ``path`` (cache working copies, run-record temporaries) left by
    killed writers (their pid is in the name). Only this file's, not a whole-folder sweep."""
    removed = 0
    pattern = f".{glob.escape(path.stem)}{TEMP_MARKER}*{glob.escape(path.suffix)}"  # see temporary_sibling
    for candidate in path.parent.glob(pattern):
        if _writer_is_gone(candidate):
            candidate.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def exclusive_writer_lock(path: Path) -> Iterator[None]:
    """One writer per cache file: a second process writing the same file would lose entries on rename.

    The lock file ``.<name>.lock`` is removed at the end; a process that locked a lock file which was
    removed meanwhile (the holder finished) notices that the name now points elsewhere and retries.
    On file systems without ``flock`` (some network mounts) the guard is skipped.
    """
    lock_path = path.with_name(f".{path.name}.lock")
    while True:
        handle = open(lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise AdvsegError(f"{path}: another advseg process is writing this cache; wait for it, "
                                  "or give each process its own file (--shard I/N)") from None
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP):
                yield
                return
            raise
        try:
            same = os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)  # still ours: we hold the lock
        handle.close()


# ============================================================================ the stage
@dataclasses.dataclass(frozen=True)
class SegcacheConfig:
    """Every option of the segcache stage, resolved; stored in the run record."""

    backend: str = DEFAULT_BACKEND  # panoptic-fpn (the paper's Seg) | mask2former
    weights: Path | None = None  # the backend's weights (file or directory); None = its default
    size: int = 0  # segment at this short side (aspect kept); 0 = the photo's own size
    square: int = 0  # segment at square x square instead (the training loader's resize); 0 = off
    max_side: int = 1024  # cap on the longer side for size/native; 0 = none
    batch_size: int = 0  # photos per forward pass (equal segmenting sizes only); 0 = devices.default_batch_size
    workers: int = 0  # DataLoader processes that read, hash, decode and resize photos
    device: str = "auto"
    precision: str = "fp32"
    shard: tuple[int, int] = (0, 1)  # (I, N): this process takes every N-th photo from the I-th
    overwrite: bool = False  # start an empty cache instead of adding to the existing one
    quiet: bool = False
    commit_every: float = 30.0  # seconds between commits of the working copy (crash safety); 0 = every batch

    def validate(self) -> None:
        for name in ("size", "square", "max_side", "workers"):
            if getattr(self, name) < 0:
                raise AdvsegError(f"--{name.replace('_', '-')}: must be >= 0")
        if self.batch_size < 0:
            raise AdvsegError("--batch-size: must be >= 1 (or 0 for auto)")
        if self.commit_every < 0:
            raise AdvsegError("--commit-every: must be >= 0 seconds")
        self.policy()

    def policy(self) -> ResizePolicy:
        return ResizePolicy.from_options(self.size, self.square, self.max_side)


@dataclasses.dataclass(frozen=True)
class SegcacheSummary:
    """What a run did; the CLI prints it as one line."""

    done: int  # maps computed and committed in this run
    skipped: int  # photos whose map was already in the cache and up to date
    failed: int  # photos that could not be read or decoded (reasons in the record)
    entries: int  # maps in the cache after the run
    out: Path
    record: Path


CACHE_SUFFIXES = (".h5", ".hdf5")


def check_cache_name(out: Path) -> Path:
    """OUT must name an HDF5 file (its run record goes beside it as ``OUT.run.json``)."""
    if out.is_dir():
        raise AdvsegError(f"OUT {out} is a folder; name the cache file, e.g. {out / 'segmaps.h5'}")
    if out.suffix.lower() not in CACHE_SUFFIXES:
        raise AdvsegError(f"OUT {out}: name the cache file with a .h5 suffix, e.g. segmaps.h5")
    return out


_SHARD_MARK = re.compile(r"\.shard-(\d+)-of-(\d+)$")


def shard_output_path(out: Path, shard: tuple[int, int]) -> Path:
    """The file one shard writes: ``OUT`` with ``.shard-I-of-N`` before its suffix.

    When ``OUT`` already names this shard (``maps.shard-0-of-4.h5`` with ``--shard 0/4``) it is used
    as given, so that shards can also write to per-host paths of the user's choosing.
    """
    index, count = shard
    if count == 1:
        return out
    mark = _SHARD_MARK.search(out.stem)
    if mark and (int(mark.group(1)), int(mark.group(2))) == shard:
        return out
    return out.with_name(f"{out.stem}.shard-{index}-of-{count}{out.suffix}")


@dataclasses.dataclass(frozen=True)
class _Job:
    key: str
    source: Path
    target_size: tuple[int, int]  # from the header, for grouping equal sizes into batches


class _PhotoDataset(Dataset):
    """Reads, hashes, decodes and resizes photos in DataLoader workers; failures come back as reasons.

    The hash is of the very bytes that are decoded, so the stored hash always describes the map.
    """

    def __init__(self, jobs: list[_Job], policy: ResizePolicy) -> None:
        self.jobs = jobs
        self.policy = policy

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, tuple[int, int], str, str]:
        job = self.jobs[index]
        try:
            try:
                data = job.source.read_bytes()
            except OSError as exc:
                raise ImageDecodeError(job.source, f"cannot read file ({exc.strerror or exc})") from None
            rgb = decode_rgb(data, job.source)
            height, width = rgb.shape[:2]
            return index, self.policy.apply(rgb), (width, height), hashlib.sha256(data).hexdigest(), ""
        except ImageDecodeError as exc:
            return index, None, (0, 0), "", exc.reason


def _hash_photos(photos: Path, keys: Sequence[str], quiet: bool) -> dict[str, str | None]:
    """sha256 of every photo (threads: hashlib releases the GIL); None for unreadable files."""
    def one(key: str) -> str | None:
        try:
            return sha256_file(photos / key)
        except OSError:
            return None

    with concurrent.futures.ThreadPoolExecutor(min(8, (os.cpu_count() or 1) + 2)) as pool, \
            progress(total=len(keys), desc="segcache: hashing", quiet=quiet) as bar:
        hashes = {}
        for key, digest in zip(keys, pool.map(one, keys)):
            hashes[key] = digest
            bar.update(1)
    return hashes


def _existing_hashes(path: Path, metadata: CacheMetadata, overwrite: bool) -> dict[str, str]:
    """{key: source sha256} of a cache we may add to; refuses a cache made with other settings."""
    if overwrite or not path.exists():
        return {}
    with open_cache_file(path) as handle:
        existing = CacheMetadata.read_from(handle, path)
        changed = existing.differences(metadata)
        if changed:
            raise IncompatibleInputError(f"{path}: made with other settings ({'; '.join(changed)}); "
                                         "use another OUT.h5 or --overwrite")
        return {key_from_entry_name(name): _text(dataset.attrs.get("source_sha256", ""))
                for name, dataset in handle[ENTRIES].items()}


def _plan(photos: Path, keys: list[str], policy: ResizePolicy, todo_keys: set[str],
          batching: bool) -> list[_Job]:
    jobs = []
    for key in keys:
        if key in todo_keys:
            width, height = image_size(photos / key)
            size = policy.target_size(width, height) if width and height else (0, 0)
            jobs.append(_Job(key, photos / key, size))
    if batching:  # equal segmenting sizes next to each other, so batches form naturally
        jobs.sort(key=lambda job: (job.target_size, job.key))
    return jobs


def _record_options(config: SegcacheConfig, photos: Path, metadata: CacheMetadata) -> dict[str, Any]:
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()}
    options.update(photos=str(photos.resolve()), backend=metadata.backend,
                   resize_policy=metadata.resize_policy.to_json(),
                   model_name=metadata.model_name, weights_sha256=metadata.weights_sha256,
                   thresholds=metadata.thresholds)
    return options


def build_segcache(photos: Path, out_h5: Path, config: SegcacheConfig = SegcacheConfig(), *,
                   segmenter: Segmenter | None = None) -> SegcacheSummary:
    """Segment every photo under ``photos`` (or this shard's share) into the cache ``out_h5``.

    Adds only missing or stale entries (stale: the photo's sha256 changed); ``config.overwrite``
    starts an empty cache. ``segmenter`` may be passed pre-built (benchmarks, embedding); it then
    replaces ``backend``/``weights``/``device``/``precision``. Writes ``<cache>.run.json``.
    """
    config.validate()
    photos, out = Path(photos), shard_output_path(check_cache_name(Path(out_h5)), config.shard)
    keys_all = [key_of(rel) for rel in list_images(photos)]
    if not keys_all:
        raise AdvsegError(f"{photos}: no image files found (looked for .jpg, .png, .bmp, .tif, .webp, ...)")
    if segmenter is None:
        device = resolve_device(config.device)
        check_precision(config.precision, device)
        segmenter = build_segmenter(config.backend, config.weights, device, config.precision)
    config = dataclasses.replace(config, batch_size=config.batch_size or default_batch_size(segmenter.device))
    metadata = CacheMetadata.for_segmenter(segmenter, config.policy())
    out.parent.mkdir(parents=True, exist_ok=True)
    record_file = record_path_for(out)
    with exclusive_writer_lock(out):
        remove_stale_work_copies(out)
        remove_stale_work_copies(record_file)
        existing = _existing_hashes(out, metadata, config.overwrite)
        record = RunRecord(stage="segcache", options=_record_options(config, photos, metadata),
                           weights=[segmenter.weights_record] if segmenter.weights_record else [])
        keys = _valid_keys(select_shard(keys_all, config.shard), record)
        hashes = _hash_photos(photos, [k for k in keys if k in existing], config.quiet)
        todo = {k for k in keys if k not in existing or hashes.get(k) != existing[k]}
        record.counts["skipped"] = len(keys) - len(todo)
        record.extra["stale"] = sorted(k for k in todo if k in existing)
        record.write(record_file)
        jobs = _plan(photos, keys, metadata.resize_policy, todo, config.batch_size > 1)
        writer = SegcacheWriter(out, metadata, fresh=config.overwrite, commit_every=config.commit_every)
        try:
            with writer:  # commits what was written, also when interrupted
                writer.ensure_file()
                _segment_jobs(jobs, config, segmenter, writer, record, record_file)
        except BaseException as exc:
            record.finish("interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed: {exc!r}")
            record.extra.update(commits=writer.commits)
            record.write(record_file)
            raise
        entries = len(SegmentationCache(out))
        record.finish("complete")
        record.extra.update(entries=entries, commits=writer.commits)
        record.write(record_file)
    if record.counts["failed"] and not record.counts["done"] and not record.counts["skipped"]:
        raise AllInputsFailedError(f"segcache: all {record.counts['failed']} inputs failed; see {record_file}")
    return SegcacheSummary(record.counts["done"], record.counts["skipped"], record.counts["failed"],
                           entries, out, record_file)


def _valid_keys(keys: list[str], record: RunRecord) -> list[str]:
    """HDF5 names are UTF-8: a file name that is not valid UTF-8 is reported, not cached."""
    valid = []
    for key in keys:
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            record.add_failure(key.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                               "file name is not valid UTF-8; rename it")
            continue
        valid.append(key)
    return valid


def _segment_jobs(jobs: list[_Job], config: SegcacheConfig, segmenter: Segmenter, writer: SegcacheWriter,
                  record: RunRecord, record_file: Path) -> None:
    """Decode in workers, segment batches of equal-sized photos, write each map, commit periodically."""
    if not jobs:
        return
    dataset = _PhotoDataset(jobs, writer.metadata.resize_policy)
    pending: list[tuple[int, np.ndarray, tuple[int, int], str]] = []

    def flush() -> None:
        labels = segment_batch(segmenter, [rgb for _, rgb, _, _ in pending])
        for (index, rgb, (width, height), digest), label_map in zip(pending, labels):
            info = EntryInfo(jobs[index].key, width, height, digest, rgb.shape[1], rgb.shape[0])
            with signals_deferred():  # a signal mid-write would lose every map since the last commit
                writer.put(info, label_map)
                record.counts["done"] += 1
        pending.clear()
        if writer.maybe_commit():
            record.write(record_file)

    with progress(total=len(jobs), desc="segcache", quiet=config.quiet) as bar:
        for index, rgb, source_size, digest, reason in iterate_items(dataset, config.workers):
            bar.update(1)
            if rgb is None:
                record.add_failure(jobs[index].key, reason)
                continue
            if pending and (rgb.shape != pending[0][1].shape or len(pending) == config.batch_size):
                flush()
            pending.append((index, rgb, tuple(source_size), digest))
        if pending:
            flush()


def segment_batch(segmenter: Segmenter, photos: list[np.ndarray]) -> list[np.ndarray]:
    """Equal-sized HxWx3 uint8 photos -> their [H,W] uint8 label maps, through ``hard_labels``."""
    batch = torch.from_numpy(np.stack(photos)).to(segmenter.device, non_blocking=True)
    with torch.inference_mode():
        labels = segmenter.hard_labels(uint8_to_model_range(batch))
    expected = (len(photos), *photos[0].shape[:2])
    if tuple(labels.shape) != expected or labels.dtype != torch.uint8:
        raise RuntimeError(f"{segmenter.backend}: hard_labels returned {labels.dtype}{tuple(labels.shape)}, "
                           f"expected uint8{expected}")
    labels = labels.cpu().numpy()
    if labels.size and int(labels.max()) >= NUM_CLASSES:  # a backend bug must not reach the cache
        raise RuntimeError(f"{segmenter.backend}: hard_labels returned label {int(labels.max())} outside the layout")
    return list(labels)


# ============================================================================ info
@dataclasses.dataclass(frozen=True)
class CacheInfo:
    """A summary of a cache for people: provenance, sizes and how often each class occurs."""

    path: Path
    metadata: CacheMetadata
    entries: int
    pixels: int
    histogram: np.ndarray  # [135] int64 pixel count per label over all entries
    min_size: tuple[int, int] | None  # smallest computed (width, height) by area
    max_size: tuple[int, int] | None

    def top_classes(self, k: int) -> list[tuple[int, str, float]]:
        """The ``k`` most frequent labels as (label, name, share of all pixels), most frequent first."""
        order = sorted(range(NUM_CLASSES), key=lambda label: (-int(self.histogram[label]), label))
        total = max(1, self.pixels)
        return [(label, self.metadata.class_names[label], int(self.histogram[label]) / total)
                for label in order[:k] if self.histogram[label] > 0]


def cache_info(path: Path) -> CacheInfo:
    cache = SegmentationCache(Path(path))
    histogram = np.zeros(NUM_CLASSES, dtype=np.int64)
    sizes = []
    with cache:
        for key in cache.keys():
            labels = cache.labels(key)
            histogram += np.bincount(labels.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
            sizes.append((labels.shape[1], labels.shape[0]))
    area = lambda size: (size[0] * size[1], size)  # noqa: E731
    return CacheInfo(cache.path, cache.metadata, len(cache), int(histogram.sum()), histogram,
                     min(sizes, key=area) if sizes else None, max(sizes, key=area) if sizes else None)


# ============================================================================ verify
@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """Problems between a photo folder and its cache; ``ok`` when there are none."""

    checked: int  # photos looked at
    missing: list[str]  # decodable photos without a map
    stale: list[str]  # photos whose content changed since their map was made
    corrupt: list[tuple[str, str]]  # (key, why) entries that cannot be read or make no sense
    undecodable: list[tuple[str, str]]  # (key, why) photos that cannot be read: never cached, not a problem
    extra: list[str]  # maps of photos no longer in the folder: harmless, reported

    @property
    def ok(self) -> bool:
        return not (self.missing or self.stale or self.corrupt)


def check_entry(dataset: h5py.Dataset) -> str:
    """Why an entry is unusable, or "" when it is fine (reads every chunk)."""
    try:
        info = EntryInfo.read_from(dataset, "")
        if dataset.dtype != np.uint8 or dataset.ndim != 2:
            return f"labels are {dataset.dtype} with {dataset.ndim} dims, expected 2-D uint8"
        if dataset.shape != (info.computed_height, info.computed_width):
            return f"labels are {dataset.shape}, attributes say {(info.computed_height, info.computed_width)}"
        labels = dataset[()]
    except (KeyError, ValueError, TypeError, OSError, RuntimeError) as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        return f"label {int(labels.max())} outside 0..{NUM_CLASSES - 1}"
    if len(info.source_sha256) != 64:
        return "source_sha256 attribute is not a sha256"
    return ""


def verify_segcache(photos: Path, path: Path, quiet: bool = True) -> VerifyReport:
    photos, path = Path(photos), Path(path)
    keys = [key_of(rel) for rel in list_images(photos)]
    hashes = _hash_photos(photos, keys, quiet)
    missing, stale, corrupt, undecodable = [], [], [], []
    with open_cache_file(path) as handle:
        entries = handle[ENTRIES]
        stored = {key_from_entry_name(name) for name in entries}
        for key in keys:
            if key not in stored:
                reason = _decode_problem(photos / key)
                (undecodable.append((key, reason)) if reason else missing.append(key))
                continue
            problem = check_entry(entries[entry_name(key)])
            if problem:
                corrupt.append((key, problem))
            elif hashes[key] != _text(entries[entry_name(key)].attrs["source_sha256"]):
                stale.append(key)
        extra = sorted(stored - set(keys))
        for key in extra:
            problem = check_entry(entries[entry_name(key)])
            if problem:
                corrupt.append((key, problem))
    return VerifyReport(len(keys), missing, stale, corrupt, undecodable, extra)


def _decode_problem(path: Path) -> str:
    try:
        read_rgb(path)
    except ImageDecodeError as exc:
        return exc.reason
    return ""


# ============================================================================ preview
@dataclasses.dataclass(frozen=True)
class PreviewSummary:
    written: int
    failed: list[tuple[str, str]]  # (key, why) photos that could not be blended (map written alone)
    out: Path


def preview_path(out_dir: Path, key: str) -> Path:
    """``DIR/<key>.png`` (the photo's own suffix kept, so a.jpg and a.png do not collide)."""
    return out_dir / f"{key}.png"


def preview_image(labels: np.ndarray, photo: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
    """Color-coded map (``palette()[label]``), blended ``(1-alpha)*photo + alpha*color`` over the photo
    resized (bicubic) to the map's size when one is given."""
    colors = palette()[labels.astype(np.int64)]
    if photo is None:
        return colors
    photo = resize_rgb(photo, (labels.shape[1], labels.shape[0]))
    blended = (1.0 - alpha) * photo.astype(np.float32) + alpha * colors.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def preview_segcache(path: Path, out_dir: Path, photos: Path | None = None, alpha: float = 0.5,
                     limit: int = 0, quiet: bool = True) -> PreviewSummary:
    """One PNG per entry (the first ``limit`` keys when ``limit`` > 0) under ``out_dir``."""
    if not 0.0 <= alpha <= 1.0:
        raise AdvsegError("--alpha: must lie in 0..1")
    if photos is not None and not Path(photos).is_dir():
        raise AdvsegError(f"--photos {photos}: no such folder")
    out_dir = Path(out_dir)
    failed = []
    with SegmentationCache(Path(path)) as cache:
        keys = cache.keys()[:limit] if limit else cache.keys()
        for key in progress(keys, desc="segcache preview", quiet=quiet):
            photo = None
            if photos is not None:
                try:
                    photo = read_rgb(Path(photos) / key)
                except ImageDecodeError as exc:
                    failed.append((key, exc.reason))
            write_png(preview_path(out_dir, key), preview_image(cache.labels(key), photo, alpha))
    return PreviewSummary(len(keys), failed, out_dir)


# ============================================================================ merge
@dataclasses.dataclass(frozen=True)
class MergeSummary:
    added: int  # entries copied from the shards
    duplicates: int  # entries present in several inputs with the same photo hash (kept once)
    entries: int
    out: Path
    record: Path


def merge_segcaches(out: Path, shards: Sequence[Path], overwrite: bool = False,
                    commit_every: float = 30.0) -> MergeSummary:
    """Join shard caches into ``out`` (added to an existing compatible ``out`` unless ``overwrite``).

    Shards made with another backend, model, weights, thresholds or resize policy are refused, and so
    is one photo with two different contents in two shards.
    """
    out, shards = check_cache_name(Path(out)), [Path(s) for s in shards]
    if not shards:
        raise AdvsegError("merge: name at least one SHARD.h5")
    if any(out.exists() and s.resolve() == out.resolve() for s in shards):
        raise AdvsegError(f"merge: OUT {out} is also one of the shards; write the merge to a new file")
    metas = []
    for shard in shards:
        with open_cache_file(shard) as handle:
            metas.append(CacheMetadata.read_from(handle, shard))
    for shard, meta in zip(shards[1:], metas[1:]):
        changed = metas[0].differences(meta)
        if changed:
            raise IncompatibleInputError(f"merge: {shard} was made with other settings than {shards[0]} "
                                         f"({'; '.join(changed)}); re-run that shard with the same options")
    record = RunRecord(stage="segcache-merge", options={"shards": [str(s) for s in shards],
                                                       "overwrite": overwrite})
    record_file = record_path_for(out)
    with exclusive_writer_lock(out):
        remove_stale_work_copies(out)
        remove_stale_work_copies(record_file)
        seen = _existing_hashes(out, metas[0], overwrite)
        origin = {key: out for key in seen}
        added = duplicates = 0
        with SegcacheWriter(out, metas[0], fresh=overwrite, commit_every=commit_every) as writer:
            writer.ensure_file()
            for shard in shards:
                with open_cache_file(shard) as handle:
                    for name, dataset in handle[ENTRIES].items():
                        key, digest = key_from_entry_name(name), _text(dataset.attrs.get("source_sha256", ""))
                        if key in seen:
                            if seen[key] != digest:
                                raise IncompatibleInputError(
                                    f"merge: {key} has different photo contents in {origin[key]} and {shard}; "
                                    "re-run the shard whose photo is out of date")
                            duplicates += 1
                            continue
                        writer.copy_entry(dataset, key)
                        seen[key], origin[key] = digest, shard
                        added += 1
                        writer.maybe_commit()
        record.counts["done"], record.counts["skipped"] = added, duplicates
        record.extra["entries"] = len(seen)
        record.finish("complete")
        record.write(record_file)
    return MergeSummary(added, duplicates, len(seen), out, record_file)
