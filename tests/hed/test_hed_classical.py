"""XDoG and Canny: black 1-bit lines on white, exactly on the edges of a synthetic square."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from hed import canny, xdog

SIZE, LO, HI = 64, 16, 48  # dark square [LO, HI) x [LO, HI) on a light background


@pytest.fixture(scope="module")
def square() -> np.ndarray:
    gray = np.full((SIZE, SIZE), 200, np.uint8)
    gray[LO:HI, LO:HI] = 50
    return np.stack([gray] * 3, axis=-1)


def _distance_to_outline() -> np.ndarray:
    """Distance (px) of every pixel to the square's outline (its boundary between pixels)."""
    inside = np.zeros((SIZE, SIZE), bool)
    inside[LO:HI, LO:HI] = True
    outline = inside ^ ndimage.binary_erosion(inside)  # inner boundary pixels
    outline |= ndimage.binary_dilation(inside) & ~inside  # outer boundary pixels
    return ndimage.distance_transform_edt(~outline)


# Canny draws a 1-px line on the step; XDoG's line is the dark-side band where the DoG
# dips below epsilon, about k * sigma wide (3 px inside the square with the defaults).
@pytest.mark.parametrize("method, reach", [(xdog, 2.0), (canny, 1.0)])
def test_black_lines_on_the_square_outline(square, method, reach):
    out = method(square)
    assert out.dtype == np.uint8 and out.shape == (SIZE, SIZE)
    assert set(np.unique(out)) == {0, 255}
    line = out == 0
    distance = _distance_to_outline()
    assert distance[line].max() <= reach  # every line pixel hugs the outline
    assert line.mean() < 0.2  # mostly white paper
    for side in (line[LO - 2 : LO + 2, LO + 4 : HI - 4], line[HI - 2 : HI + 2, LO + 4 : HI - 4]):
        assert side.any(axis=0).all()  # top and bottom edges drawn without gaps
    for side in (line[LO + 4 : HI - 4, LO - 2 : LO + 2], line[LO + 4 : HI - 4, HI - 2 : HI + 2]):
        assert side.any(axis=1).all()  # left and right edges too


@pytest.mark.parametrize("method", [xdog, canny])
def test_gray_and_rgb_inputs_agree(square, method):
    np.testing.assert_array_equal(method(square[..., 0]), method(square))


def test_flat_image_has_no_lines():
    flat = np.full((32, 32, 3), 120, np.uint8)
    assert (xdog(flat) == 255).all() and (canny(flat) == 255).all()


def test_canny_lines_are_thin(square):
    line = canny(square) == 0
    assert not (line[:-1, :-1] & line[1:, :-1] & line[:-1, 1:] & line[1:, 1:])[LO + 4 : HI - 4, LO + 4 : HI - 4].any()
    # one line per side: each row crossing the left/right edges has at most 2 line pixels there
    assert line[LO + 4 : HI - 4, LO - 3 : LO + 3].sum(axis=1).max() <= 2


def test_xdog_parameters_act_as_documented(square):
    strong = (xdog(square, epsilon=-0.02) == 0).sum()
    weak_only = (xdog(square, epsilon=-0.5) == 0).sum()  # far below any D: nothing is a line
    assert strong > 0 and weak_only == 0
    soft = xdog(square, phi=10.0)
    assert len(np.unique(soft)) > 2  # the soft ramp gives grey levels
    assert (soft[xdog(square) == 255] == 255).all()  # ...only where the hard version has lines


def test_rejects_non_uint8(square):
    with pytest.raises(TypeError):
        xdog(square.astype(np.float32))
    with pytest.raises(TypeError):
        canny(square.astype(np.float32))
