"""The world is one package, and the dependency runs one way: world -> segmentation/segcache, never back.

Why a test: an import from segmentation/ or segcache.py into the world (or into datasets/, which uses
the world) would bring the cycle back quietly, lazily inside a function where no import-time error shows
it. So the source is read, not imported: every import statement, at any depth, is checked.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import torch

from advseg_cli.segmentation import BACKENDS, build_segmenter
from advseg_cli.segmentation import base
from tests.helpers import REPO

PACKAGE = REPO / "advseg_cli"
FORBIDDEN = ("advseg_cli.world", "advseg_cli.datasets")  # what segmentation/ and segcache.py must not import
SEG_FILE = "shapes-seg.safetensors"


def _lower_modules() -> list[Path]:
    """The modules below the world: every module of segmentation/, and segcache.py."""
    return sorted((PACKAGE / "segmentation").rglob("*.py")) + [PACKAGE / "segcache.py"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module of ``from [.]*X import ...`` in ``module``."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base_parts = package[:len(package) - node.level + 1]
    return ".".join(base_parts + ([node.module] if node.module else []))


def _literal_import_call(node: ast.Call) -> str | None:
    """``importlib.import_module("x")`` / ``__import__("x")`` with a literal name: an import, too."""
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
    if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
        return str(node.args[0].value)
    return None


def imported_modules(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every module the ``source`` of ``module`` imports, at any depth (functions, branches), as
    absolute names; for ``from P import a, b`` both ``P`` and ``P.a``, ``P.b`` (a name may be a submodule)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            origin = _absolute(node, module, is_package)
            found += [origin] + [f"{origin}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and (name := _literal_import_call(node)):
            found.append(name)
    return found


def _imports_of(path: Path) -> list[str]:
    return imported_modules(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py")


def _is_forbidden(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in FORBIDDEN)


def test_segmentation_and_segcache_import_neither_the_world_nor_datasets() -> None:
    modules = _lower_modules()
    assert len(modules) > 5 and PACKAGE / "segmentation" / "base.py" in modules
    offenders = [f"{path.relative_to(REPO)} imports {name}"
                 for path in modules for name in _imports_of(path) if _is_forbidden(name)]
    assert not offenders, "the world depends on segmentation/segcache, not back: " + "; ".join(offenders)


def test_the_checker_sees_lazy_relative_and_literal_imports() -> None:
    """The parser itself: imports hidden in a function, relative ones and import_module("...") count."""
    source = ("def f():\n    from ..world import seg\n    from .. import datasets\n"
              "    import importlib\n    importlib.import_module('advseg_cli.world.render')\n")
    names = [name for name in imported_modules(source, "advseg_cli.segmentation.probe") if _is_forbidden(name)]
    assert names == ["advseg_cli.world", "advseg_cli.world.seg", "advseg_cli.datasets", "advseg_cli.world.render"]


def test_importing_segmentation_and_segcache_loads_no_world_no_datasets_no_backend() -> None:
    """In a fresh interpreter: the lazy table names modules, it does not import them (cheap import)."""
    code = ("import sys, advseg_cli.segmentation, advseg_cli.segcache\n"
            "print(sorted(m for m in sys.modules if m.startswith(('advseg_cli.world', 'advseg_cli.datasets',"
            " 'advseg_cli.segmentation.mask2former', 'advseg_cli.segmentation.panoptic_fpn',"
            " 'transformers', 'detectron2'))))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_builtin_backend_is_a_module_path_that_registers_itself_under_its_name() -> None:
    """One mechanism for all three: the lazy table names the module; importing it registers the factory
    and the weights check. For ``shapes`` that module is the world's."""
    assert set(base._BUILTIN_MODULES) == set(BACKENDS)
    assert base._BUILTIN_MODULES["shapes"] == "advseg_cli.world.seg"
    for name, module in base._BUILTIN_MODULES.items():
        base._load_builtin_backend(name)
        assert base._REGISTRY[name].__module__ == module, name
        assert base._CHECKS[name].__module__ == module, name


def test_build_segmenter_shapes_is_the_world_packages_segmenter(shapes_segmenters: Path) -> None:
    from advseg_cli.world.seg import ShapesSegmenter

    seg = build_segmenter("shapes", shapes_segmenters / SEG_FILE, torch.device("cpu"))
    assert type(seg) is ShapesSegmenter and type(seg).__module__ == "advseg_cli.world.seg"
    assert seg.backend == "shapes"
