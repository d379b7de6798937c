"""Optional dependencies: imported only where a command needs them, refused in one line when missing.

advseg's core runs without ONNX, Gradio, detectron2 and the test tools. A user who calls a command that
needs one of them must learn, before any file is written, which package is missing and how to install
it, not read a ``ModuleNotFoundError`` traceback. :data:`INSTALL_STEPS` is the one table of which module
comes with which extra (setup.py's ``extras_require``) or install step; :func:`require` is the one way
advseg imports them.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

from advseg_cli.errors import AdvsegError

DETECTRON2_GUIDE = "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"


@dataclasses.dataclass(frozen=True)
class InstallStep:
    """Where an optional module comes from (``source``) and the command that installs it (``command``)."""

    source: str
    command: str


EXPORT_EXTRA = InstallStep("the 'export' extra", "pip install -e '.[export]' (make install includes it)")
INSTALL_STEPS: dict[str, InstallStep] = {
    "onnx": EXPORT_EXTRA,
    "onnxruntime": EXPORT_EXTRA,
    # make install adds gradio with --no-deps (its pillow cap); its own requirements are in requirements.txt
    "gradio": InstallStep("the 'serve' extra", "pip install -e '.[serve]' (make install includes it)"),
    "detectron2": InstallStep("not on PyPI", f"install it as {DETECTRON2_GUIDE} describes"),
    "transformers": InstallStep("an advseg requirement", "pip install -e . (or pip install -r requirements.txt)"),
    "selenium": InstallStep("the 'test' extra", "pip install -e '.[test]' (make install includes it)"),
    "mutmut": InstallStep("the 'mutation' extra", "pip install -e '.[mutation]' (make mutation installs it)"),
}


class MissingDependencyError(AdvsegError):
    """An optional package a command needs is not importable; the message names it and its install step."""


def install_hint(module: str) -> str:
    """``MODULE (SOURCE): COMMAND``, e.g. for a test's skip reason; the table's entry for ``module``."""
    step = INSTALL_STEPS[module]
    return f"{module} ({step.source}): {step.command}"


def missing_message(module: str, purpose: str, error: ImportError, alternative: str = "") -> str:
    """One line: what needs the module, and how to install it. A module that is there but fails to
    import (one of its own dependencies missing, e.g. after ``pip install --no-deps``) says so."""
    missing = error.name or ""
    if missing == module or missing.startswith(module + "."):
        message = f"{purpose} needs {install_hint(module)}"
    else:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        message = f"{purpose} needs {module}, which does not import ({reason}); {INSTALL_STEPS[module].command}"
    return f"{message}; {alternative}" if alternative else message


def require(module: str, purpose: str, alternative: str = "") -> ModuleType:
    """Import the optional ``module`` (a key of :data:`INSTALL_STEPS`) for ``purpose`` (what the user
    asked for, e.g. ``--format onnx``), or raise :class:`MissingDependencyError` with one line.

    Callers call it before they create any output, so a refusal leaves nothing behind.
    """
    package = module.split(".")[0]
    if package not in INSTALL_STEPS:
        raise KeyError(f"{package}: not in advseg_cli.optional.INSTALL_STEPS; add its install step there")
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(missing_message(package, purpose, error, alternative)) from None
