"""``advseg results``: the FID table of a reproduction (work in advseg_cli.results)."""

from __future__ import annotations

from pathlib import Path

import click

from advseg_cli.help import FullSummaryGroup


@click.group(cls=FullSummaryGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def results() -> None:
    """Assemble reproduction results into the paper's FID table."""


@results.command("row")
@click.argument("dataset")
@click.option("--results", "results_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("results"),
              help="Holds DATASET/COLUMN/fid.json (and colorized/).")
@click.option("--runs", "runs_dir", type=click.Path(path_type=Path, file_okay=False),
              show_default="runs/DATASET", help="Holds the run folders COLUMN/.")
def row(dataset: str, results_dir: Path, runs_dir: Path | None) -> None:
    """Write RESULTS/DATASET.md: our FID beside the paper's for every column, with the settings used."""
    from advseg_cli.results import write_row

    click.echo(f"results row: {write_row(dataset, results_dir, runs_dir or Path('runs') / dataset)}")


@results.command("table")
@click.option("--results", "results_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("results"),
              help="Holds the rows DATASET.md written by `advseg results row`.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), show_default="RESULTS/TABLE.md", help="Where to write the table.")
def table(results_dir: Path, out: Path | None) -> None:
    """Write the finished rows as one table laid out like the paper's (ours, paper's in brackets)."""
    from advseg_cli.results import write_table

    target = write_table(results_dir, out)
    click.echo(target.read_text(encoding="utf-8"), nl=False)
    click.echo(f"results table: {target}")


@results.command("compare")
@click.argument("first", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.argument("second", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--labels", default=None, show_default="the folder names", help="Two names for the columns, comma-separated.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Also write the table to this file.")
def compare(first: Path, second: Path, labels: str | None, out: Path | None) -> None:
    """Two reproductions side by side (e.g. SEG_GRAD=soft vs compat): both FIDs, the difference, and
    every recorded setting in which the two runs differ.

    FIRST and SECOND are RESULTS folders of `make reproduce` (RESULTS=... with different RUNS/settings).
    """
    from advseg_cli.errors import AdvsegError
    from advseg_cli.files import write_bytes_atomic
    from advseg_cli.results import comparison_markdown, read_rows

    names = tuple(part.strip() for part in labels.split(",")) if labels else (first.name, second.name)
    if len(names) != 2 or not all(names):
        raise AdvsegError(f"--labels {labels}: give two names separated by a comma, e.g. soft,compat")
    text = comparison_markdown(read_rows(first), read_rows(second), names)  # type: ignore[arg-type]
    if out is not None:
        write_bytes_atomic(out, text.encode("utf-8"))
    click.echo(text, nl=False)
