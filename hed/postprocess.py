"""Turn an HED edge-probability map into a pix2pix-style sketch.

Re-implements, in NumPy/SciPy/scikit-image, the post-processing of the public
pix2pix / CycleGAN ``scripts/edges/PostprocessHED.m`` (which needs MATLAB, Piotr
Dollar's toolbox and the ``edgesNmsMex`` MEX file). Reproducing it matters because
the edges2shoes/edges2handbags style datasets - and models trained on them - expect
exactly these 1-pixel, de-noised black lines:

    resize (bicubic, antialiased) -> orientation from a triangle-smoothed map
    -> edge NMS (r=1, s=5, m=1.01) -> threshold 25/255 -> thin -> drop blobs < 5 px
    -> 0 = line, 255 = background.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.morphology import thin

__all__ = [
    "conv_tri",
    "edge_orientation",
    "edges_nms",
    "imresize_bicubic",
    "pix2pix_postprocess",
    "remove_small_components",
    "soft_sketch",
]


def _as_map(prob: np.ndarray) -> np.ndarray:
    """Accept (H, W), (1, H, W), (H, W, 1) or (1, 1, H, W); MATLAB took channel 1 of 3-D maps."""
    array = np.asarray(prob, dtype=np.float32)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3:
        array = array[..., 0]
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"expected a non-empty 2-D probability map, got shape {np.shape(prob)}")
    return array


def imresize_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize with antialiasing when shrinking, like MATLAB ``imresize``.

    PIL's float ('F') resampling widens the cubic kernel (a = -0.5, MATLAB's choice)
    by the shrink factor, which is what MATLAB's default antialiasing does; OpenCV's
    INTER_CUBIC does not antialias and would alias thin edges away.
    """
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    return np.asarray(pil.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)


def conv_tri(image: np.ndarray, radius: int) -> np.ndarray:
    """Dollar's ``convTri``: separable triangle filter of integer ``radius``, symmetric padding.

    Kernel [1, 2, .., r+1, .., 2, 1] / (r+1)^2 - a cheap smoother with compact support
    used to get stable second derivatives for the edge orientation. ``scipy``'s
    'reflect' mode (d c b a | a b c d) is MATLAB's 'symmetric' padding.
    """
    if radius < 0 or int(radius) != radius:
        raise ValueError(f"radius must be a non-negative integer, got {radius}")
    radius = int(radius)
    array = np.asarray(image, dtype=np.float32)
    if radius == 0:
        return array.copy()
    ramp = np.arange(1, radius + 2, dtype=np.float64)
    kernel = np.concatenate([ramp, ramp[-2::-1]]) / (radius + 1) ** 2
    out = ndimage.correlate1d(array, kernel, axis=0, mode="reflect")
    return ndimage.correlate1d(out, kernel, axis=1, mode="reflect")


def edge_orientation(edges: np.ndarray, radius: int = 4) -> np.ndarray:
    """Edge normal orientation in [0, pi) from second derivatives of a smoothed map.

    Same formula as Dollar's structured-edges code: on a ridge the second derivative
    across the edge dominates, so atan(Oyy * sign(-Oxy) / Oxx) points across it.
    ``np.gradient`` = MATLAB ``gradient``/``gradient2`` (central inside, one-sided at borders).
    """
    smooth = conv_tri(edges, radius)
    ox = np.gradient(smooth, axis=1) if smooth.shape[1] > 1 else np.zeros_like(smooth)
    oy = np.gradient(smooth, axis=0) if smooth.shape[0] > 1 else np.zeros_like(smooth)
    oxx = np.gradient(ox, axis=1) if ox.shape[1] > 1 else np.zeros_like(ox)
    oxy = np.gradient(oy, axis=1) if oy.shape[1] > 1 else np.zeros_like(oy)
    oyy = np.gradient(oy, axis=0) if oy.shape[0] > 1 else np.zeros_like(oy)
    return np.mod(np.arctan(oyy * np.sign(-oxy) / (oxx + 1e-5)), np.pi).astype(np.float32)


