"""Dataset file lists: which photos make up a dataset's train and test splits, and how to check them.

A list is a small tab-separated text file (``data/lists/NAME.tsv`` when it ships with advseg), so two
users who prepare the same dataset get the same photos, and a reviewer can read the split in a diff::

    # advseg dataset list v1
    # split<TAB>file<TAB>source<TAB>bytes<TAB>sha256
    train   000000000025.jpg   train2017/000000000025.jpg   196370   <sha256 or ->

``source`` is a URL path below the dataset's host (COCO), or a member of its archive (ADE20K), or a
path under the folder the user provides. ``bytes`` and ``sha256`` are ``-`` where not known yet.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from pathlib import Path

from advseg_cli.errors import AdvsegError
from advseg_cli.files import write_bytes_atomic

LIST_HEADER = "# advseg dataset list v1"
COLUMNS = ("split", "file", "source", "bytes", "sha256")
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class ListEntry:
    """One photo of a dataset: its split, its name in the prepared folder, and where it comes from."""

    split: str
    file: str
    source: str
    size: int | None = None
    sha256: str | None = None

    def to_line(self) -> str:
        return "\t".join([self.split, self.file, self.source,
                          "-" if self.size is None else str(self.size), self.sha256 or "-"])


def _parse_line(line: str, where: str) -> ListEntry:
    fields = line.split("\t")
    if len(fields) != len(COLUMNS):
        raise AdvsegError(f"{where}: expected {len(COLUMNS)} tab-separated fields "
                          f"({', '.join(COLUMNS)}), found {len(fields)}; fix or delete the list")
    split, file, source, size, digest = fields
    if split not in SPLITS:
        raise AdvsegError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    if "/" in file or "\\" in file or file in ("", ".", ".."):
        raise AdvsegError(f"{where}: file {file!r} must be a plain file name")
    try:
        parsed_size = None if size == "-" else int(size)
    except ValueError:
        raise AdvsegError(f"{where}: bytes {size!r} is not a number") from None
    return ListEntry(split, file, source, parsed_size, None if digest == "-" else digest.lower())


def read_list(path: Path) -> list[ListEntry]:
    """Parse a list file; any malformed line is a one-line error naming the line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise AdvsegError(f"{path}: cannot read the dataset list ({exc.strerror})") from None
    if not lines or lines[0].strip() != LIST_HEADER:
        raise AdvsegError(f"{path}: not an advseg dataset list (first line must be {LIST_HEADER!r})")
    entries = [_parse_line(line, f"{path}:{number}") for number, line in enumerate(lines, 1)
               if line.strip() and not line.startswith("#")]
    names = [(entry.split, entry.file) for entry in entries]
    if len(set(names)) != len(names):
        raise AdvsegError(f"{path}: a file name appears twice in one split")
    return entries


def list_text(entries: Iterable[ListEntry], comments: Iterable[str] = ()) -> str:
    """The text of a list file: header, comment lines (the selection rule), column names, entries."""
    lines = [LIST_HEADER, *(f"# {comment}" for comment in comments), "# " + "\t".join(COLUMNS)]
    lines += [entry.to_line() for entry in entries]
    return "\n".join(lines) + "\n"


def write_list(path: Path, entries: Iterable[ListEntry], comments: Iterable[str] = ()) -> None:
    write_bytes_atomic(path, list_text(entries, comments).encode("utf-8"))


def list_digest(entries: Iterable[ListEntry]) -> str:
    """sha256 of the split itself (names and sources), recorded so a changed list is noticed."""
    text = "\n".join(f"{e.split}\t{e.file}\t{e.source}" for e in entries)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_counts(entries: Iterable[ListEntry]) -> dict[str, int]:
    counts = dict.fromkeys(SPLITS, 0)
    for entry in entries:
        counts[entry.split] += 1
    return counts
