"""Training data: sketches (domain A), photos (domain B) and the photos' cached label maps.

Every random choice (which B goes with an A in unpaired training, crop offsets, flips) comes from a
generator seeded by (seed, epoch, index). The data of a step therefore does not depend on the number
of DataLoader workers or processes, and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from advseg_cli.errors import AdvsegError, ImageDecodeError, IncompatibleInputError
from advseg_cli.images import list_images, read_rgb
from advseg_cli.segcache import SegmentationCache

SEGCACHE_MISSING = ("error", "skip")


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """The public code's ``resize_and_crop`` + flip: resize to load x load (bicubic), random crop, flip."""

    load_size: int = 286
    crop_size: int = 256
    flip: bool = True

    def draw(self, generator: torch.Generator) -> tuple[int, int, bool]:
        """Crop offsets (x, y) and the flip of one sample."""
        span = self.load_size - self.crop_size
        x = int(torch.randint(0, span + 1, (1,), generator=generator))
        y = int(torch.randint(0, span + 1, (1,), generator=generator))
        flip = self.flip and bool(torch.rand((), generator=generator) < 0.5)
        return x, y, flip


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator owned by one sample of one epoch (independent of workers and ranks)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 10_000_019 + index)


def _crop_flip(array: np.ndarray, x: int, y: int, size: int, flip: bool) -> np.ndarray:
    crop = array[y:y + size, x:x + size]
    return crop[:, ::-1] if flip else crop


