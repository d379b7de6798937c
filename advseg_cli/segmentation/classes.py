"""The 135-class label layout shared by every segmentation backend, the cache and the discriminators.

Layout (shared/REFERENCE.md, detectron2's COCO panoptic metadata):

* ``0``        unlabeled (void: no segment covers the pixel)
* ``1..80``    the 80 COCO thing classes, in detectron2's ``thing_classes`` order
* ``81``       ``things``: detectron2's merged stuff class for "any thing". Panoptic output never
               produces it (thing pixels carry their instance's class instead), so the channel stays
               empty; it exists only so that the layout matches the public code's one-hot maps.
* ``82..134``  the 53 COCO panoptic stuff classes, in detectron2's ``stuff_classes`` order

Every backend maps its own categories onto this layout *by name* (see
:func:`coco_panoptic_133_to_135`), so a model whose label order differs cannot silently scramble it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from advseg_cli.errors import IncompatibleInputError

NUM_CLASSES = 135
UNLABELED = 0
THINGS_MERGED = 81  # detectron2's stuff class 0 ("things"); never produced by panoptic output

COCO_THING_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

COCO_STUFF_NAMES: tuple[str, ...] = (
    "banner", "blanket", "bridge", "cardboard", "counter", "curtain", "door-stuff", "floor-wood",
    "flower", "fruit", "gravel", "house", "light", "mirror-stuff", "net", "pillow", "platform",
    "playingfield", "railroad", "river", "road", "roof", "sand", "sea", "shelf", "snow", "stairs",
    "tent", "towel", "wall-brick", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "window-blind", "window-other", "tree-merged", "fence-merged", "ceiling-merged",
    "sky-other-merged", "cabinet-merged", "table-merged", "floor-other-merged", "pavement-merged",
    "mountain-merged", "grass-merged", "dirt-merged", "paper-merged", "food-other-merged",
    "building-other-merged", "rock-merged", "wall-other-merged", "rug-merged",
)  # fmt: skip

CLASS_NAMES: tuple[str, ...] = ("unlabeled", *COCO_THING_NAMES, "things", *COCO_STUFF_NAMES)
THING_IDS: tuple[int, ...] = tuple(range(1, 81))
STUFF_IDS: tuple[int, ...] = tuple(range(82, NUM_CLASSES))
IS_THING: tuple[bool, ...] = tuple(1 <= index <= 80 for index in range(NUM_CLASSES))
IS_STUFF: tuple[bool, ...] = tuple(index >= 82 for index in range(NUM_CLASSES))

assert len(COCO_THING_NAMES) == 80 and len(COCO_STUFF_NAMES) == 53
assert len(CLASS_NAMES) == NUM_CLASSES and len(set(CLASS_NAMES)) == NUM_CLASSES

_LABEL_OF_NAME = {name: index for index, name in enumerate(CLASS_NAMES)}


def _normalised(name: str) -> str:
    """Names as model configs spell them can differ in case, spaces and underscores only."""
    return name.strip().lower().replace("_", " ")


_LABEL_OF_NORMALISED_NAME = {_normalised(name): index for name, index in _LABEL_OF_NAME.items()}


def label_of_name(name: str) -> int:
    """Our label for a COCO panoptic category name; an unknown name is an incompatible model."""
    try:
        return _LABEL_OF_NORMALISED_NAME[_normalised(name)]
    except KeyError:
        raise IncompatibleInputError(
            f"segmentation model class {name!r} is not a COCO panoptic category; "
            "advseg needs a model trained on COCO panoptic (133 classes)"
        ) from None


def coco_panoptic_133_to_135(names_133: Sequence[str]) -> torch.LongTensor:
    """Map a model's 133 COCO panoptic categories, given by name in the model's order, to our labels.

    Returns a LongTensor ``lut`` of length 133 with ``lut[model_class] = our_label``. Matching by name
    (not position) is deliberate: it makes a model with another category order still land on the
    right channels, and a model of another label set fail loudly.
    """
    names = list(names_133)
    if len(names) != 133:
        raise IncompatibleInputError(
            f"segmentation model has {len(names)} classes; advseg needs a COCO panoptic model (133 classes)"
        )
    labels = [label_of_name(name) for name in names]
    if len(set(labels)) != 133 or UNLABELED in labels or THINGS_MERGED in labels:
        raise IncompatibleInputError(
            "segmentation model's class names do not cover the 133 COCO panoptic categories once each"
        )
    return torch.tensor(labels, dtype=torch.long)
