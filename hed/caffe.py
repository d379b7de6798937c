"""The original Caffe HED weights (``hed_pretrained_bsds.caffemodel``), read without Caffe or protobuf.

A ``.caffemodel`` is one protobuf ``NetParameter`` message. We need only its layers' names and
weight blobs, so a small reader of protobuf's wire format (varints, length-delimited fields, packed
floats) is enough; it handles both layer encodings Caffe has written:

* ``layer`` (field 100, ``LayerParameter``: name 1, type 2, blobs 7), Caffe since 2015;
* ``layers`` (field 2, ``V1LayerParameter``: name 4, type 5, blobs 6), older files;

and both blob shapes: ``shape`` (field 7, a ``BlobShape`` of int64 dims) and the legacy 4-D
``num, channels, height, width`` (fields 1-4). Blob data are float32 (field 5, packed or not) or
float64 (field 8). Caffe stores convolution weights as (out, in, kh, kw), PyTorch's layout.

The layer names are HED's (Xie & Tu): VGG16's ``conv1_1 .. conv5_3``, the side outputs
``score-dsn1 .. score-dsn5`` and the fusion ``new-score-weighting``. Other layers (the fixed bilinear
``upsample_*`` deconvolutions, crops, losses) are ignored. The Caffe network pads ``conv1_1`` by 35
and crops its deconvolution outputs where our network pads by 1 and resizes; the weights are the
same, the maps differ slightly near the borders (the Keras and pytorch-hed ports do as we do).
"""

from __future__ import annotations

from collections.abc import Iterator
from os import PathLike

import numpy as np

_WIRE_VARINT, _WIRE_FIXED64, _WIRE_BYTES, _WIRE_FIXED32 = 0, 1, 2, 5


class CaffeFormatError(ValueError):
    """The bytes are not a Caffe model we can read (the message says what is wrong)."""


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise CaffeFormatError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise CaffeFormatError("varint longer than 10 bytes")


def _fields(data: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of one message; bytes fields come as views, not copies."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == _WIRE_VARINT:
            value, pos = _varint(data, pos)
            yield number, wire, value
        elif wire == _WIRE_BYTES:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise CaffeFormatError(f"field {number} runs past the end of its message (truncated file?)")
            yield number, wire, data[pos:pos + length]
            pos += length
        elif wire in (_WIRE_FIXED32, _WIRE_FIXED64):
            size = 4 if wire == _WIRE_FIXED32 else 8
            if pos + size > len(data):
                raise CaffeFormatError("truncated fixed-size field")
            yield number, wire, data[pos:pos + size]
            pos += size
        else:
            raise CaffeFormatError(f"wire type {wire} of field {number} is not protobuf's")


def _packed_varints(value: int | memoryview) -> list[int]:
    if isinstance(value, int):
        return [value]
    out, pos = [], 0
    while pos < len(value):
        item, pos = _varint(value, pos)
        out.append(item)
    return out


def _reals(value: int | memoryview, wire: int, dtype: str, single_wire: int) -> np.ndarray:
    """A packed run (bytes) or a single fixed-size value of floats or doubles."""
    size = np.dtype(dtype).itemsize
    if isinstance(value, int) or wire not in (_WIRE_BYTES, single_wire) or len(value) % size:
        raise CaffeFormatError("blob data that are not whole floats (damaged file?)")
    return np.frombuffer(bytes(value), dtype=dtype)


def _blob(message: memoryview) -> np.ndarray:
    """A BlobProto as an array of its shape (new ``shape`` field, else the legacy 4-D fields)."""
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    dims: list[int] = []
    legacy = {1: 1, 2: 1, 3: 1, 4: 1}
    has_legacy = False
    for number, wire, value in _fields(message):
        if number == 5:
            floats.append(_reals(value, wire, "<f4", _WIRE_FIXED32))
        elif number == 8:
            doubles.append(_reals(value, wire, "<f8", _WIRE_FIXED64))
        elif number == 7 and wire == _WIRE_BYTES:
            for dim_number, _, dim_value in _fields(value):
                if dim_number == 1:
                    dims += _packed_varints(dim_value)
        elif number in legacy and wire == _WIRE_VARINT:
            legacy[number], has_legacy = int(value), True
    data = np.concatenate(floats) if floats else (np.concatenate(doubles).astype(np.float32) if doubles
                                                   else np.zeros(0, np.float32))
    shape = tuple(dims) if dims else (tuple(legacy[i] for i in (1, 2, 3, 4)) if has_legacy else (data.size,))
    if int(np.prod(shape)) != data.size:
        raise CaffeFormatError(f"a blob of shape {shape} holds {data.size} values")
    return data.reshape(shape)


def _layer(message: memoryview, name_field: int, blobs_field: int) -> tuple[str, list[np.ndarray]]:
    name, blobs = "", []
    for number, wire, value in _fields(message):
        if number == name_field and wire == _WIRE_BYTES:
            name = bytes(value).decode("utf-8", "replace")
        elif number == blobs_field and wire == _WIRE_BYTES:
            blobs.append(_blob(value))
    return name, blobs


def read_caffemodel(path: str | PathLike[str]) -> dict[str, list[np.ndarray]]:
    """Every layer of a ``.caffemodel`` that has blobs: name -> [weights, bias, ...]."""
    with open(path, "rb") as handle:
        data = memoryview(handle.read())
    layers: dict[str, list[np.ndarray]] = {}
    for number, wire, value in _fields(data):
        if wire != _WIRE_BYTES or number not in (100, 2):
            continue
        name, blobs = _layer(value, *((1, 7) if number == 100 else (4, 6)))
        if blobs:
            layers[name] = blobs
    if not layers:
        raise CaffeFormatError("no layer with weights (not a .caffemodel?)")
    return layers
