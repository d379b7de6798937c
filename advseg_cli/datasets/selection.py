"""The selection rules that turn a public dataset's own metadata into an advseg file list.

They are deterministic (sorted by the dataset's own ids, no randomness), so the list a maintainer
ships in ``data/lists/`` and the list a user derives from the same metadata are the same file.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from advseg_cli.datasets.lists import ListEntry
from advseg_cli.errors import AdvsegError


@dataclasses.dataclass(frozen=True)
class CocoRule:
    """COCO photos of one category, chosen so that the category is what the photo shows.

    An image qualifies when it has at least one instance of the category, none of the category's
    instances is a crowd region (crowd masks are coarse and mark herds we cannot count), and the
    category's instances together cover at least ``min_share`` of the image (so a distant animal in a
    street scene does not count as an elephant photo).
    """

    category: str
    min_share: float = 0.10

    def describe(self) -> str:
        return (f"COCO 2017 images with at least one '{self.category}' instance, no crowd '{self.category}' "
                f"annotation, '{self.category}' masks covering >= {self.min_share:.0%} of the image; "
                "train from train2017, test from val2017; sorted by image id")


def coco_category_id(instances: dict[str, Any], name: str) -> int:
    for category in instances.get("categories", []):
        if category.get("name") == name:
            return int(category["id"])
    raise AdvsegError(f"the COCO annotations have no category named {name!r}")


def select_coco(instances: dict[str, Any], rule: CocoRule, split: str, image_folder: str) -> list[ListEntry]:
    """The list entries of one COCO split (``instances_<folder>.json`` already parsed)."""
    category = coco_category_id(instances, rule.category)
    covered: dict[int, float] = defaultdict(float)
    crowded: set[int] = set()
    for annotation in instances.get("annotations", []):
        if annotation.get("category_id") != category:
            continue
        image_id = int(annotation["image_id"])
        if annotation.get("iscrowd"):
            crowded.add(image_id)
        else:
            covered[image_id] += float(annotation.get("area", 0.0))
    entries = []
    for image in sorted(instances.get("images", []), key=lambda item: int(item["id"])):
        image_id = int(image["id"])
        area = float(image["width"]) * float(image["height"])
        if image_id in covered and image_id not in crowded and covered[image_id] >= rule.min_share * area:
            name = str(image["file_name"])
            entries.append(ListEntry(split, name, f"{image_folder}/{name}"))
    return entries


@dataclasses.dataclass(frozen=True)
class SceneRule:
    """ADE20K scene-parsing images whose scene label (``sceneCategories.txt``) is ``scene``.

    The release has a training and a validation part; they become our train and test splits, which
    is the closest public counterpart of the paper's 1355 / 135 bedroom split.
    """

    scene: str
    archive_root: str = "ADEChallengeData2016"

    def describe(self) -> str:
        return (f"ADE20K scene-parsing release (ADEChallengeData2016) images whose sceneCategories.txt label is "
                f"'{self.scene}'; train = ADE_train_*, test = ADE_val_*; sorted by name")


def select_scenes(scene_lines: Iterable[str], rule: SceneRule) -> list[ListEntry]:
    """List entries from the lines of ``sceneCategories.txt`` (``ADE_train_00000001 airport_terminal``)."""
    entries = []
    for line in scene_lines:
        fields = line.split()
        if len(fields) != 2 or fields[1] != rule.scene:
            continue
        image = fields[0]
        if image.startswith("ADE_train_"):
            split, folder = "train", "training"
        elif image.startswith("ADE_val_"):
            split, folder = "test", "validation"
        else:
            continue
        entries.append(ListEntry(split, f"{image}.jpg", f"{rule.archive_root}/images/{folder}/{image}.jpg"))
    return sorted(entries, key=lambda entry: (entry.split != "train", entry.file))
