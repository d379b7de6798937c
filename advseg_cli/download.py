"""Resumable, verified HTTP downloads: dataset archives and photos, and model weights.

A download can take hours and fail half-way, and a file that is only partly there must never
pass for a complete one. So bytes go to ``NAME.part`` beside the destination, an interrupted transfer
continues from where it stopped with an HTTP ``Range`` request, and only a file that passes every
check we have (its size, its sha256 or sha1, a decoder) is renamed to its final name. A file that
fails a check is deleted and fetched again, a few times, before we give up on it.
"""

from __future__ import annotations

import dataclasses
import http.client
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from advseg_cli.errors import AdvsegError
from advseg_cli.files import file_digest
from advseg_cli.progress import progress

CHUNK = 1 << 20
USER_AGENT = "advseg-data/1 (+https://github.com/advseg)"


class HostUnreachableError(AdvsegError):
    """The dataset host cannot be reached at all (down, no network, wrong mirror): exit 2."""


class DownloadFailedError(Exception):
    """One file could not be fetched (HTTP error, or never intact); callers report it and go on."""


class DownloadCorruptError(DownloadFailedError):
    """The file arrived every time, but never passed its checks (wrong size, hash or content)."""


@dataclasses.dataclass(frozen=True)
class Expected:
    """What a downloaded file must be. Anything left ``None`` is not checked.

    ``algorithm`` is a hashlib name: COCO and ADE20K publish sha1 digests of their archives, our own
    lists carry sha256.
    """

    size: int | None = None
    digest: str | None = None
    algorithm: str = "sha256"
    validate: Callable[[Path], str | None] | None = None  # returns a reason when the file is bad

    def problem_with(self, path: Path) -> str | None:
        """Why ``path`` is not the expected file, or None when it passes every check."""
        actual_size = path.stat().st_size
        if self.size is not None and actual_size != self.size:
            return f"{actual_size} bytes, expected {self.size}"
        if self.digest is not None:
            actual = file_digest(path, self.algorithm)
            if actual != self.digest.lower():
                return f"{self.algorithm} {actual[:12]}..., expected {self.digest[:12]}..."
        if self.validate is not None:
            return self.validate(path)
        return None


def part_path(destination: Path) -> Path:
    """Where the bytes of an unfinished download live (kept between runs so they can resume)."""
    return destination.with_name(destination.name + ".part")


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _is_unreachable(exc: BaseException) -> bool:
    """A failure to connect at all (as opposed to a broken transfer or an HTTP error status)."""
    reason = getattr(exc, "reason", exc)
    return isinstance(reason, (ConnectionRefusedError, socket.gaierror, socket.timeout, TimeoutError,
                               OSError)) and not isinstance(exc, urllib.error.HTTPError)


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=timeout)


def _transfer(url: str, part: Path, *, timeout: float, quiet: bool, label: str) -> None:
    """Append the missing bytes of ``url`` to ``part``; raises on a broken connection (part kept)."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: the part is whole (or too long)
            return
        raise
    with response:
        if offset and response.status != 206:  # the server ignored Range: start over
            offset = 0
        length = response.headers.get("Content-Length")
        expected_total = offset + int(length) if length is not None else None
        with open(part, "ab" if offset else "wb") as handle, \
                progress(total=expected_total, desc=label, quiet=quiet, unit="B") as bar:
            bar.update(offset)
            # read1: whatever has arrived, up to CHUNK (read() waits for a whole CHUNK), so a signal or a
            # broken connection mid-file leaves every byte received in the part for the Range request
            for chunk in iter(lambda: response.read1(CHUNK), b""):
                handle.write(chunk)
                bar.update(len(chunk))
            handle.flush()
            os.fsync(handle.fileno())
    received = part.stat().st_size
    if expected_total is not None and received < expected_total:
        raise http.client.IncompleteRead(b"", expected_total - received)


def download(url: str, destination: Path, expected: Expected = Expected(), *, attempts: int = 3,
             timeout: float = 60.0, quiet: bool = False, label: str | None = None,
             unreachable_hint: str = "point --mirror at a copy of the data") -> Path:
    """Make ``destination`` a verified copy of ``url``; returns it. Re-running is free once it exists.

    Raises ``HostUnreachableError`` (a usage-level error: exit 2, its message ending with
    ``unreachable_hint``, the caller's way around) when the host cannot be reached on the first try,
    and ``DownloadFailedError`` when the file stays broken after ``attempts`` tries.
    """
    if destination.exists():
        if expected.problem_with(destination) is None:
            return destination
        destination.unlink()  # a corrupt copy under the final name: fetch it again
    destination.parent.mkdir(parents=True, exist_ok=True)
    part, label = part_path(destination), label or destination.name
    last_problem = "no attempt made"
    for attempt in range(1, attempts + 1):
        try:
            _transfer(url, part, timeout=timeout, quiet=quiet, label=label)
        except urllib.error.HTTPError as exc:
            raise DownloadFailedError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except (http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as exc:
            last_problem = f"transfer broke off ({type(exc).__name__})"
            time.sleep(min(2.0 ** attempt * 0.1, 5.0))
            continue  # keep the part: the next attempt resumes it
        except urllib.error.URLError as exc:
            if _is_unreachable(exc):
                raise HostUnreachableError(
                    f"cannot reach {_host(url)} ({getattr(exc, 'reason', exc)}); check the network, or "
                    f"{unreachable_hint}") from None
            raise DownloadFailedError(f"{url}: {exc}") from None
        problem = expected.problem_with(part)
        if problem is None:
            os.replace(part, destination)
            return destination
        last_problem = problem
        part.unlink()  # corrupt or too long: the next attempt starts from nothing
    raise DownloadCorruptError(f"{url}: still not intact after {attempts} tries ({last_problem})")


def with_mirror(url: str, mirror: str | None) -> str:
    """``url`` with its scheme and host replaced by ``mirror`` (a local copy or a test server)."""
    if not mirror:
        return url
    parts = urllib.parse.urlsplit(url)
    base = mirror.rstrip("/")
    return f"{base}{parts.path}" + (f"?{parts.query}" if parts.query else "")
