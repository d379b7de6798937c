"""File-system helpers that keep outputs trustworthy: atomic writes and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

TEMP_MARKER = ".tmp-"


def temporary_sibling(path: Path) -> Path:
    """A unique hidden name in the same folder, keeping the suffix so encoders still know the format.

    Same folder means the final ``os.replace`` is a rename on one file system, hence atomic.
    """
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    return path.with_name(f".{path.stem}{TEMP_MARKER}{token}{path.suffix}")


def is_temporary(path: Path) -> bool:
    """Whether a file is a leftover of an interrupted atomic write (never a real input or output)."""
    return path.name.startswith(".") and TEMP_MARKER in path.name


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path; on success move it onto ``path``, on any error delete it.

    An interrupted run therefore never leaves a truncated file under the final name, which is what
    lets every stage resume by simply skipping outputs that exist.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (and durably: fsync before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def file_digest(path: Path, algorithm: str = "sha256", chunk_size: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks so multi-GB weights and archives do not need the memory.

    ``algorithm`` is a hashlib name: our own files use sha256; COCO and ADE20K publish sha1.
    """
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (the hash every weights file and cache entry is identified by)."""
    return file_digest(path, "sha256")


def _writer_is_gone(path: Path) -> bool:
    """Whether the process that made this temporary file has ended (its pid is in the name)."""
    match = re.search(re.escape(TEMP_MARKER) + r"(\d+)-", path.name)
    if match is None:
        return True
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_stale_temporaries(folder: Path) -> int:
    """Delete leftovers of atomic writes whose writer was killed; returns how many.

    Temporaries of live processes (other shards writing into the same folder) are left alone.
    """
    removed = 0
    if not folder.is_dir():
        return 0
    for path in folder.rglob(f".*{TEMP_MARKER}*"):
        if path.is_file() and _writer_is_gone(path):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
