"""Panoptic segmentation (the frozen network "Seg"): the 135-class layout, maps, and the backends.

Importing this package is cheap: transformers and detectron2 are imported only when a backend is built.
"""

from advseg_cli.segmentation.base import (
    BACKENDS,
    Segmenter,
    available_backends,
    build_segmenter,
    register_backend,
    uint8_to_model_range,
)
from advseg_cli.segmentation.classes import (
    CLASS_NAMES,
    IS_STUFF,
    IS_THING,
    NUM_CLASSES,
    STUFF_IDS,
    THING_IDS,
    coco_panoptic_133_to_135,
)
from advseg_cli.segmentation.maps import binary_from_labels, binary_from_probs, colorize, one_hot, palette

__all__ = [
    "BACKENDS",
    "CLASS_NAMES",
    "IS_STUFF",
    "IS_THING",
    "NUM_CLASSES",
    "STUFF_IDS",
    "THING_IDS",
    "Segmenter",
    "available_backends",
    "binary_from_labels",
    "binary_from_probs",
    "build_segmenter",
    "coco_panoptic_133_to_135",
    "colorize",
    "one_hot",
    "palette",
    "register_backend",
    "uint8_to_model_range",
]