def _bilinear_clamped(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear sample as edgesNmsMex does: coordinates clamped to [0, size - 1.001]."""
    h, w = image.shape
    x = np.clip(x, 0.0, max(w - 1.001, 0.0)).astype(np.float32)
    y = np.clip(y, 0.0, max(h - 1.001, 0.0)).astype(np.float32)
    x0 = x.astype(np.intp)
    y0 = y.astype(np.intp)
    dx = x - x0
    dy = y - y0
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    return (
        image[y0, x0] * (1 - dx) * (1 - dy)
        + image[y0, x1] * dx * (1 - dy)
        + image[y1, x0] * (1 - dx) * dy
        + image[y1, x1] * dx * dy
    )


def _border_weights(length: int, s: int) -> np.ndarray:
    """Ramp 0, 1/s, .., 1, .., 1/s, 0 across ``length`` (distance to the nearer border / s)."""
    index = np.arange(length)
    return (np.minimum(np.minimum(index, length - 1 - index), s) / float(s)).astype(np.float32)


def edges_nms(
    edges: np.ndarray, orientation: np.ndarray, r: int = 1, s: int = 5, m: float = 1.01
) -> np.ndarray:
    """Dollar's ``edgesNmsMex``, vectorised: thin edges to their ridge along the normal.

    A pixel survives if ``m * e`` is not below the bilinearly sampled map at distances
    1..r on both sides along ``orientation`` (m slightly > 1 keeps plateaus alive).
    Then values within ``s`` px of the border are ramped down, because HED responds
    to the image frame itself. Comparisons read the *input* map, not the partially
    suppressed one, exactly like the C code (which writes to a copy).
    """
    e = np.asarray(edges, dtype=np.float32)
    o = np.asarray(orientation, dtype=np.float32)
    if e.shape != o.shape or e.ndim != 2:
        raise ValueError(f"edges {e.shape} and orientation {o.shape} must be the same 2-D shape")
    h, w = e.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    cos, sin = np.cos(o), np.sin(o)
    scaled = e * np.float32(m)
    suppressed = np.zeros(e.shape, dtype=bool)
    for d in range(-r, r + 1):
        if d == 0:
            continue
        suppressed |= scaled < _bilinear_clamped(e, xs + d * cos, ys + d * sin)
    out = np.where(suppressed & (e != 0), np.float32(0), e)
    s = min(s, w // 2, h // 2)
    if s > 0:
        out = out * _border_weights(h, s)[:, None] * _border_weights(w, s)[None, :]
    return out.astype(np.float32)


def remove_small_components(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """MATLAB ``bwareaopen``: drop 8-connected components with fewer than ``min_pixels`` pixels.

    Written with ``ndimage.label`` instead of ``skimage.morphology.remove_small_objects``
    whose ``min_size`` argument changed meaning/deprecation across releases.
    """
    mask = np.asarray(mask, dtype=bool)
    if min_pixels <= 1 or not mask.any():
        return mask.copy()
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def pix2pix_postprocess(
    prob: np.ndarray,
    size: int | None = 256,
    threshold: float = 25 / 255,
    small_edge: int = 5,
) -> np.ndarray:
    """HED probability (H, W) in [0, 1] -> pix2pix sketch, uint8, 0 = line, 255 = paper.

    Args:
        prob: fused HED edge probability (``HED.forward`` output, squeezed).
        size: output is (size, size) like the pix2pix datasets (aspect is *not* kept,
            as in the original script); ``None`` or 0 keeps the map's size.
        threshold: NMS response needed to become a line (25/255 in the script).
        small_edge: lines with fewer 8-connected pixels are dropped as noise.
    """
    e = _as_map(prob)
    if size:
        e = imresize_bicubic(e, int(size), int(size))
    nms = edges_nms(e, edge_orientation(e), r=1, s=5, m=1.01)
    lines = nms >= max(np.finfo(np.float64).eps, threshold)
    lines = thin(lines)
    lines = remove_small_components(lines, small_edge)
    return np.where(lines, 0, 255).astype(np.uint8)


def soft_sketch(prob: np.ndarray) -> np.ndarray:
    """Un-thresholded sketch: round(255 - 255 p), uint8 (dark = likely edge).

    The lighter public scripts save HED output this way; it keeps soft, thick strokes.
    """
    p = np.clip(_as_map(prob).astype(np.float64), 0.0, 1.0)
    return np.round(255.0 - 255.0 * p).astype(np.uint8)
