"""Fixtures of the segmentation-cache tests: small real photos and the honest ``test-color`` Seg."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import photo
from tests.segcache import color_segmenter  # noqa: F401  (registers the test-color backend)

CROP_SOURCES = ("astronaut", "chelsea", "coffee", "rocket")


def make_crops(folder: Path, count: int, sizes: tuple[tuple[int, int], ...] = ((48, 40), (40, 48), (48, 48))) -> Path:
    """``count`` small, different JPEG crops of real scikit-image photos; every 5th in a subfolder.

    Several (width, height) sizes, so batching has to group equal sizes.
    """
    sources = [photo(name, 160) for name in CROP_SOURCES]
    for index in range(count):
        width, height = sizes[index % len(sizes)]
        source = sources[index % len(sources)]
        top, left = (index * 7) % (source.shape[0] - height), (index * 13) % (source.shape[1] - width)
        crop = source[top:top + height, left:left + width]
        target = folder / ("sub" if index % 5 == 4 else "") / f"crop_{index:02d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).save(target, quality=92)
    return folder


@pytest.fixture
def crops(tmp_path: Path) -> Path:
    return make_crops(tmp_path / "photos", 8)
