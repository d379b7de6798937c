"""``advseg export SOURCE OUT``: parses, resolves and prints; :mod:`advseg_cli.export` does the work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from advseg_cli.commands.colorize import public_generator_options

# The choices of advseg_cli.export, spelled out so that `advseg --help` does not import torch.
EXPORT_FORMATS = ("safetensors", "onnx")


@click.command("export", context_settings={"show_default": True})
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--format", "format", type=click.Choice(EXPORT_FORMATS), default="safetensors",
              help="safetensors: OUT is a folder (model.safetensors, config.json, README.md model card). "
                   "onnx: OUT is a .onnx file (dynamic batch/height/width, config in its metadata).")
@click.option("--epoch", type=click.IntRange(min=0), show_default="checkpoints/latest.pt",
              help="Run folders: export checkpoints/epoch_NNN.pt instead of checkpoints/latest.pt.")
@public_generator_options
@click.option("--opset", type=click.IntRange(min=13), default=17, help="--format onnx: the ONNX opset.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT file, or write into a non-empty OUT folder.")
def export(source: Path, out: Path, **options: Any) -> None:
    """Export the sketch -> photo generator of SOURCE for sharing: a safetensors folder or an ONNX file.

    SOURCE is a run folder of `advseg train`, one of its checkpoint files, a public-code generator
    file (*_net_G*.pth) or an exported folder. Both formats are read by `advseg colorize` and
    `advseg serve`; neither holds pickled data.
    """
    from advseg_cli.export import ExportConfig, export_model

    summary = export_model(source, out, ExportConfig(**options))
    click.echo(f"export: {summary.format} of {summary.spec_options} (checkpoint sha256 "
               f"{summary.source_sha256[:12]}...) -> {summary.out}")
