"""Independent NumPy reference of the HED forward pass, reading the Keras h5 itself.

Deliberately shares nothing with ``hed``: NHWC layout, im2col convolutions on the raw
Keras (kh, kw, in, out) kernels, TensorFlow's 'same' pooling arithmetic and a from-scratch
half-pixel bilinear resize. If the PyTorch port mis-transposes a kernel, swaps BGR,
pools with the wrong rounding or resizes with align_corners=True, the two disagree.
Computed in float64 so that it is the accurate side of the comparison.
"""

from __future__ import annotations

import re

import h5py
import numpy as np

MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434])


def read_keras_hed(path: str) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """{'block1'..'block5': [(kernel, bias), ...] in conv order, 'dsn1'..'dsn5', 'fuse': [(k, b)]}."""
    layers: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    with h5py.File(path, "r") as f:
        for b in range(1, 6):
            convs = []
            for name, group in f[f"block{b}/layers"].items():
                if "0" not in group["vars"]:
                    continue
                number = int(re.search(r"conv(\d+)$", group["vars"].attrs["name"]).group(1))
                convs.append((number, group["vars/0"][()].astype(np.float64), group["vars/1"][()].astype(np.float64)))
            layers[f"block{b}"] = [(k, bias) for _, k, bias in sorted(convs, key=lambda c: c[0])]
        for name in ["dsn1", "dsn2", "dsn3", "dsn4", "dsn5", "fuse"]:
            layers[name] = [(f[f"{name}/vars/0"][()].astype(np.float64), f[f"{name}/vars/1"][()].astype(np.float64))]
    return layers


def conv_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """'same' cross-correlation of an (H, W, C) map by im2col; kernel (kh, kw, C, O), odd kh/kw."""
    kh, kw, c, o = kernel.shape
    h, w, _ = x.shape
    ph, pw = kh // 2, kw // 2
    padded = np.pad(x, ((ph, ph), (pw, pw), (0, 0)))
    cols = np.empty((h, w, kh, kw, c))
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j, :] = padded[i : i + h, j : j + w, :]
    return cols.reshape(h * w, kh * kw * c).dot(kernel.reshape(kh * kw * c, o)).reshape(h, w, o) + bias


def maxpool_same(x: np.ndarray) -> np.ndarray:
    """TF MaxPooling2D(2, 2, 'same'): out = ceil(n/2), missing bottom/right cells padded with -inf."""
    h, w, c = x.shape
    oh, ow = -(-h // 2), -(-w // 2)
    padded = np.full((2 * oh, 2 * ow, c), -np.inf)
    padded[:h, :w] = x
    return padded.reshape(oh, 2, ow, 2, c).max(axis=(1, 3))


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel-centre source indices and weights along one axis (TF2 / OpenCV convention)."""
    centre = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    centre = np.clip(centre, 0, None)
    low = np.floor(centre).astype(int)
    low = np.minimum(low, n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    frac = centre - low
    return low, high, frac


def resize_bilinear(x: np.ndarray, h: int, w: int) -> np.ndarray:
    y0, y1, fy = _axis_weights(x.shape[0], h)
    x0, x1, fx = _axis_weights(x.shape[1], w)
    rows = x[y0] * (1 - fy)[:, None, None] + x[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def hed_logits(rgb: np.ndarray, layers: dict) -> tuple[list[np.ndarray], np.ndarray]:
    """uint8/float RGB (H, W, 3) in 0..255 -> ([5 side logits (H, W)], fused logit (H, W)).

    The logits, not the probability: with random weights the fused sigmoid saturates at 0 or 1, which
    would hide a wrong layer; the logits keep every difference.
    """
    h, w, _ = rgb.shape
    x = rgb[:, :, ::-1].astype(np.float64) - MEAN_BGR
    sides = []
    for b in range(1, 6):
        if b > 1:
            x = maxpool_same(x)
        for kernel, bias in layers[f"block{b}"]:
            x = np.maximum(conv_same(x, kernel, bias), 0)
        kernel, bias = layers[f"dsn{b}"][0]
        side = conv_same(x, kernel, bias)
        sides.append(resize_bilinear(side, h, w)[:, :, 0])
    kernel, bias = layers["fuse"][0]
    return sides, conv_same(np.stack(sides, axis=-1), kernel, bias)[:, :, 0]


def hed_forward(rgb: np.ndarray, layers: dict) -> tuple[list[np.ndarray], np.ndarray]:
    """uint8/float RGB (H, W, 3) in 0..255 -> ([5 side logits (H, W)], fused probability (H, W))."""
    sides, fused = hed_logits(rgb, layers)
    return sides, 1.0 / (1.0 + np.exp(-fused))
