"""pix2pix post-processing (PostprocessHED.m) on synthetic maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import thin

from hed import conv_tri, edge_orientation, edges_nms, pix2pix_postprocess, soft_sketch
from hed.postprocess import imresize_bicubic, remove_small_components

EIGHT = np.ones((3, 3), dtype=bool)


def _gaussian_bar(height: int, width: int, centre: float, sigma: float) -> np.ndarray:
    """Vertical ridge exp(-(x - centre)^2 / 2 sigma^2), constant along y."""
    x = np.arange(width)
    return np.tile(np.exp(-((x - centre) ** 2) / (2 * sigma**2)), (height, 1)).astype(np.float32)


# --------------------------------------------------------------------------- building blocks


def test_conv_tri_is_the_triangle_filter_with_symmetric_padding():
    rng = np.random.default_rng(0)
    image = rng.random((9, 11)).astype(np.float32)
    r = 2
    kernel = np.array([1, 2, 3, 2, 1]) / 9.0
    padded = np.pad(image.astype(np.float64), r, mode="symmetric")  # MATLAB 'symmetric'
    expected = np.zeros_like(image, dtype=np.float64)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            expected += kernel[dy + r] * kernel[dx + r] * padded[r + dy : r + dy + 9, r + dx : r + dx + 11]
    np.testing.assert_allclose(conv_tri(image, r), expected, atol=1e-6)
    np.testing.assert_allclose(conv_tri(np.full((5, 6), 0.3), 4), 0.3, atol=1e-6)  # radius > size


def test_orientation_is_the_edge_normal():
    vertical = _gaussian_bar(30, 31, 15, 2.0)
    assert np.allclose(edge_orientation(vertical)[5:-5, 13:18], 0.0, atol=1e-3)
    yy, xx = np.mgrid[0:40, 0:40]
    diagonal = np.exp(-(((xx - yy) / np.sqrt(2)) ** 2) / 4.5).astype(np.float32)
    assert np.allclose(edge_orientation(diagonal)[8:-8, 8:-8][np.eye(24, dtype=bool)], 3 * np.pi / 4, atol=1e-3)


def test_nms_keeps_only_the_ridge_of_a_blurred_vertical_bar():
    height, width, ridge = 40, 41, 20
    bar = _gaussian_bar(height, width, ridge, 2.0)
    out = edges_nms(bar, edge_orientation(bar), r=1, s=5, m=1.01)
    inner = out[5 : height - 5]  # rows away from the top/bottom ramp
    assert np.array_equal(np.nonzero(inner.any(axis=0))[0], [ridge])
    np.testing.assert_array_equal(inner[:, ridge], bar[5 : height - 5, ridge])  # ridge value untouched (1.0)


@pytest.mark.parametrize("flip", [False, True])
def test_nms_keeps_only_the_ridge_of_a_diagonal_bar(flip):
    yy, xx = np.mgrid[0:48, 0:48]
    bar = np.exp(-(((xx - yy) / np.sqrt(2)) ** 2) / (2 * 1.5**2)).astype(np.float32)
    if flip:
        bar = np.ascontiguousarray(bar[:, ::-1])
    out = edges_nms(bar, edge_orientation(bar)) > 0
    ys, xs = np.nonzero(out[6:-6, 6:-6])
    on_ridge = (xs + ys == 35) if flip else (xs == ys)
    assert on_ridge.all() and len(xs) == 36


def test_nms_suppresses_along_the_given_orientation():
    """With the normal given as pi/2 a horizontal bar thins to its ridge row.

    Faithful quirk of Dollar's formula: for an *exactly* horizontal bar Oxy == 0, so
    sign(-Oxy) = 0 and the estimated orientation is 0 (no thinning). Real maps never
    have Oxy exactly 0 along a ridge; we keep the original's behaviour.
    """
    bar = np.ascontiguousarray(_gaussian_bar(41, 40, 20, 2.0).T)
    out = edges_nms(bar, np.full(bar.shape, np.pi / 2, np.float32))
    assert np.array_equal(np.nonzero(out[:, 5:-5].any(axis=1))[0], [20])
    assert np.allclose(edge_orientation(bar), 0.0)


def test_nms_border_ramp():
    """Nothing is suppressed on a flat map (m = 1.01 > 1); only the 5-px border ramp applies."""
    out = edges_nms(np.ones((20, 23), np.float32), np.zeros((20, 23), np.float32), s=5)
    ramp_x = np.minimum(np.minimum(np.arange(23), 22 - np.arange(23)), 5) / 5
    ramp_y = np.minimum(np.minimum(np.arange(20), 19 - np.arange(20)), 5) / 5
    np.testing.assert_allclose(out, ramp_y[:, None] * ramp_x[None, :], atol=1e-6)


def test_imresize_antialiases_and_keeps_linear_ramps():
    checker = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)
    assert np.abs(imresize_bicubic(checker, 16, 16) - 0.5).max() < 0.01  # aliasing would give 0/1
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (8, 1))
    centres = (np.arange(32) + 0.5) * 2 - 0.5  # MATLAB/PIL pixel-centre mapping
    expected = np.interp(centres, np.arange(64), np.linspace(0, 1, 64))
    np.testing.assert_allclose(imresize_bicubic(ramp, 8, 32)[:, 3:-3], np.tile(expected[3:-3], (8, 1)), atol=1e-5)


def test_remove_small_components_is_bwareaopen_with_8_connectivity():
    mask = np.zeros((12, 12), bool)
    mask[1, 1:6] = True  # 5 px: kept
    mask[4, 1:5] = True  # 4 px: removed
    mask[[7, 8, 9, 10, 11], [1, 2, 3, 4, 5]] = True  # 5 px diagonal, 8-connected: kept
    out = remove_small_components(mask, 5)
    assert out[1, 1:6].all() and not out[4].any() and out[11, 5] and out.sum() == 10


# --------------------------------------------------------------------------- the whole pipeline


def test_ring_becomes_a_thin_line_on_the_ring():
    yy, xx = np.mgrid[0:96, 0:96]
    radius = np.hypot(yy - 47.5, xx - 47.5)
    prob = (0.9 * np.exp(-((radius - 30) ** 2) / (2 * 2.5**2))).astype(np.float32)
    sketch = pix2pix_postprocess(prob, size=None)
    assert sketch.dtype == np.uint8 and sketch.shape == (96, 96)
    assert set(np.unique(sketch)) == {0, 255}
    line = sketch == 0
    assert np.abs(radius[line] - 30).max() <= 1.0
    assert line.sum() > 0.8 * 2 * np.pi * 30 / np.sqrt(2)  # closed: at least the 8-connected minimum
    assert ndimage.label(line, structure=EIGHT)[1] == 1
    assert np.array_equal(thin(line), line)
    assert not (line[:-1, :-1] & line[1:, :-1] & line[:-1, 1:] & line[1:, 1:]).any()


def test_default_size_is_256_square_and_none_keeps_size():
    yy, xx = np.mgrid[0:60, 0:90]
    prob = (0.9 * np.exp(-((xx - 45) ** 2) / 8.0)).astype(np.float32)
    assert pix2pix_postprocess(prob).shape == (256, 256)
    assert pix2pix_postprocess(prob, size=0).shape == (60, 90)
    assert pix2pix_postprocess(prob[None, None], size=128).shape == (128, 128)  # (1, 1, H, W) accepted


def test_small_lines_and_dots_are_removed():
    prob = np.zeros((40, 40), np.float32)
    prob[10, 10:15] = 1.0  # 5 px: kept
    prob[20, 10:14] = 1.0  # 4 px: removed
    prob[30, 30] = 1.0  # lone dot: removed
    lines = np.argwhere(pix2pix_postprocess(prob, size=None) == 0).tolist()
    assert lines == [[10, x] for x in range(10, 15)]


def test_threshold_is_25_over_255():
    prob = np.zeros((40, 40), np.float32)
    prob[10, 5:30] = 0.09  # below 25/255 = 0.098
    prob[25, 5:30] = 0.11
    rows = np.unique(np.nonzero(pix2pix_postprocess(prob, size=None) == 0)[0])
    assert rows.tolist() == [25]
    assert (pix2pix_postprocess(prob, size=None, threshold=0.05) == 0)[10].any()


def test_soft_sketch():
    prob = np.array([[0.0, 0.5, 1.0], [-0.2, 1.3, 0.25]], np.float32)
    out = soft_sketch(prob)
    assert out.dtype == np.uint8
    assert out.tolist() == [[255, 128, 0], [255, 0, 191]]
