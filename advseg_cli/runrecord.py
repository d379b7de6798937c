"""The run record: what a stage did, with what, and what failed, written next to its output.

A later stage reads it to refuse inputs made with incompatible settings, and a person reads it to
know which weights and options produced a folder of images months later.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from advseg_cli import __version__
from advseg_cli.errors import AdvsegError
from advseg_cli.files import write_bytes_atomic

RECORD_SCHEMA_VERSION = 1
FOLDER_RECORD_NAME = "advseg-run.json"


def record_path_for(output: Path, shard: tuple[int, int] = (0, 1)) -> Path:
    """Where the record of an output lives: inside a folder, or beside a file.

    Shards of one run write their own record so that parallel processes never overwrite each other.
    """
    index, count = shard
    suffix = "" if count == 1 else f".shard-{index}-of-{count}"
    if output.suffix and not output.is_dir():
        return output.with_name(f"{output.name}{suffix}.run.json")
    return output / FOLDER_RECORD_NAME.replace(".json", f"{suffix}.json")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclasses.dataclass
class RunRecord:
    """Mutable record of one stage run; ``write`` may be called repeatedly (start, end)."""

    stage: str
    options: dict[str, Any]
    command: list[str] = dataclasses.field(default_factory=lambda: list(sys.argv))
    weights: list[dict[str, str]] = dataclasses.field(default_factory=list)
    started: str = dataclasses.field(default_factory=_now)
    ended: str | None = None
    status: str = "running"
    counts: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"done": 0, "skipped": 0, "failed": 0}
    )
    failures: list[dict[str, str]] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def add_failure(self, item: str, reason: str) -> None:
        """Count and remember one failed input (the record is the report users read)."""
        self.counts["failed"] += 1
        self.failures.append({"input": item, "reason": reason})

    def finish(self, status: str = "complete") -> None:
        """End the record; an interrupted per-item stage also says how far it got (what the next run skips)."""
        self.ended = _now()
        self.status = status
        if status == "interrupted" and "done" in self.counts:
            self.extra["items_finished_before_the_interrupt"] = self.counts["done"] + self.counts.get("failed", 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": RECORD_SCHEMA_VERSION,
            "tool": "advseg",
            "version": __version__,
            "python": platform.python_version(),
            **dataclasses.asdict(self),
        }

    def write(self, path: Path) -> None:
        text = json.dumps(self.to_json(), indent=2, sort_keys=False, default=str) + "\n"
        write_bytes_atomic(path, text.encode("utf-8"))


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or None when there is none; a corrupt record is a clear error."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdvsegError(f"{path}: unreadable run record ({exc}); delete it or use --overwrite") from None
    if not isinstance(data, dict) or data.get("tool") != "advseg":
        raise AdvsegError(f"{path}: not an advseg run record; delete it or use --overwrite")
    return data


def conflicting_options(
    previous: dict[str, Any], current: dict[str, Any], keys: tuple[str, ...]
) -> list[str]:
    """Names of the settings (among ``keys``) in which two runs differ, as 'key: old -> new'."""
    return [
        f"{key}: {previous.get(key)!r} -> {current.get(key)!r}"
        for key in keys
        if previous.get(key) != current.get(key)
    ]