def photo_tensor(rgb: np.ndarray, aug: Augmentation, x: int, y: int, flip: bool) -> Tensor:
    """uint8 HxWx3 -> [3, crop, crop] float in [-1, 1] after resize, crop and flip."""
    image = Image.fromarray(rgb).resize((aug.load_size, aug.load_size), Image.BICUBIC)
    crop = _crop_flip(np.asarray(image), x, y, aug.crop_size, flip)
    return torch.from_numpy(np.array(crop)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def labels_tensor(labels: np.ndarray, aug: Augmentation, x: int, y: int, flip: bool) -> Tensor:
    """Cached label map -> [crop, crop] uint8, resized with nearest neighbour, same crop and flip."""
    image = Image.fromarray(labels).resize((aug.load_size, aug.load_size), Image.NEAREST)
    return torch.from_numpy(np.array(_crop_flip(np.asarray(image), x, y, aug.crop_size, flip)))


class _Domain:
    """One folder of images, listed once, read lazily."""

    def __init__(self, root: Path, what: str) -> None:
        self.root = Path(root)
        try:
            self.files = list_images(self.root)
        except AdvsegError as exc:
            raise AdvsegError(f"{what}: {exc}") from None
        if not self.files:
            raise AdvsegError(f"{what}: no image files in {self.root}")

    def __len__(self) -> int:
        return len(self.files)


class SketchPhotoDataset(Dataset):
    """Sketch/photo training samples for CycleGAN (unpaired) or Pix2Pix (paired).

    Unpaired: item i is sketch ``i % len(A)`` with a photo drawn at random from B. Paired: sketch and
    photo share their relative path (stems may differ in extension) and their crop and flip.
    Items: ``real_A`` [3,crop,crop] (gray replicated), ``real_B`` [3,crop,crop], and, with a segcache,
    ``real_B_labels`` [crop,crop] uint8. A file that cannot be decoded is skipped with a warning: the
    next sample takes its place, deterministically.
    """

    def __init__(self, sketches: Path, photos: Path, *, paired: bool, aug: Augmentation, seed: int,
                 segcache: Path | None = None, segcache_missing: str = "error",
                 max_items: int | None = None) -> None:
        if aug.crop_size > aug.load_size:
            raise AdvsegError(f"--crop-size {aug.crop_size} is larger than --load-size {aug.load_size}")
        self.A, self.B = _Domain(sketches, "sketches"), _Domain(photos, "photos")
        self.paired, self.aug, self.seed, self.epoch = paired, aug, seed, 0
        self.cache = SegmentationCache(segcache) if segcache is not None else None
        self.pairs = self._pair_files() if paired else None
        if self.cache is not None:
            self._check_cache_covers_photos(segcache_missing)
        self.length = len(self.pairs) if paired else max(len(self.A), len(self.B))
        if max_items:
            self.length = min(self.length, max_items)
        self._warned: set[str] = set()

    # -- set-up checks
    def _pair_files(self) -> list[tuple[Path, Path]]:
        photos = {path.with_suffix(""): path for path in self.B.files}
        pairs = [(a, photos[a.with_suffix("")]) for a in self.A.files if a.with_suffix("") in photos]
        if not pairs:
            raise AdvsegError(f"paired training: no sketch in {self.A.root} has a photo with the same relative "
                              f"path in {self.B.root}")
        return pairs

    def _check_cache_covers_photos(self, missing_policy: str) -> None:
        """Every photo needs a fresh map before the first step, or (skip) photos without one are dropped."""
        assert self.cache is not None
        missing = [p for p in self.B.files if p.as_posix() not in self.cache]
        stale = [p for p in self.B.files if p.as_posix() in self.cache
                 and self.cache.is_stale(p.as_posix(), self.B.root / p)]
        problems = missing + stale
        if problems and missing_policy == "error":
            what = f"{len(missing)} photos have no map" if missing else f"{len(stale)} maps are stale"
            raise IncompatibleInputError(
                f"--segcache {self.cache.path}: {what} (first: {problems[0].as_posix()}); run "
                f"`advseg segcache {self.B.root} {self.cache.path}` or pass --segcache-missing skip")
        if problems:
            dropped = set(problems)
            self.B.files = [p for p in self.B.files if p not in dropped]
            if self.pairs is not None:
                self.pairs = [pair for pair in self.pairs if pair[1] not in dropped]
            if not self.B.files or (self.pairs is not None and not self.pairs):
                raise IncompatibleInputError(f"--segcache {self.cache.path}: no photo has a usable map")
            warnings.warn(f"--segcache-missing skip: {len(problems)} photos without a fresh map are not used",
                          stacklevel=2)

    def set_epoch(self, epoch: int) -> None:
        """Called by the loop before each epoch (in every process), as DistributedSampler.set_epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def _files_of(self, index: int, generator: torch.Generator) -> tuple[Path, Path]:
        if self.pairs is not None:
            return self.pairs[index % len(self.pairs)]
        b_index = int(torch.randint(0, len(self.B), (1,), generator=generator))
        return self.A.files[index % len(self.A)], self.B.files[b_index]

    def _load(self, index: int) -> dict[str, Any]:
        generator = sample_generator(self.seed, self.epoch, index)
        sketch_file, photo_file = self._files_of(index, generator)
        x, y, flip = self.aug.draw(generator)
        sketch = read_rgb(self.A.root / sketch_file)
        gray = np.asarray(Image.fromarray(sketch).convert("L").convert("RGB"))
        if not self.paired:
            x_b, y_b, flip_b = self.aug.draw(generator)  # unpaired domains are cropped independently
        else:
            x_b, y_b, flip_b = x, y, flip
        item = {"real_A": photo_tensor(gray, self.aug, x, y, flip),
                "real_B": photo_tensor(read_rgb(self.B.root / photo_file), self.aug, x_b, y_b, flip_b),
                "index": index}
        if self.cache is not None:
            item["real_B_labels"] = labels_tensor(self.cache.labels(photo_file.as_posix()), self.aug, x_b, y_b, flip_b)
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        for attempt in range(len(self)):
            candidate = (index + attempt) % len(self)
            try:
                return self._load(candidate)
            except ImageDecodeError as exc:
                if str(exc.path) not in self._warned:
                    self._warned.add(str(exc.path))
                    warnings.warn(f"skipping undecodable image {exc.path}: {exc.reason}", stacklevel=2)
        raise AdvsegError("no image of the training data could be decoded")
