"""The original Caffe HED model (``.caffemodel``): our wire-format reader against Google's protobuf.

Real Caffe weights cannot be downloaded here (and OpenCV 5 dropped its Caffe importer), so the test
writes ``.caffemodel`` files of HED's layers with random weights using Google's protobuf library, with
message classes built from the field numbers of Caffe's ``caffe.proto`` (NetParameter.layer 100 /
layers 2; LayerParameter name 1, type 2, blobs 7; V1LayerParameter name 4, type 5, blobs 6; BlobProto
num/channels/height/width 1-4, data 5, shape 7, double_data 8; BlobShape dim 1). Both encodings Caffe
has written are covered: ``layer`` with ``shape``, and the older ``layers`` with 4-D legacy dimensions;
floats packed (as caffe.proto declares them) and, in a small file, one field per float. The serialisation is protobuf's own, so it judges our reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("google.protobuf")  # tensorboard's dependency; only the test writer needs it
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: E402

import numpy_hed
from hed import HED, HEDWeightsError, load_hed_weights
from hed.caffe import CaffeFormatError, read_caffemodel
from hed.network import VGG_WIDTHS
from hed_testing import one_line_error, photo, to_tensor

V1_CONVOLUTION, V1_DECONVOLUTION, V1_DATA = 4, 39, 5  # V1LayerParameter.LayerType values
_F = descriptor_pb2.FieldDescriptorProto


def net_parameter_class(packed: bool) -> Any:
    """NetParameter (and what it holds) for the part of caffe.proto a .caffemodel's weights live in."""
    package = f"caffe_subset_{'packed' if packed else 'unpacked'}"
    file = descriptor_pb2.FileDescriptorProto(name=f"{package}.proto", package=package, syntax="proto2")

    def message(name: str, fields: list[tuple[str, int, int, int, str | None]]) -> None:
        proto = file.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = proto.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = f".{package}.{type_name}"
            if label == _F.LABEL_REPEATED and kind in (_F.TYPE_FLOAT, _F.TYPE_DOUBLE, _F.TYPE_INT64):
                field.options.packed = packed

    rep, opt = _F.LABEL_REPEATED, _F.LABEL_OPTIONAL
    message("BlobShape", [("dim", 1, _F.TYPE_INT64, rep, None)])
    message("BlobProto", [("shape", 7, _F.TYPE_MESSAGE, opt, "BlobShape"), ("data", 5, _F.TYPE_FLOAT, rep, None),
                          ("double_data", 8, _F.TYPE_DOUBLE, rep, None), ("num", 1, _F.TYPE_INT64, opt, None),
                          ("channels", 2, _F.TYPE_INT64, opt, None), ("height", 3, _F.TYPE_INT64, opt, None),
                          ("width", 4, _F.TYPE_INT64, opt, None)])
    message("LayerParameter", [("name", 1, _F.TYPE_STRING, opt, None), ("type", 2, _F.TYPE_STRING, opt, None),
                               ("blobs", 7, _F.TYPE_MESSAGE, rep, "BlobProto")])
    message("V1LayerParameter", [("name", 4, _F.TYPE_STRING, opt, None), ("type", 5, _F.TYPE_INT32, opt, None),
                                 ("blobs", 6, _F.TYPE_MESSAGE, rep, "BlobProto")])
    message("NetParameter", [("name", 1, _F.TYPE_STRING, opt, None),
                             ("layer", 100, _F.TYPE_MESSAGE, rep, "LayerParameter"),
                             ("layers", 2, _F.TYPE_MESSAGE, rep, "V1LayerParameter")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.NetParameter"))


# --------------------------------------------------------------------------- HED's layers
def hed_layers(seed: int = 0) -> list[tuple[str, list[np.ndarray]]]:
    """(Caffe name, [weights, bias]) of every learned HED layer, random, in the real shapes."""
    rng = np.random.default_rng(seed)
    layers, in_ch = [], 3
    for stage, widths in enumerate(VGG_WIDTHS):
        for index, width in enumerate(widths):
            he = np.sqrt(2.0 / (9 * in_ch))  # keeps activations of the same size through 13 ReLU layers
            layers.append((f"conv{stage + 1}_{index + 1}", [rng.normal(0, he, (width, in_ch, 3, 3)),
                                                           rng.normal(0, 0.1, width)]))
            in_ch = width
        layers.append((f"score-dsn{stage + 1}", [rng.normal(0, 0.1, (1, in_ch, 1, 1)), rng.normal(0, 0.1, 1)]))
    layers.append(("new-score-weighting", [rng.normal(0.2, 0.01, (1, 5, 1, 1)), rng.normal(0, 0.1, 1)]))
    return [(name, [b.astype(np.float32) for b in blobs]) for name, blobs in layers]


def _fill_blob(blob: Any, array: np.ndarray, legacy: bool, double: bool = False) -> None:
    if legacy:
        blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - array.ndim) + array.shape
    else:
        blob.shape.dim.extend(array.shape)
    (blob.double_data if double else blob.data).extend(array.ravel().tolist())


def write_caffemodel(path: Path, layers: list[tuple[str, list[np.ndarray]]], encoding: str,
                     packed: bool = True) -> Path:
    """A NetParameter: its name, a data layer without blobs, HED's layers, a fixed bilinear deconvolution.

    "new": ``layer`` entries, ``shape`` dims (one bias as double_data, which Caffe also reads);
    "v1": ``layers`` entries, legacy 4-D dims. ``packed=False`` writes one fixed32 field per float.
    """
    net = net_parameter_class(packed)(name="HED")
    deconv = ("upsample_2", [np.full((1, 1, 4, 4), 0.25, np.float32)])
    for index, (name, blobs) in enumerate([("data", []), *layers, deconv]):
        kind = "Input" if name == "data" else ("Deconvolution" if name.startswith("upsample") else "Convolution")
        if encoding == "new":
            layer = net.layer.add(name=name, type=kind)
        else:
            v1_kind = {"Input": V1_DATA, "Deconvolution": V1_DECONVOLUTION}.get(kind, V1_CONVOLUTION)
            layer = net.layers.add(name=name, type=v1_kind)
        for position, array in enumerate(blobs):
            double = encoding == "new" and name == "score-dsn2" and position == 1
            _fill_blob(layer.blobs.add(), array, legacy=encoding == "v1", double=double)
    path.write_bytes(net.SerializeToString())
    return path


@pytest.fixture(scope="module")
def layers() -> list[tuple[str, list[np.ndarray]]]:
    return hed_layers()


@pytest.fixture(scope="module")
def caffemodel(layers, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HED's layers in the current encoding, written once (59 MB) for the tests that only read it."""
    return write_caffemodel(tmp_path_factory.mktemp("caffe") / "hed_pretrained_bsds.caffemodel", layers, "new")


@pytest.mark.parametrize("encoding", ["new", "v1"])
def test_our_reader_returns_every_blob_protobuf_wrote(layers, tmp_path: Path, encoding: str) -> None:
    model = write_caffemodel(tmp_path / "hed.caffemodel", layers, encoding)
    ours = read_caffemodel(model)
    assert set(ours) == {name for name, _ in layers} | {"upsample_2"}  # the data layer has no blobs
    for name, blobs in layers:
        assert len(ours[name]) == len(blobs)
        for got, expected in zip(ours[name], blobs):
            np.testing.assert_array_equal(got.reshape(expected.shape), expected, err_msg=name)
    assert ours["conv3_2"][0].shape == (256, 256, 3, 3)  # 4-D from either kind of shape
    assert ours["upsample_2"][0].shape == (1, 1, 4, 4)


@pytest.mark.parametrize("encoding", ["new", "v1"])
def test_floats_written_one_field_each_are_read_too(tmp_path: Path, encoding: str) -> None:
    small = [("conv1_1", [np.arange(12, dtype=np.float32).reshape(2, 3, 2, 1) / 7, np.array([0.5, -2], np.float32)])]
    ours = read_caffemodel(write_caffemodel(tmp_path / "small.caffemodel", small, encoding, packed=False))
    np.testing.assert_array_equal(ours["conv1_1"][0].reshape(2, 3, 2, 1), small[0][1][0])
    np.testing.assert_array_equal(ours["conv1_1"][1].reshape(-1), small[0][1][1])


def numpy_layers(layers: list[tuple[str, list[np.ndarray]]]) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """The Caffe layers by their own names, as ``numpy_hed`` takes them: VGG block b holds conv{b}_1, conv{b}_2,
    ... in order, side output b is score-dsn{b}, the fusion new-score-weighting. Kernels go from Caffe's
    (out, in, kh, kw) to the (kh, kw, in, out) of numpy_hed's NHWC convolution."""
    named = {name: [blob.astype(np.float64) for blob in blobs] for name, blobs in layers}

    def layer(name: str) -> tuple[np.ndarray, np.ndarray]:
        weights, bias = named[name]
        return weights.transpose(2, 3, 1, 0), bias.reshape(-1)

    converted = {f"block{b}": [layer(f"conv{b}_{k}") for k in range(1, len(widths) + 1)]
                 for b, widths in enumerate(VGG_WIDTHS, start=1)}
    converted.update({f"dsn{b}": [layer(f"score-dsn{b}")] for b in range(1, 6)})
    converted["fuse"] = [layer("new-score-weighting")]
    return converted


def test_caffemodel_gives_the_full_hed_output_of_its_layers(layers, caffemodel: Path, tmp_path: Path) -> None:
    """All five side outputs and the fused map of HED loaded from the .caffemodel equal numpy_hed's forward on
    the same layers read by their Caffe names. Every layer is random and different, so a mapping that swaps two
    layers of one shape (conv4_2 / conv4_3, score-dsn4 / score-dsn5, ...) or drops one changes the outputs.
    Compared as logits (the sigmoid saturates); float32 against float64 through 13 layers differ by at most 4e-6
    of a map's range (measured), so 1e-4 of it; the swap of conv4_2 and conv4_3 moves every pixel of side 4 on."""
    state, name = load_hed_weights(caffemodel)
    assert name == "caffe"
    model = HED().eval()
    model.load_state_dict(state)
    image = np.ascontiguousarray(photo("astronaut", 40)[3:36, 1:38])  # 33x37: odd sides, partial pool windows
    with torch.no_grad():
        sides, fused = model.side_logits(to_tensor(image))
    expected_sides, expected_fused = numpy_hed.hed_logits(image, numpy_layers(layers))
    for index, (side, expected) in enumerate(zip([*sides, fused], [*expected_sides, expected_fused])):
        label = f"side output {index + 1}" if index < 5 else "fused map"
        scale = np.abs(expected).max()
        assert scale > 1 and expected.std() > 0.01 * scale, f"{label}: a flat reference would prove little"
        np.testing.assert_allclose(side[0, 0].numpy(), expected, rtol=0, atol=1e-4 * scale, err_msg=label)
    v1_state, _ = load_hed_weights(write_caffemodel(tmp_path / "old.caffemodel", layers, "v1"))
    assert all(torch.equal(v1_state[key], value) for key, value in state.items())


def test_the_cli_gives_the_same_sketches_from_the_caffemodel_and_our_layout(caffemodel: Path, tmp_path: Path) -> None:
    from tests.helpers import invoke_advseg, make_photo_folder

    photos = make_photo_folder(tmp_path / "photos", 48)
    model = caffemodel
    torch.save(load_hed_weights(model)[0], tmp_path / "hed.pth")
    for weights, out in ((model, "from-caffe"), (tmp_path / "hed.pth", "from-pth")):
        result = invoke_advseg("edges", str(photos), str(tmp_path / out), "--weights", str(weights), "--size", "48",
                               "--pad", "8", "--device", "cpu", "--quiet")
        assert result.returncode == 0, result.stderr
    sketches = sorted(p.relative_to(tmp_path / "from-caffe") for p in (tmp_path / "from-caffe").rglob("*.png"))
    assert len(sketches) == 4
    for relative in sketches:
        assert (cv2.imread(str(tmp_path / "from-caffe" / relative), 0)
                == cv2.imread(str(tmp_path / "from-pth" / relative), 0)).all()


def test_broken_caffemodels_are_one_line_errors(layers, caffemodel: Path, tmp_path: Path) -> None:
    whole = caffemodel.read_bytes()
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(HEDWeightsError, match="unreadable .caffemodel") as caught:
        load_hed_weights(truncated)
    one_line_error(str(caught.value), truncated)
    partial = write_caffemodel(tmp_path / "partial.caffemodel", [l for l in layers if l[0] != "score-dsn3"], "new")
    with pytest.raises(HEDWeightsError, match="without the HED layer 'score-dsn3'"):
        load_hed_weights(partial)
    wrong = [(n, [blobs[0][:, :1], blobs[1]] if n == "conv2_1" else blobs) for n, blobs in layers]
    with pytest.raises(HEDWeightsError, match=r"conv2_1 weights has shape \(128, 1, 3, 3\)"):
        load_hed_weights(write_caffemodel(tmp_path / "wrong.caffemodel", wrong, "new"))
    text = tmp_path / "notes.caffemodel"
    text.write_text("this is not a model")
    with pytest.raises(HEDWeightsError):
        load_hed_weights(text)
    with pytest.raises(CaffeFormatError):
        read_caffemodel(text)


def test_damaged_bytes_are_format_errors_never_crashes(tmp_path: Path) -> None:
    """Flipped, deleted and cut bytes of a small model: a CaffeFormatError or a readable result, nothing else."""
    import random

    small = [("conv1_1", [np.arange(12, dtype=np.float32).reshape(2, 3, 2, 1), np.array([0.5, -2], np.float32)])]
    good = write_caffemodel(tmp_path / "small.caffemodel", small, "new").read_bytes()
    rng, damaged, refused = random.Random(0), tmp_path / "damaged.caffemodel", 0
    for _ in range(400):
        data = bytearray(good)
        position = rng.randrange(len(data))
        if rng.random() < 0.5:
            data[position] = rng.randrange(256)
        else:
            del data[position:position + rng.randint(1, 8)]
        damaged.write_bytes(bytes(data))
        try:
            read_caffemodel(damaged)
        except CaffeFormatError:
            refused += 1
    assert refused > 100  # most damage is detected; the rest still parses into some arrays
