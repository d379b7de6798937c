"""Every optional import, refused as a new user meets it: the real command in a subprocess with that one
package made unimportable (whether or not it is installed here) ends with exit 2 and one line on stderr
that names the package and how to install it, and nothing is written: no output, no temporary folder.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from advseg_cli import optional
from advseg_cli.export import ExportConfig, export_model
from tests.colorize.kit import save_public, tiny_generator, write_sketches
from tests.helpers import REPO, make_photo_folder

# Runs module argv[2] as ``python -m`` would, with package argv[1] hidden from the import system.
RUN_WITHOUT = ("import runpy, sys; from tests.helpers import HiddenPackage; "
               "sys.meta_path.insert(0, HiddenPackage(sys.argv[1])); "
               "module = sys.argv[2]; sys.argv = [module, *sys.argv[3:]]; "
               "runpy.run_module(module, run_name='__main__', alter_sys=True)")
# What each refusal must name, written out here rather than read from advseg_cli.optional's table.
EXPORT_FIX = "pip install -e '.[export]'"
FIXES = {
    "onnx": EXPORT_FIX,
    "onnxruntime": EXPORT_FIX,
    "gradio": "pip install -e '.[serve]'",
    "detectron2": "https://detectron2.readthedocs.io/en/latest/tutorials/install.html",
    "transformers": "pip install -e .",
    "mutmut": "pip install -e '.[mutation]'",
    "selenium": "pip install -e '.[test]'",
}


def run_without(package: str, module: str, *args: str, outputs: Path) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` from the repository without ``package``; temporary files go to ``outputs``."""
    environment = {**os.environ, "ADVSEG_OFFLINE": "1", "TMPDIR": str(outputs)}
    return subprocess.run([sys.executable, "-c", RUN_WITHOUT, package, module, *args], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=300)


def assert_refused(result: subprocess.CompletedProcess, package: str, outputs: Path) -> None:
    """Exit 2, exactly one line naming the package and its fix, no traceback, nothing in ``outputs``."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"needs {package} " in lines[0] and FIXES[package] in lines[0], lines[0]
    assert sorted(outputs.iterdir()) == [], "written before the refusal"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny public-code generator file, its ONNX export, sketches and photos: the commands' inputs."""
    root = tmp_path_factory.mktemp("optional-inputs")
    public = save_public(tiny_generator(), root / "latest_net_G_A.pth")
    export_model(public, root / "g.onnx", ExportConfig(format="onnx"))
    sketches = write_sketches(root / "sketches", {"astronaut.png": ("astronaut", 32, 32)})
    return {"public": public, "onnx": root / "g.onnx", "sketches": sketches,
            "photos": make_photo_folder(root / "photos", 32)}


def test_export_onnx_without_onnx(models: dict[str, Path], tmp_path: Path) -> None:
    result = run_without("onnx", "advseg_cli.cli", "export", str(models["public"]), str(tmp_path / "g.onnx"),
                         "--format", "onnx", outputs=tmp_path)
    assert_refused(result, "onnx", tmp_path)
    assert "--format onnx needs onnx" in result.stderr


@pytest.mark.parametrize("package", ["onnx", "onnxruntime"])
def test_colorize_on_an_onnx_model_without(package: str, models: dict[str, Path], tmp_path: Path) -> None:
    result = run_without(package, "advseg_cli.cli", "colorize", str(models["onnx"]), str(models["sketches"]),
                         str(tmp_path / "colorized"), "--device", "cpu", "--quiet", outputs=tmp_path)
    assert_refused(result, package, tmp_path)


def test_serve_without_gradio(models: dict[str, Path], tmp_path: Path) -> None:
    result = run_without("gradio", "advseg_cli.cli", "serve", str(models["public"]), "--device", "cpu",
                         "--port", "0", outputs=tmp_path)
    assert_refused(result, "gradio", tmp_path)  # not even the private temporary folder of the page


@pytest.mark.parametrize("package, backend", [("detectron2", "panoptic-fpn"), ("transformers", "mask2former")])
def test_segcache_backend_without(package: str, backend: str, models: dict[str, Path], tmp_path: Path) -> None:
    """Refused before the weights are looked for, and before OUT's folder is made."""
    result = run_without(package, "advseg_cli.cli", "segcache", str(models["photos"]),
                         str(tmp_path / "new" / "segmaps.h5"), "--backend", backend, "--device", "cpu",
                         outputs=tmp_path)
    assert_refused(result, package, tmp_path)
    assert f"the {backend} backend needs {package}" in result.stderr


def mutation_work() -> set[str] | None:
    """What tests/mutation.py's work folder (.mutation/) holds, None when it does not exist."""
    work = REPO / ".mutation"
    return {p.name for p in work.iterdir()} if work.is_dir() else None


def test_mutation_testing_without_mutmut(tmp_path: Path) -> None:
    before = mutation_work()
    result = run_without("mutmut", "tests.mutation", "images", outputs=tmp_path)
    assert_refused(result, "mutmut", tmp_path)
    assert mutation_work() == before, "the tree was copied to .mutation/ before the refusal"


@pytest.mark.skipif(importlib.util.find_spec("gradio") is None,
                    reason="the browser test skips for gradio first here; its selenium skip needs gradio installed")
def test_the_browser_test_without_selenium_is_skipped_with_the_fix(tmp_path: Path) -> None:
    result = run_without("selenium", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                         "tests/serve/test_serve_page.py", outputs=tmp_path)
    # a module skipped at import collects nothing: pytest's exit status 5, not a failure (1) or error (2+)
    assert result.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, result.stdout + result.stderr
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1 and "needs selenium" in skipped[0] and FIXES["selenium"] in skipped[0], result.stdout
    assert "error" not in result.stdout.lower()


def test_a_package_that_is_there_but_fails_to_import_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """gradio installed with --no-deps but one of its own requirements missing: not "install gradio"."""
    def broken(name: str) -> None:
        raise ModuleNotFoundError("No module named 'orjson'", name="orjson")

    monkeypatch.setattr(optional.importlib, "import_module", broken)
    with pytest.raises(optional.MissingDependencyError) as error:
        optional.require("gradio", "the web page")
    message = str(error.value)
    assert message.startswith("the web page needs gradio, which does not import (No module named 'orjson')")
    assert FIXES["gradio"] in message and "\n" not in message


def setup_extras() -> dict[str, list[str]]:
    """setup.py's extras_require, read as data (running setup.py would need setuptools' machinery)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no extras_require")


def test_every_extra_the_table_names_lists_that_package_in_setup_py() -> None:
    extras = setup_extras()
    named = {module: step.source.split("'")[1] for module, step in optional.INSTALL_STEPS.items()
             if step.source.startswith("the '")}
    assert set(named) == {"onnx", "onnxruntime", "gradio", "selenium", "mutmut"}
    for module, extra in named.items():
        assert any(requirement.lower().startswith(module) for requirement in extras[extra]), (module, extra)
        assert f"'.[{extra}]'" in optional.INSTALL_STEPS[module].command
