"""The paper's datasets: where each comes from, how its photos are chosen, and its split in the paper."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from advseg_cli.datasets.selection import CocoRule, SceneRule
from advseg_cli.errors import AdvsegError

SHIPPED_LISTS = Path(__file__).resolve().parents[2] / "data" / "lists"


@dataclasses.dataclass(frozen=True)
class Archive:
    """A file we download whole (an archive or an annotation bundle), with its published digest."""

    url: str
    filename: str
    sha1: str | None = None


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One dataset. ``kind``: coco (photos fetched one by one), archive (members of one archive),
    folder (data the user has to request; we prepare the folder they give us)."""

    name: str
    title: str
    kind: str
    paper_split: str
    rule: CocoRule | SceneRule | None = None
    images_url: str | None = None
    metadata: Archive | None = None
    request: str | None = None
    licence: str = ""

    def shipped_list(self) -> Path:
        return SHIPPED_LISTS / f"{self.name}.tsv"


COCO_IMAGES = "http://images.cocodataset.org"
COCO_ANNOTATIONS = Archive(
    "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
    "annotations_trainval2017.zip", sha1="8551ee4bb5860311e79dace7e79cb91e432e78b3")
ADE20K_SCENE_PARSING = Archive(
    "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
    "ADEChallengeData2016.zip", sha1="219e1696abb36c8ba3a3afe7fb2f4b4606a897c7")
COCO_LICENCE = "COCO images: Flickr licences per image (see the annotations' 'license' field); annotations CC BY 4.0"

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("bedroom", "ADE20K bedroom scenes", "archive", "1355 train / 135 test",
                rule=SceneRule("bedroom"), metadata=ADE20K_SCENE_PARSING,
                licence="ADE20K: MIT CSAIL terms (research use; see groups.csail.mit.edu/vision/datasets/ADE20K)"),
    DatasetSpec("elephant", "COCO photos of elephants", "coco", "curated by the authors (not published)",
                rule=CocoRule("elephant"), images_url=COCO_IMAGES, metadata=COCO_ANNOTATIONS,
                licence=COCO_LICENCE),
    DatasetSpec("sheep", "COCO photos of sheep", "coco", "curated by the authors (not published)",
                rule=CocoRule("sheep"), images_url=COCO_IMAGES, metadata=COCO_ANNOTATIONS,
                licence=COCO_LICENCE),
    DatasetSpec("illustration", "children's-book illustrations by Axel Scheffler (GANILLA)", "folder",
                "as GANILLA",
                request="the GANILLA authors (github.com/giddyyupp/ganilla, 'Datasets'); pass the Axel Scheffler "
                        "folder with --source",
                licence="GANILLA illustration dataset: research use on request from its authors"),
    DatasetSpec("cityscapes", "Cityscapes street scenes", "folder", "2975 train / 500 test",
                request="www.cityscapes-dataset.com (free registration; download leftImg8bit_trainvaltest.zip) "
                        "and pass the unpacked folder with --source",
                licence="Cityscapes: non-commercial research licence (cityscapes-dataset.com/license)"),
)}


def dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise AdvsegError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None
