"""``advseg weights``: where each weights file comes from, and a check that the ones a job needs are there."""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from advseg_cli.errors import AdvsegError, WeightsMismatchError, WeightsNotFoundError


# The modules that register weights files when imported: HED, Inception, AutoPainter's VGG16.
_REGISTERING_MODULES = ("advseg_cli.edges", "advseg_cli.fid", "advseg_cli.models.perceptual")


def _load_registry() -> None:
    for module in _REGISTERING_MODULES:
        importlib.import_module(module)


def _parse_need(text: str) -> tuple[str, Path | None]:
    name, _, path = text.partition("=")
    return name.strip(), (Path(path).expanduser() if path.strip() else None)


@click.command()
@click.option("--need", "needed", multiple=True, metavar="NAME[=PATH]",
              help="Fail (exit 2) unless these weights are available; PATH names a file the user chose. "
                   "Files that can be downloaded with a known hash are fetched now. Repeatable.")
def weights(needed: tuple[str, ...]) -> None:
    """List the weights files advseg uses and where each is found (nothing is downloaded).

    With --need, check the weights a long job will need before it starts (``make reproduce`` does), so a
    missing file stops it in the first minute, not after days of training.
    """
    from advseg_cli.weights import registered_weights, resolve_weights, weights_spec, where_to_put

    _load_registry()
    if needed:
        problems, found = [], []
        for name, path in map(_parse_need, needed):
            try:
                spec = weights_spec(name)
                found.append(f"{spec.name}: {resolve_weights(spec.name, path).path}")
            except AdvsegError as exc:  # missing, refused, unknown name, or its host unreachable
                problems.append(str(exc))
        if problems:
            raise AdvsegError("; ".join(problems))
        for line in found:
            click.echo(f"weights: {line}")
        return
    for spec in registered_weights():
        try:
            resolved = resolve_weights(spec.name, download=False)
            where = f"{resolved.source}: {resolved.path}"
        except WeightsNotFoundError:
            where = (f"missing: {spec.how_to_get}, then put it in {where_to_put(spec)}, or pass "
                     f"{spec.used_by} {spec.option} PATH")
        except WeightsMismatchError as exc:
            where = f"REFUSED: {exc}"
        click.echo(f"{spec.name} ({spec.filename}, for {spec.used_by}): {where}")
