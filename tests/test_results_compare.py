"""`advseg results compare`: two reproductions side by side, with what differs between their runs.

The rows are made by the real ``write_row`` from files in the formats the stages write (``advseg fid
--json``, the training's config.json and run record, colorize's run record); the Makefile chain test
compares real ones.
"""

from __future__ import annotations

import json
from pathlib import Path

from advseg_cli.results import write_row
from tests.helpers import invoke_advseg


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def reproduction(root: Path, fids: dict[str, float], seg_grad: str, dims: int = 2048) -> Path:
    """RESULTS and RUNS of one elephant reproduction with the given FIDs per column."""
    results, runs = root / "results", root / "runs" / "elephant"
    for column, fid in fids.items():
        model, _, advseg = column.partition("-")
        _write(results / "elephant" / column / "fid.json",
               {"fid": fid, "settings": {"dims": dims}, "real": {"images": 50}, "fake": {"images": 50},
                "weights": {"sha256": "ab" * 32}})
        _write(results / "elephant" / column / "colorized" / "advseg-run.json",
               {"tool": "advseg", "options": {"test_mode": "deterministic"}})
        _write(runs / column / "config.json",
               {"model": model, "model_config": {"advseg": advseg or "none", "seg_grad": seg_grad},
                "segmenter": {"backend": "mask2former"} if advseg not in ("", "none") else None})
        _write(runs / column / "advseg-run.json", {"tool": "advseg", "counts": {"steps": 1000}})
    write_row("elephant", results, runs)
    return results


def test_compare_shows_both_fids_the_difference_and_what_differs(tmp_path: Path) -> None:
    soft = reproduction(tmp_path / "soft", {"cyclegan-none": 120.0, "cyclegan-both": 100.0}, "soft")
    compat = reproduction(tmp_path / "compat", {"cyclegan-none": 121.5, "cyclegan-both": 110.25}, "compat")
    out = tmp_path / "compare.md"
    result = invoke_advseg("results", "compare", str(soft), str(compat), "--labels", "soft,compat", "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = {line.split(" | ")[1]: line for line in result.stdout.splitlines() if line.startswith("| elephant |")}
    assert set(lines) == {"CycleGAN (cyclegan-none)", "+Both (cyclegan-both)"}  # columns not run are left out
    both = lines["+Both (cyclegan-both)"]
    assert "| 100.0 | 110.2 | +10.2 | 116.9 |" in both and "seg_grad soft -> compat" in both
    assert "| 120.0 | 121.5 | +1.5 | 126.4 | — |" in lines["CycleGAN (cyclegan-none)"]  # no Seg, no seg-grad
    assert out.read_text() == result.stdout


def test_fids_over_other_features_are_not_compared(tmp_path: Path) -> None:
    first = reproduction(tmp_path / "a", {"pix2pix-none": 80.0}, "soft")
    second = reproduction(tmp_path / "b", {"pix2pix-none": 3.0}, "soft", dims=64)
    result = invoke_advseg("results", "compare", str(first), str(second))
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("| elephant |"))
    assert "not comparable" in row and "dims 2048 -> 64" in row
    assert "# FID: results vs results" in result.stdout  # default labels: the folder names
    bad = invoke_advseg("results", "compare", str(first), str(second), "--labels", "only-one")
    assert bad.returncode == 2 and "--labels" in bad.stderr


def test_cut_columns_form_an_extra_block_and_the_papers_table_keeps_its_columns(tmp_path: Path) -> None:
    import re

    from advseg_cli.results import COLUMNS, write_table

    results = reproduction(tmp_path / "r", {"cyclegan-none": 120.0, "cut": 95.5, "fastcut-both": 90.25}, "soft")
    row = (results / "elephant.md").read_text()
    paper_row = re.search(r"^\| advseg \| (.*) \|$", row, re.M).group(1).split(" | ")
    assert len(paper_row) == len(COLUMNS) == 9 and paper_row[0] == "120.0"
    block = row[row.index("## Beyond the paper"):]
    assert "| | CUT | +Multi | +Binary | +Both | FastCUT | +Multi | +Binary | +Both |" in block
    assert "| advseg | 95.5 | not run | not run | not run | not run | not run | not run | 90.2 |" in block
    assert "- cut: FID 95.50" in row and "model cut, advseg none" in row and "- fastcut-both: FID 90.25" in row
    table = write_table(results).read_text()
    elephant = [line for line in table.splitlines() if line.startswith("| elephant |")]
    assert len(elephant) == 2 and elephant[0].count(" | ") == 9  # the paper's 9 columns, then the extra block
    assert elephant[1] == "| elephant | 95.5 | not run | not run | not run | not run | not run | not run | 90.2 |"
    compared = invoke_advseg("results", "compare", str(results), str(results))
    assert "| elephant | CUT (cut) | 95.5 | 95.5 | +0.0 | — |" in compared.stdout


def test_a_row_without_cut_columns_has_no_extra_block(tmp_path: Path) -> None:
    from advseg_cli.results import write_table

    results = reproduction(tmp_path / "r", {"cyclegan-none": 120.0}, "soft")
    assert "Beyond the paper" not in (results / "elephant.md").read_text()
    assert "Beyond the paper" not in write_table(results).read_text()
