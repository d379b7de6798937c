"""``advseg fid REAL FAKE``: parses, resolves paths and prints; :mod:`advseg_cli.fid` does the work."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from advseg_cli.errors import AdvsegError

# pytorch-fid's InceptionV3.BLOCK_INDEX_BY_DIM keys, spelled out so that `advseg --help` does not
# import torch; tests/fid checks they are the same.
FID_DIMS = (64, 192, 768, 2048)
MAX_LISTED_FAILURES = 20


def _default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def _print_failures(label: str, failures: list[dict[str, str]]) -> None:
    for failure in failures[:MAX_LISTED_FAILURES]:
        click.echo(f"advseg fid: skipped {label} {failure['input']}: {failure['reason']}", err=True)
    if len(failures) > MAX_LISTED_FAILURES:
        click.echo(f"advseg fid: ... and {len(failures) - MAX_LISTED_FAILURES} more {label} files skipped",
                   err=True)


def _print_provenance(side: Any) -> None:
    """Say where a folder's statistics came from; the cache hit is what makes a second run fast."""
    if side.source == "cache":
        click.echo(f"advseg fid: {side.label} statistics from cache {side.cache_file}", err=True)
    elif side.cache_file is not None:
        click.echo(f"advseg fid: {side.label} statistics cached in {side.cache_file}", err=True)


@click.command("fid", context_settings={"show_default": True})
@click.argument("real", type=click.Path(path_type=Path))
@click.argument("fake", type=click.Path(path_type=Path), required=False)
@click.option("--save-stats", "save_stats", type=click.Path(path_type=Path, dir_okay=False), metavar="OUT.npz",
              help="Write REAL's statistics (pytorch-fid's .npz: mu, sigma) and OUT.npz.run.json; no FAKE.")
@click.option("--overwrite", is_flag=True, help="With --save-stats: replace an existing OUT.npz.")
@click.option("--dims", type=click.Choice([str(d) for d in FID_DIMS]), default="2048",
              help="Inception features: 2048 = pool3 (the paper's FID); 64/192/768 = earlier blocks.")
@click.option("--batch-size", type=click.IntRange(min=1), default=50, help="Images per Inception forward pass.")
@click.option("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N.")
@click.option("--workers", type=click.IntRange(min=0), default=_default_workers, show_default="min(4, CPUs)",
              help="DataLoader processes that decode images.")
@click.option("--weights", type=click.Path(path_type=Path, dir_okay=False),
              show_default="$ADVSEG_HOME, then torch hub's cache", help="pt_inception-2015-12-05-6726825d.pth.")
@click.option("--decode", type=click.Choice(["pytorch-fid", "advseg"]), default="pytorch-fid",
              help="pytorch-fid: PIL .convert('RGB') exactly as pytorch-fid; advseg: EXIF-upright, "
                   "alpha on white, 16-bit scaled (as the other stages read photos).")
@click.option("--no-cache", "no_cache", is_flag=True,
              help="Neither read nor write REAL's cached statistics ($ADVSEG_HOME/fid-stats).")
@click.option("--kid", is_flag=True, help="Also compute the Kernel Inception Distance (needs features, "
                                          "not a mu/sigma-only .npz).")
@click.option("--kid-subsets", type=click.IntRange(min=1), default=100, help="KID: random subsets averaged.")
@click.option("--kid-subset-size", type=click.IntRange(min=2), default=1000,
              help="KID: images per subset (clamped to the smaller side).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the result as JSON on stdout (the FID line then goes to stderr).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def fid(real: Path, fake: Path | None, save_stats: Path | None, overwrite: bool, dims: str, no_cache: bool,
        as_json: bool, **options: Any) -> None:
    """Frechet Inception Distance between REAL and FAKE, with the numbers of `python -m pytorch_fid`.

    REAL and FAKE are folders of images (searched recursively) or .npz statistics files. REAL
    folders' statistics are cached by content, so evaluating many runs computes them once.
    `advseg fid FOLDER --save-stats OUT.npz` writes a statistics file instead.
    """
    from advseg_cli.fid import FidConfig, compute_fid, save_statistics

    config = FidConfig(dims=int(dims), cache=not no_cache, **options)
    if save_stats is not None:
        if fake is not None:
            raise AdvsegError("--save-stats takes one folder: advseg fid FOLDER --save-stats OUT.npz")
        side, record = save_statistics(real, save_stats, config, overwrite=overwrite)
        _print_failures("FOLDER", side.failures)
        _print_provenance(side)
        features = " and features" if config.kid else ""
        click.echo(f"fid: statistics{features} of {side.images} images ({side.dims}-d) -> {save_stats} "
                   f"(record {record})")
        return
    if fake is None:
        raise AdvsegError("missing FAKE: advseg fid REAL FAKE (or advseg fid FOLDER --save-stats OUT.npz)")
    result = compute_fid(real, fake, config)
    for side in (result.real, result.fake):
        _print_failures(side.label, side.failures)
        _print_provenance(side)
    for note in result.notes:
        click.echo(f"advseg fid: warning: {note}", err=True)
    lines = [f"FID: {result.fid!r}"]
    if result.kid is not None:
        lines.append(f"KID: {result.kid.mean!r} +- {result.kid.std!r} ({result.kid.subsets} subsets of "
                     f"{result.kid.subset_size})")
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        for line in lines:
            click.echo(line, err=True)
    else:
        for line in lines:
            click.echo(line)
