"""Files shipped in data/ agree with the code that uses the same facts."""

from __future__ import annotations

from advseg_cli.segmentation.classes import CLASS_NAMES, IS_THING, NUM_CLASSES
from tests.helpers import REPO


def test_class_table_matches_the_code() -> None:
    rows = [line.split("\t") for line in (REPO / "data" / "classes_135.tsv").read_text().splitlines()[1:]]
    assert len(rows) == NUM_CLASSES == 135
    assert [row[1] for row in rows] == list(CLASS_NAMES)
    assert [row[2] == "thing" for row in rows] == list(IS_THING)
    assert rows[81][2] == "merged-things" and rows[0][2] == "unlabeled"
