"""``advseg results``: the FID table of a reproduction (work in advseg_cli.results)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def results() -> None:
    """Assemble reproduction results into the paper's FID table."""


@results.command("row")
@click.argument("dataset")
@click.option("--results", "results_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("results"),
              help="Holds DATASET/COLUMN/fid.json (and colorized/).")
@click.option("--runs", "runs_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Holds the run folders COLUMN/  [default: runs/DATASET].")
def row(dataset: str, results_dir: Path, runs_dir: Path | None) -> None:
    """Write RESULTS/DATASET.md: our FID beside the paper's for every column, with the settings used."""
    from advseg_cli.results import write_row

    click.echo(f"results row: {write_row(dataset, results_dir, runs_dir or Path('runs') / dataset)}")


@results.command("table")
@click.option("--results", "results_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("results"))
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="[default: RESULTS/TABLE.md]")
def table(results_dir: Path, out: Path | None) -> None:
    """Write the finished rows as one table laid out like the paper's (ours, paper's in brackets)."""
    from advseg_cli.results import write_table

    target = write_table(results_dir, out)
    click.echo(target.read_text(encoding="utf-8"), nl=False)
    click.echo(f"results table: {target}")
