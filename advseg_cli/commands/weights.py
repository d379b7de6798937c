"""``advseg weights``: where each weights file comes from, and a check that the ones a job needs are there."""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from advseg_cli.errors import AdvsegError, WeightsMismatchError, WeightsNotFoundError

# The modules that register weights files when imported: HED, Inception, AutoPainter's VGG16. The
# segmentation backends' weights are listed per backend (seg:NAME), by the backends' own checks.
_REGISTERING_MODULES = ("advseg_cli.edges", "advseg_cli.fid", "advseg_cli.models.perceptual")
SEG_PREFIX = "seg:"


def _load_registry() -> None:
    for module in _REGISTERING_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as exc:  # a broken install, not a user mistake worth a traceback
            raise AdvsegError(f"advseg's dependency {exc.name} is not installed; run `make install` "
                              "(or pip install -e . in this environment)") from None


def _parse_need(text: str) -> tuple[str, Path | None]:
    name, _, path = text.partition("=")
    return name.strip(), (Path(path).expanduser() if path.strip() else None)


def _check_one(name: str, path: Path | None) -> str:
    """Where NAME's file is (fetching it when it can be); AdvsegError naming the fix when it is not."""
    from advseg_cli.segmentation.base import check_segmenter_weights
    from advseg_cli.weights import resolve_weights

    if name.startswith(SEG_PREFIX):
        return check_segmenter_weights(name[len(SEG_PREFIX):], path)
    return str(resolve_weights(name, path).path)


def _listing_lines() -> list[str]:
    """One line per weights file and per segmentation backend; nothing is downloaded."""
    from advseg_cli.segmentation.base import available_backends, check_segmenter_weights
    from advseg_cli.weights import downloads_disabled, registered_weights, resolve_weights, where_to_put

    lines = []
    stage_weights = registered_weights()  # before the backends' checks import their modules
    with downloads_disabled():
        for spec in stage_weights:
            try:
                resolved = resolve_weights(spec.name)
                where = f"{resolved.source}: {resolved.path}"
            except WeightsNotFoundError:
                where = (f"missing: {spec.how_to_get}, then put it in {where_to_put(spec)}, or pass "
                         f"{spec.used_by} {spec.option} PATH")
            except WeightsMismatchError as exc:
                where = f"REFUSED: {exc}"
            lines.append(f"{spec.name} ({spec.filename}, for {spec.used_by}): {where}")
        for backend in available_backends():
            try:
                where = f"ready: {check_segmenter_weights(backend, None)}"
            except AdvsegError as exc:
                where = f"not ready: {exc}"
            lines.append(f"{SEG_PREFIX}{backend} (segcache / train --advseg): {where}")
    return lines


@click.command()
@click.option("--need", "needed", multiple=True, metavar="NAME[=PATH]",
              help="Fail (exit 2) unless these are available: a weights name (e.g. inception-fid) or "
                   "seg:BACKEND; PATH names a file or folder the user chose. Files that can be fetched are "
                   "fetched now. Repeatable.")
def weights(needed: tuple[str, ...]) -> None:
    """List the weights advseg uses and where each is found (nothing is downloaded).

    With --need, check the weights a long job will need before it starts (``make reproduce`` does), so a
    missing file stops it in the first minute, not after days of training.
    """
    _load_registry()
    if not needed:
        for line in _listing_lines():
            click.echo(line)
        return
    problems, found = [], []
    for name, path in map(_parse_need, needed):
        try:
            found.append(f"{name}: {_check_one(name, path)}")
        except AdvsegError as exc:  # missing, refused, unknown name, library absent, host unreachable
            problems.append(str(exc))
    if problems:
        raise AdvsegError("; ".join(problems))
    for line in found:
        click.echo(f"weights: {line}")
