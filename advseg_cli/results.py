"""The paper's FID table, and ours beside it.

``make reproduce`` leaves, per dataset and column, ``RESULTS/DATASET/COLUMN/fid.json`` (``advseg fid
--json``) and a run folder ``RUNS/DATASET/COLUMN``. ``write_row`` turns one dataset's into
``RESULTS/DATASET.md`` (+ ``.json``) with the settings that produced each number; ``write_table``
lays the finished rows out as the paper's table. A column not run yet says so instead of disappearing.
CUT / FastCUT columns (``EXTRA_COLUMNS``) are not the paper's: they form a block of their own below it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from advseg_cli.errors import AdvsegError
from advseg_cli.files import write_bytes_atomic
from advseg_cli.runrecord import FOLDER_RECORD_NAME


@dataclasses.dataclass(frozen=True)
class Column:
    key: str  # folder name under RUNS/DATASET and RESULTS/DATASET
    header: str
    model: str  # advseg train --model
    advseg: str = "none"


COLUMNS = (
    Column("cyclegan-none", "CycleGAN", "cyclegan"),
    Column("cyclegan-multi", "+Multi", "cyclegan", "multi"),
    Column("cyclegan-binary", "+Binary", "cyclegan", "binary"),
    Column("cyclegan-both", "+Both", "cyclegan", "both"),
    Column("autopainter", "AutoPainter", "autopainter"),
    Column("pix2pix-none", "Pix2Pix", "pix2pix"),
    Column("pix2pix-multi", "+Multi", "pix2pix", "multi"),
    Column("pix2pix-binary", "+Binary", "pix2pix", "binary"),
    Column("pix2pix-both", "+Both", "pix2pix", "both"),
)

# Beyond the paper: CUT and FastCUT (Park et al., ECCV 2020) with the same segmentation terms. They are not
# columns of the paper's table (which keeps its own layout); they appear as a block of their own below it,
# once one of them has been run (METHODS=cut cut-multi ... fastcut-both).
EXTRA_COLUMNS = (
    Column("cut", "CUT", "cut"),
    Column("cut-multi", "+Multi", "cut", "multi"),
    Column("cut-binary", "+Binary", "cut", "binary"),
    Column("cut-both", "+Both", "cut", "both"),
    Column("fastcut", "FastCUT", "fastcut"),
    Column("fastcut-multi", "+Multi", "fastcut", "multi"),
    Column("fastcut-binary", "+Binary", "fastcut", "binary"),
    Column("fastcut-both", "+Both", "fastcut", "both"),
)

# FID (lower is better), Hicsonmez et al. ICIP 2021, Table 1; columns in COLUMNS order.
PAPER_FID: dict[str, tuple[float, ...]] = {
    "bedroom": (113.1, 111.7, 87.1, 93.2, 206.8, 100.5, 100.0, 95.1, 110.1),
    "illustration": (213.6, 206.9, 204.8, 189.4, 272.0, 180.0, 176.9, 178.0, 175.7),
    "elephant": (126.4, 103.9, 91.9, 116.9, 155.1, 83.5, 85.8, 78.8, 82.8),
    "sheep": (209.3, 207.2, 236.1, 196.8, 233.1, 157.0, 159.9, 162.0, 150.5),
}
NOT_RUN = "not run"


def paper_value(dataset: str, column: Column) -> float | None:
    """The paper's FID of this column on this dataset; None for datasets and columns it does not have."""
    row = PAPER_FID.get(dataset)
    return row[COLUMNS.index(column)] if row and column in COLUMNS else None


