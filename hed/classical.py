"""Weight-free line extractors: XDoG and Canny, as black lines on white uint8 images.

They give sketch inputs when no HED weights are available and act as baselines /
augmentations (models trained on one extractor overfit its line style).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["canny", "to_gray", "xdog"]


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W) or RGB (H, W, 3) / RGBA -> uint8 (H, W) luma (ITU-R 601, RGB order)."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {array.dtype}")
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[2] == 1:
        return array[..., 0]
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return cv2.cvtColor(np.ascontiguousarray(array[..., :3]), cv2.COLOR_RGB2GRAY)
    raise ValueError(f"expected (H, W) or (H, W, 3|4) image, got shape {array.shape}")


def xdog(
    image: np.ndarray,
    sigma: float = 1.0,
    k: float = 1.6,
    tau: float = 0.98,
    epsilon: float = -0.02,
    phi: float | None = None,
) -> np.ndarray:
    """Extended Difference of Gaussians (Winnemoeller, Kyprianidis & Olsen 2012).

    D = G(sigma) - tau * G(k * sigma) on the gray image scaled to [0, 1]. In flat
    areas D = (1 - tau) * I >= 0 (paper); on the dark side of an edge D dips below zero,
    so "D < epsilon" marks a line hugging the edge.

    Args:
        image: uint8 gray (H, W) or RGB (H, W, 3).
        sigma: scale of the fine Gaussian in px; larger = fewer, thicker lines.
        k: ratio of the coarse to the fine Gaussian (1.6 approximates a Laplacian of Gaussian).
        tau: weight of the coarse Gaussian; < 1 lets flat regions stay white, closer
            to 1 gives more, noisier lines.
        epsilon: threshold on D; more negative = only stronger edges become lines.
        phi: ``None`` (default) = hard threshold, output only 0/255 (the clean
            line-drawing form). A number gives the paper's soft ramp
            1 + tanh(phi * (D - epsilon)) below epsilon (grey anti-aliased lines).

    Returns:
        uint8 (H, W), 0 = line, 255 = background.
    """
    gray = to_gray(image).astype(np.float32) / 255.0
    fine = cv2.GaussianBlur(gray, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
    coarse = cv2.GaussianBlur(gray, (0, 0), sigmaX=k * sigma, borderType=cv2.BORDER_REFLECT)
    dog = fine - tau * coarse
    if phi is None:
        return np.where(dog < epsilon, 0, 255).astype(np.uint8)
    soft = np.where(dog >= epsilon, 1.0, 1.0 + np.tanh(phi * (dog - epsilon)))
    return np.clip(np.round(soft * 255.0), 0, 255).astype(np.uint8)


def canny(image: np.ndarray, low: float = 100, high: float = 200, blur_sigma: float = 1.0) -> np.ndarray:
    """Canny edges (OpenCV) as black 1-px lines on white.

    Args:
        image: uint8 gray (H, W) or RGB (H, W, 3).
        low: hysteresis low threshold on the Sobel gradient magnitude (0..~1000 scale).
        high: hysteresis high threshold; edges must reach it somewhere to be kept.
        blur_sigma: Gaussian pre-blur in px against noise/texture; 0 disables it.

    Returns:
        uint8 (H, W), 0 = line, 255 = background.
    """
    gray = to_gray(image)
    if blur_sigma > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), sigmaX=blur_sigma, borderType=cv2.BORDER_REFLECT)
    edges = cv2.Canny(np.ascontiguousarray(gray), float(low), float(high))
    return np.where(edges > 0, 0, 255).astype(np.uint8)
