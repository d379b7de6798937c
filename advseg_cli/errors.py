"""One error style for the whole toolkit.

Work code raises these; only the command line turns them into one line on stderr and an exit status,
so the same functions stay usable (and testable) from Python.
"""

from __future__ import annotations


class AdvsegError(Exception):
    """A problem the user can fix (bad path, option, weights file): one line, exit status 2."""

    exit_code = 2


class WeightsNotFoundError(AdvsegError):
    """No weights file could be found in any of the places we look; the message says where to get it."""


class WeightsMismatchError(AdvsegError):
    """A weights file exists but its content is not what we expected (hash or layout)."""


class IncompatibleInputError(AdvsegError):
    """An input was made by an earlier stage with settings this stage cannot use."""


class ImageDecodeError(Exception):
    """One input file could not be decoded. Stages report and skip it; it never ends a run."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class AllInputsFailedError(Exception):
    """Every input of a run failed; the run record lists why. Exit status 1 (not a usage error)."""

    exit_code = 1


class TrainingDivergedError(Exception):
    """A loss became NaN or Inf: training stopped, the last good checkpoint is kept. Exit status 1."""

    exit_code = 1
