"""Segmentation scores: a confusion matrix over many images, and the mean IoU read from it.

The IoU of a class is computed over all pixels of a set of images (not averaged per image), the
convention of semantic segmentation benchmarks and of the segmentation-consistency scores of
semantic image synthesis papers. Classes absent from both prediction and truth do not count.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(predicted: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, K] int64 counts, rows = truth, columns = prediction; labels outside 0..K-1 are ignored."""
    predicted, truth = np.asarray(predicted).ravel().astype(np.int64), np.asarray(truth).ravel().astype(np.int64)
    if predicted.shape != truth.shape:
        raise ValueError(f"prediction and truth differ in size: {predicted.size} vs {truth.size}")
    valid = (truth >= 0) & (truth < num_classes) & (predicted >= 0) & (predicted < num_classes)
    flat = truth[valid] * num_classes + predicted[valid]
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
    """IoU per class (NaN where a class is in neither prediction nor truth)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    hits = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - hits
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, hits / union, np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean of the per-class IoUs over the classes that occur; 0 for an empty matrix."""
    ious = per_class_iou(confusion)
    present = ious[~np.isnan(ious)]
    return float(present.mean()) if present.size else 0.0