def split_cells(cells: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A row's cells as (the paper's columns, the extra block's): rows list the paper's columns first."""
    return cells[:len(COLUMNS)], cells[len(COLUMNS):]


def _any_done(cells: list[dict[str, Any]]) -> bool:
    return any(cell["status"] == "done" for cell in cells)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise AdvsegError(f"{path}: unreadable ({exc}); delete it and re-run make reproduce") from None


def column_result(dataset: str, column: Column, results: Path, runs: Path) -> dict[str, Any]:
    """Everything the report says about one column: our FID, the paper's, and how ours was made."""
    cell: dict[str, Any] = {"column": column.key, "header": column.header, "paper": paper_value(dataset, column)}
    fid = _read_json(results / dataset / column.key / "fid.json")
    if fid is None:
        return {**cell, "status": NOT_RUN, "fid": None}
    run_dir = runs / column.key
    config = _read_json(run_dir / "config.json") or {}
    train_record = _read_json(run_dir / FOLDER_RECORD_NAME) or {}
    colorize_record = _read_json(results / dataset / column.key / "colorized" / FOLDER_RECORD_NAME) or {}
    segmenter, model_config = config.get("segmenter") or {}, config.get("model_config") or {}
    perceptual = (config.get("perceptual") or {}).get("weights") or {}
    weights = fid.get("weights") or {}
    return {**cell, "status": "done", "fid": float(fid["fid"]),
            "run": str(run_dir), "steps": (train_record.get("counts") or {}).get("steps"),
            "model": config.get("model"), "advseg": model_config.get("advseg", "none"),
            "seg_grad": model_config.get("seg_grad") if model_config.get("advseg", "none") != "none" else None, "seg_backend": segmenter.get("backend"),
            "test_mode": (colorize_record.get("options") or {}).get("test_mode"),
            "inception_sha256": weights.get("sha256"), "vgg16_sha256": perceptual.get("sha256"), "dims": (fid.get("settings") or {}).get("dims"),
            "images": {"real": (fid.get("real") or {}).get("images"), "fake": (fid.get("fake") or {}).get("images")}}


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _cell(result: dict[str, Any]) -> str:
    if result["status"] != "done":
        return result["status"]
    return _fmt(result["fid"]) if math.isfinite(result["fid"]) else f"{result['fid']}"


def _comparability_notes(cells: list[dict[str, Any]]) -> list[str]:
    """Say so when a number cannot be compared with the paper's (other Inception features)."""
    other = sorted({cell["dims"] for cell in cells if cell["status"] == "done" and cell.get("dims") != 2048},
                   key=str)
    if not other:
        return []
    return [f"Not comparable with the paper: FID over {', '.join(map(str, other))}-d Inception features "
            "(the paper's is the 2048-d pool3 FID of pytorch-fid).", ""]


def _extra_block(cells: list[dict[str, Any]]) -> list[str]:
    """The CUT / FastCUT block of a dataset's page, when one of its columns was run."""
    if not _any_done(cells):
        return []
    headers = [cell["header"] for cell in cells]
    return ["## Beyond the paper: CUT and FastCUT with the segmentation loss", "",
            "| | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|",
            "| advseg | " + " | ".join(_cell(cell) for cell in cells) + " |", ""]


def row_markdown(dataset: str, cells: list[dict[str, Any]]) -> str:
    paper_cells, extra_cells = split_cells(cells)
    headers = [cell["header"] for cell in paper_cells]
    lines = [f"# FID on {dataset} (lower is better)", "",
             "| | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|",
             "| advseg | " + " | ".join(_cell(cell) for cell in paper_cells) + " |",
             "| paper | " + " | ".join(_fmt(cell["paper"]) for cell in paper_cells) + " |", "",
             *_extra_block(extra_cells),
             *_comparability_notes(cells),
             "## How each number was made", ""]
    for cell in paper_cells + (extra_cells if _any_done(extra_cells) else []):
        if cell["status"] != "done":
            lines.append(f"- {cell['column']}: {cell['status']}")
            continue
        lines.append(f"- {cell['column']}: FID {cell['fid']:.2f} (paper {_fmt(cell['paper'])}); run `{cell['run']}`, "
                     f"{cell['steps']} steps; model {cell['model']}, advseg {cell['advseg']}, seg-grad "
                     f"{cell['seg_grad'] or '—'}, seg backend {cell['seg_backend'] or '—'}; test mode {cell['test_mode']}; "
                     f"{cell['images']['fake']} colorized vs {cell['images']['real']} real test photos, "
                     f"{cell['dims']}-d features; Inception sha256 {cell['inception_sha256']}"
                     + (f"; VGG16 (feature loss) sha256 {cell['vgg16_sha256']}" if cell.get("vgg16_sha256") else ""))
    return "\n".join(lines) + "\n"


def write_row(dataset: str, results: Path, runs: Path) -> Path:
    """RESULTS/DATASET.md and .json from the finished columns of one dataset."""
    cells = [column_result(dataset, column, results, runs) for column in COLUMNS]
    extra = [column_result(dataset, column, results, runs) for column in EXTRA_COLUMNS]
    out = results / f"{dataset}.md"
    write_bytes_atomic(results / f"{dataset}.json",
                       (json.dumps({"dataset": dataset, "columns": cells, "extra_columns": extra}, indent=2)
                        + "\n").encode("utf-8"))
    write_bytes_atomic(out, row_markdown(dataset, cells + extra).encode("utf-8"))
    return out


def table_markdown(rows: dict[str, list[dict[str, Any]]]) -> str:
    """The paper's layout: one line per dataset, each cell 'ours (paper)'."""
    headers = [column.header for column in COLUMNS]
    lines = ["# FID (lower is better): advseg (paper)", "",
             "| dataset | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    for dataset, cells in rows.items():
        paper_cells = split_cells(cells)[0]
        lines.append(f"| {dataset} | " + " | ".join(f"{_cell(cell)} ({_fmt(cell['paper'])})" for cell in paper_cells)
                     + " |")
    missing = [name for name in PAPER_FID if name not in rows]
    if missing:
        lines += ["", f"Not reproduced yet: {', '.join(missing)} (`make reproduce DATASET=NAME`)."]
    if any(_any_done(split_cells(cells)[1]) for cells in rows.values()):
        extra_headers = [column.header for column in EXTRA_COLUMNS]
        lines += ["", "## Beyond the paper: CUT and FastCUT with the segmentation loss (advseg only)", "",
                  "| dataset | " + " | ".join(extra_headers) + " |", "|---" * (len(extra_headers) + 1) + "|"]
        for dataset, cells in rows.items():
            extra_cells = split_cells(cells)[1] or [{"status": NOT_RUN}] * len(EXTRA_COLUMNS)
            lines.append(f"| {dataset} | " + " | ".join(_cell(cell) for cell in extra_cells) + " |")
    return "\n".join(lines) + "\n"


def read_rows(results: Path) -> dict[str, list[dict[str, Any]]]:
    """dataset -> its columns (the paper's, then the extra block's), from every RESULTS/DATASET.json that
    write_row produced (rows written before the extra block existed have only the paper's)."""
    rows = {}
    for path in sorted(results.glob("*.json")):
        data = _read_json(path)
        if data and isinstance(data.get("columns"), list) and "dataset" in data:
            rows[data["dataset"]] = data["columns"] + list(data.get("extra_columns") or [])
    if not rows:
        raise AdvsegError(f"{results}: no finished rows; run `make reproduce DATASET=NAME` first")
    return rows


def write_table(results: Path, out: Path | None = None) -> Path:
    """RESULTS/TABLE.md from every RESULTS/DATASET.json that write_row produced."""
    rows = read_rows(results)
    target = out or results / "TABLE.md"
    write_bytes_atomic(target, table_markdown(rows).encode("utf-8"))
    return target


# ----------------------------------------------------------------------------- two reproductions side by side
# Settings a row records per column; a difference is printed next to the two numbers. The ones marked
# incomparable make the two FIDs different quantities, not different results.
COMPARED_SETTINGS = ("seg_grad", "seg_backend", "test_mode", "steps", "dims", "inception_sha256", "images")
INCOMPARABLE_SETTINGS = ("dims", "inception_sha256")


def _setting_differences(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[str], bool]:
    """'name a -> b' for each recorded setting that differs, and whether the FIDs can be compared."""
    differences = [f"{name} {_short_value(a.get(name))} -> {_short_value(b.get(name))}"
                   for name in COMPARED_SETTINGS if a.get(name) != b.get(name)]
    comparable = all(a.get(name) == b.get(name) for name in INCOMPARABLE_SETTINGS)
    return differences, comparable


def _short_value(value: Any) -> str:
    text = "—" if value is None else str(value)
    return text[:12] + "..." if len(text) > 16 else text


def _delta(a: dict[str, Any], b: dict[str, Any], comparable: bool) -> str:
    if a["status"] != "done" or b["status"] != "done":
        return "—"
    if not comparable:
        return "not comparable"
    return f"{b['fid'] - a['fid']:+.1f}"


def comparison_markdown(rows_a: dict[str, list[dict[str, Any]]], rows_b: dict[str, list[dict[str, Any]]],
                        labels: tuple[str, str]) -> str:
    """One line per dataset and column made in either reproduction: both FIDs, B - A, the paper's, and
    every recorded setting in which the two differ (the point of a comparison is to know which did)."""
    first, second = labels
    lines = [f"# FID: {first} vs {second} (lower is better)", "",
             f"| dataset | column | {first} | {second} | {second} - {first} | paper | what differs |",
             "|---|---|---:|---:|---:|---:|---|"]
    for dataset in [name for name in rows_a if name in rows_b]:
        for a, b in zip(rows_a[dataset], rows_b[dataset]):
            if a["status"] != "done" and b["status"] != "done":
                continue
            differences, comparable = _setting_differences(a, b)
            lines.append(f"| {dataset} | {a['header']} ({a['column']}) | {_cell(a)} | {_cell(b)} | "
                         f"{_delta(a, b, comparable)} | {_fmt(a['paper'])} | {'; '.join(differences) or '—'} |")
    only = sorted(set(rows_a) ^ set(rows_b))
    if only:
        lines += ["", f"In one of the two only: {', '.join(only)}."]
    return "\n".join(lines) + "\n"
