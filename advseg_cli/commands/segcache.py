"""``advseg segcache``: the command group of the segmentation cache (work in advseg_cli.segcache).

``advseg segcache PHOTOS OUT.h5`` builds (or completes) a cache; ``info``, ``verify``, ``preview``
and ``merge`` are subcommands. Routing rule: when the first argument after ``segcache`` is not one
of the subcommand names (build, info, verify, preview, merge) nor ``-h``/``--help``, the command is
``build``. A photo folder that happens to be called ``info`` is built with
``advseg segcache build info OUT.h5`` (or ``./info``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from advseg_cli.errors import AdvsegError
from advseg_cli.help import FullSummaryGroup

class _BuildByDefault(FullSummaryGroup):
    """A group whose first argument, when it is no subcommand name, belongs to ``build``."""

    default_command = "build"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


def _default_workers() -> int:
    return min(4, os.cpu_count() or 1)


@click.group(cls=_BuildByDefault, context_settings={"help_option_names": ["-h", "--help"],
                                                    "show_default": True})
def segcache() -> None:
    """Panoptic label maps of a photo folder, cached in one HDF5 file.

    \b
    advseg segcache PHOTOS OUT.h5 [options]   build or complete the cache (= `segcache build ...`)
    advseg segcache info OUT.h5               entries, provenance, most frequent classes
    advseg segcache verify PHOTOS OUT.h5      missing, stale and corrupt entries (exit 1 if any)
    advseg segcache preview OUT.h5 DIR        color-coded PNG per entry (over the photo with --photos)
    advseg segcache merge OUT.h5 SHARD.h5...  join the files of a --shard run

    When the first argument is not one of these subcommand names it is PHOTOS of `build`
    (a folder named like a subcommand: use `advseg segcache build NAME OUT.h5`).
    """


@segcache.command("build")
@click.argument("photos", type=click.Path(path_type=Path, file_okay=False))
@click.argument("out", metavar="OUT.h5", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--backend", default="panoptic-fpn", metavar="panoptic-fpn|mask2former",
              help="Segmentation network: panoptic-fpn (the paper's detectron2 Panoptic FPN R50 3x; "
                   "needs detectron2) or mask2former (Hugging Face transformers).")
@click.option("--weights", type=click.Path(path_type=Path),
              help="The backend's weights: a file (panoptic-fpn .pkl/.pth) or a local model directory "
                   "(mask2former).", show_default="the backend's official weights")
@click.option("--size", type=click.IntRange(min=0), default=0,
              help="Segment each photo resized so its SHORT side is SIZE (aspect kept); 0 = its own size.")
@click.option("--square", type=click.IntRange(min=0), default=0,
              help="Segment each photo resized to SQUARE x SQUARE instead (the training loader's resize, "
                   "e.g. 286); excludes --size.")
@click.option("--max-side", type=click.IntRange(min=0), default=1024,
              help="Cap on the longer side with --size or the photo's own size (memory); 0 = none.")
@click.option("--batch-size", type=click.IntRange(min=0), default=0, show_default="0: auto, 1 on CPU, 8 on GPU",
              help="Photos per forward pass (photos of equal segmenting size are batched together).")
@click.option("--workers", type=click.IntRange(min=0), default=_default_workers, show_default="min(4, CPUs)",
              help="DataLoader processes that read, hash, decode and resize photos.")
@click.option("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32",
              help="Arithmetic of the segmentation network (fp16 on CUDA only).")
@click.option("--shard", metavar="I/N",
              help="Process only the I-th of N interleaved parts of PHOTOS (default: the torchrun rank). "
                   "Each shard writes OUT with .shard-I-of-N before its suffix (segmaps.h5 -> "
                   "segmaps.shard-0-of-4.h5), or OUT as given when it already names that shard; "
                   "join them with `advseg segcache merge`.")
@click.option("--commit-every", type=click.FloatRange(min=0), default=30.0,
              help="Seconds between commits of new maps into OUT (what a killed run keeps); stretched to "
                   "20x a commit's duration for big files; 0 = after every batch.")
@click.option("--overwrite", is_flag=True,
              help="Start an empty cache, also when OUT was made with another backend, model, weights "
                   "or resize policy (otherwise such a cache is refused).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build(photos: Path, out: Path, **options: Any) -> None:
    """Segment every photo under PHOTOS into the cache OUT.h5 (adds only missing or changed photos)."""
    from advseg_cli.segcache import SegcacheConfig, build_segcache
    from advseg_cli.sharding import parse_shard

    options["shard"] = parse_shard(options["shard"])
    summary = build_segcache(photos, out, SegcacheConfig(**options))
    failed = f", {summary.failed} failed (reasons in {summary.record})" if summary.failed else ""
    click.echo(f"segcache: {summary.done} segmented, {summary.skipped} already cached{failed} -> "
               f"{summary.out} ({summary.entries} entries)")


@segcache.command("info")
@click.argument("cache", metavar="OUT.h5", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--top", type=click.IntRange(min=0), default=10, help="How many of the most frequent classes to list.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info(cache: Path, top: int, as_json: bool) -> None:
    """Entries, provenance (backend, model, weights sha256, resize policy) and the class histogram."""
    from advseg_cli.segcache import cache_info

    summary = cache_info(cache)
    meta = summary.metadata
    classes = summary.top_classes(top)
    if as_json:
        click.echo(json.dumps({
            "path": str(summary.path), "schema_version": meta.schema_version, "entries": summary.entries,
            "backend": meta.backend, "model": meta.model_name, "weights_sha256": meta.weights_sha256,
            "thresholds": meta.thresholds, "resize_policy": json.loads(meta.resize_policy.to_json()),
            "tool_version": meta.tool_version, "pixels": summary.pixels,
            "min_size": summary.min_size, "max_size": summary.max_size,
            "top_classes": [{"label": label, "name": name, "share": share} for label, name, share in classes],
        }, indent=2))
        return
    sizes = (f"{summary.min_size[0]}x{summary.min_size[1]} .. {summary.max_size[0]}x{summary.max_size[1]}"
             if summary.min_size else "-")
    lines = [
        f"{summary.path}: advseg segmentation cache, schema {meta.schema_version} (advseg {meta.tool_version})",
        f"entries:   {summary.entries}",
        f"backend:   {meta.backend}",
        f"model:     {meta.model_name}",
        f"weights:   sha256 {meta.weights_sha256 or '- (none)'}",
        f"thresholds: {json.dumps(meta.thresholds, sort_keys=True)}",
        f"resize:    {meta.resize_policy.describe()}",
        f"map sizes: {sizes}",
        f"top {len(classes)} classes by pixel share:",
        *(f"  {label:3d} {name:<24} {100 * share:6.2f} %" for label, name, share in classes),
    ]
    click.echo("\n".join(lines))


def _listing(title: str, items: list[Any], limit: int = 20) -> list[str]:
    if not items:
        return []
    shown = [f"  {item[0]}: {item[1]}" if isinstance(item, tuple) else f"  {item}" for item in items[:limit]]
    more = [f"  ... and {len(items) - limit} more"] if len(items) > limit else []
    return [f"{title} ({len(items)}):", *shown, *more]


@segcache.command("verify")
@click.argument("photos", type=click.Path(path_type=Path, file_okay=False))
@click.argument("cache", metavar="OUT.h5", type=click.Path(path_type=Path, dir_okay=False))
@click.pass_context
def verify(ctx: click.Context, photos: Path, cache: Path) -> None:
    """Report photos without a map (missing), changed since (stale) and unreadable maps (corrupt).

    Exit status 1 when there is any such problem. Photos that cannot be decoded are listed but are
    no problem (the build skips them), nor are maps of photos no longer in PHOTOS (extra).
    """
    from advseg_cli.segcache import verify_segcache

    report = verify_segcache(photos, cache)
    lines = [*_listing("missing", report.missing), *_listing("stale", report.stale),
             *_listing("corrupt", report.corrupt), *_listing("undecodable photos (never cached)", report.undecodable),
             *_listing("extra (no such photo)", report.extra)]
    verdict = "ok" if report.ok else "PROBLEMS"
    lines.append(f"verify: {verdict}: {report.checked} photos, {len(report.missing)} missing, {len(report.stale)} "
                 f"stale, {len(report.corrupt)} corrupt, {len(report.undecodable)} undecodable, "
                 f"{len(report.extra)} extra")
    click.echo("\n".join(lines))
    if not report.ok:
        ctx.exit(1)


@segcache.command("preview")
@click.argument("cache", metavar="OUT.h5", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("out_dir", metavar="DIR", type=click.Path(path_type=Path, file_okay=False))
@click.option("--photos", type=click.Path(path_type=Path, file_okay=False),
              help="Blend each map over its photo (resized to the map) from this folder.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, help="Weight of the map colors in the blend.")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="Only the first N entries (sorted); 0 = all.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def preview(cache: Path, out_dir: Path, photos: Path | None, alpha: float, limit: int, quiet: bool) -> None:
    """Write DIR/<photo path>.png: each map in the class colors, optionally over its photo."""
    from advseg_cli.segcache import preview_segcache

    summary = preview_segcache(cache, out_dir, photos=photos, alpha=alpha, limit=limit, quiet=quiet)
    note = ""
    if summary.failed:
        first_key, first_reason = summary.failed[0]
        note = f"; {len(summary.failed)} photos unreadable, map written alone (first: {first_key}: {first_reason})"
    click.echo(f"segcache preview: {summary.written} PNGs -> {summary.out}{note}")


@segcache.command("merge")
@click.argument("out", metavar="OUT.h5", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("shards", metavar="SHARD.h5...", nargs=-1, required=True,
                type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--overwrite", is_flag=True, help="Start OUT empty instead of adding to an existing OUT.")
def merge(out: Path, shards: tuple[Path, ...], overwrite: bool) -> None:
    """Join shard caches into OUT.h5 (refused when they were made with different settings)."""
    from advseg_cli.segcache import merge_segcaches

    if not shards:
        raise AdvsegError("merge: name at least one SHARD.h5")
    summary = merge_segcaches(out, list(shards), overwrite=overwrite)
    click.echo(f"segcache merge: {summary.added} entries added from {len(shards)} files "
               f"({summary.duplicates} duplicates kept once) -> {summary.out} ({summary.entries} entries)")


cmd = segcache  # the name the lead registers: main.add_command(cmd, "segcache")
