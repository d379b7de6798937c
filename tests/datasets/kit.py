"""A tiny COCO-style dataset for the tests: real photos (scikit-image's) in a mirror of the COCO host's
layout, and the advseg list that names them with their size and sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

from advseg_cli.datasets.lists import ListEntry, write_list
from tests.helpers import photo

TRAIN = ("astronaut", "chelsea", "coffee", "rocket")
TEST = ("astronaut", "chelsea", "coffee")


def _jpeg(path: Path, name: str, size: int, variant: int) -> None:
    rgb = photo(name, size + 8 * variant)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=92)


def build_mirror(root: Path, size: int = 72) -> list[ListEntry]:
    """Photos under ROOT/train2017 and ROOT/val2017 (as images.cocodataset.org serves them)."""
    entries = []
    for split, folder, names, variant in (("train", "train2017", TRAIN, 0), ("test", "val2017", TEST, 1)):
        for index, name in enumerate(names):
            file = f"{index + 1 + (100 if split == 'test' else 0):012d}.jpg"
            target = root / folder / file
            _jpeg(target, name, size, variant)
            data = target.read_bytes()
            entries.append(ListEntry(split, file, f"{folder}/{file}", len(data), hashlib.sha256(data).hexdigest()))
    return entries


def write_lists(folder: Path, name: str, entries: list[ListEntry]) -> Path:
    write_list(folder / f"{name}.tsv", entries, [f"{name}: test fixture"])
    return folder
