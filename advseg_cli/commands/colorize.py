"""``advseg colorize CHECKPOINT SKETCHES OUT``: parses, resolves and prints; :mod:`advseg_cli.colorize`
does the work."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

# The choices of advseg_cli.models.networks / advseg_cli.colorize, spelled out so that `advseg --help`
# does not import torch; tests/colorize checks that they are the same.
GENERATOR_ARCHS = ("resnet_9blocks", "resnet_6blocks", "unet_256", "unet_128")
NORMS = ("instance", "batch", "none")
TEST_MODES = ("deterministic", "public")


def public_generator_options(function: Any) -> Any:
    """--arch / --norm / --dropout: what a public-code generator file's keys may not tell (colorize, export)."""
    function = click.option("--dropout/--no-dropout", default=None, show_default="from the keys; U-Net: off",
                            help="Public-code generator files: dropout layers (a U-Net's leave no trace in its "
                                 "keys).")(function)
    function = click.option("--norm", type=click.Choice(NORMS), show_default="read from the file's keys",
                            help="Public-code generator files: the normalisation.")(function)
    return click.option("--arch", type=click.Choice(GENERATOR_ARCHS), show_default="read from the file's keys",
                        help="Public-code generator files: the architecture.")(function)


def _default_workers() -> int:
    return min(4, os.cpu_count() or 1)


@click.command("colorize", context_settings={"show_default": True})
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("sketches", type=click.Path(path_type=Path, file_okay=False))
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--epoch", type=click.IntRange(min=0),
              help="Run folders: use checkpoints/epoch_NNN.pt instead of checkpoints/latest.pt.")
@click.option("--size", type=click.IntRange(min=0), show_default="the trained crop size; 256 for public files",
              help="Network input side (SIZE x SIZE, bicubic). 0: each sketch's own size rounded to the nearest "
                   "side the generator accepts (ResNet: multiple of 4, U-Net: of 256 / 128), result resized back.")
@click.option("--test-mode", type=click.Choice(TEST_MODES), default="deterministic",
              help="deterministic: resize to SIZE, eval mode. public: as the public test.py: resize to "
                   "--load-size, random SIZE crop (seeded per image), train-mode batch norm and dropout.")
@click.option("--load-size", type=click.IntRange(min=1), show_default="the trained load size; 286 for public files",
              help="--test-mode public: resize before the random crop.")
@click.option("--seed", type=int, default=0, help="--test-mode public: seed of the per-image crops and dropout.")
@public_generator_options
@click.option("--batch-size", type=click.IntRange(min=1), default=8, help="Sketches per forward pass.")
@click.option("--workers", type=click.IntRange(min=0), default=_default_workers, show_default="min(4, CPUs)",
              help="DataLoader processes that decode and resize sketches.")
@click.option("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32",
              help="Generator arithmetic; bf16/fp16 autocast (fp16 on CUDA only).")
@click.option("--grid", is_flag=True,
              help="Also write sketch | result sheets to OUT/grid/ and an OUT/index.html gallery.")
@click.option("--shard", metavar="I/N", help="Process only the I-th of N interleaved parts (default: torchrun rank).")
@click.option("--overwrite", is_flag=True,
              help="Redo results that exist, and write into an OUT made with other settings.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def colorize(checkpoint: Path, sketches: Path, out: Path, **options: Any) -> None:
    """Colorize every sketch under SKETCHES with CHECKPOINT's generator; PNGs with the same relative
    paths go to OUT, with OUT/advseg-run.json.

    CHECKPOINT is a run folder of `advseg train` (its latest checkpoint, or --epoch N), one of its
    checkpoint files, a generator state dict of the public CycleGAN / pix2pix / AdvSegLoss code
    (*_net_G*.pth; architecture read from its keys, or --arch/--norm/--dropout), a folder of
    `advseg export` or a .onnx file of `advseg export --format onnx` (run by ONNX Runtime).
    """
    from advseg_cli.colorize import ColorizeConfig, colorize_folder
    from advseg_cli.sharding import parse_shard

    options["shard"] = parse_shard(options["shard"])
    summary = colorize_folder(checkpoint, sketches, out, ColorizeConfig(**options))
    size = f"{summary.size} px" if summary.size else "own size"
    failed = f", {summary.failed} failed (reasons in {summary.record})" if summary.failed else ""
    gallery = f"; gallery {summary.index}" if summary.index else ""
    click.echo(f"colorize: {summary.done} written, {summary.skipped} already done{failed} "
               f"({summary.test_mode}, {size}) -> {summary.out}{gallery}")
