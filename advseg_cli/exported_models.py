"""Exported colorizers: the file formats ``advseg export`` writes, and reading them back safely.

Two formats, both self-describing and free of pickle:

``safetensors`` folder
    ``model.safetensors`` (the photo generator's state dict; its header metadata repeats the generator
    spec it was written for), ``config.json`` (everything needed to rebuild and run it, the source
    run and its checkpoint's sha256, and the sha256 of ``model.safetensors``) and a ``README.md``
    model card. Reading checks the weights' sha256 against config.json and the spec in the weights'
    header against config.json's, so changed weights, an edited architecture or a truncated file are
    refused instead of giving silently wrong colours.
``onnx`` file
    the generator as an ONNX graph (inputs ``sketch`` [N,C,H,W] in [-1, 1], output ``photo``) with
    dynamic batch, height and width, the same config as JSON in the model's metadata properties and
    a sha256 over the graph and that config, checked before the graph runs. It runs with ONNX
    Runtime, no torch model involved: :class:`OnnxGenerator` only adapts tensors for colorize.

The config is parsed with ``json`` and validated field by field; nothing in it is ever evaluated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advseg_cli.errors import AdvsegError, WeightsMismatchError
from advseg_cli.models.networks import (GENERATOR_ARCHS, NORMS, GeneratorSpec, define_generator,
                                        load_generator_weights)
from advseg_cli.optional import require

EXPORT_FORMAT = "advseg-export"
EXPORT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
ONNX_SUFFIX = ".onnx"
ONNX_INPUT = "sketch"
ONNX_OUTPUT = "photo"
# Keys of the ONNX model's metadata properties, and of the safetensors header's metadata.
META_CONFIG = "advseg.config"
META_DIGEST = "advseg.sha256"  # ONNX: sha256 of the graph's bytes followed by the config's bytes
META_GENERATOR = "advseg.generator"  # safetensors: the generator spec the weights were written for
ONNX_MODEL_PURPOSE = "an .onnx MODEL (run by ONNX Runtime)"  # what needs onnx/onnxruntime, in their refusal
REEXPORT_HINT = "export it again with `advseg export RUN OUT` (or get an untouched copy)"


def canonical_json(value: Any) -> str:
    """One spelling of a JSON value (sorted keys, no spaces), so that hashes of it are stable."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def spec_from_config(config: Mapping[str, Any], where: Path) -> GeneratorSpec:
    """The generator a config describes, every field type-checked (a config is data, never code)."""
    generator = config.get("generator")
    if not isinstance(generator, Mapping):
        raise WeightsMismatchError(f"{where}: no 'generator' entry in the export's config; {REEXPORT_HINT}")
    try:
        spec = GeneratorSpec(arch=str(generator["arch"]), in_ch=int(generator["in_ch"]),
                             out_ch=int(generator["out_ch"]), ngf=int(generator["ngf"]),
                             norm=str(generator["norm"]), dropout=bool(generator["dropout"]))
    except (KeyError, TypeError, ValueError) as error:
        raise WeightsMismatchError(f"{where}: incomplete generator entry in the export's config "
                                   f"({type(error).__name__}: {error}); {REEXPORT_HINT}") from None
    if spec.arch not in GENERATOR_ARCHS or spec.norm not in NORMS or min(spec.in_ch, spec.out_ch, spec.ngf) < 1:
        raise WeightsMismatchError(f"{where}: the export's config names a generator advseg does not build "
                                   f"({spec.options()}); {REEXPORT_HINT}")
    return spec


def trained_sizes(config: Mapping[str, Any], where: Path) -> tuple[int, int]:
    """(crop, load) sizes the model was trained at: colorize's default --size and --load-size."""
    try:
        crop, load = int(config["trained_crop_size"]), int(config["trained_load_size"])
    except (KeyError, TypeError, ValueError):
        raise WeightsMismatchError(f"{where}: the export's config lacks its trained sizes; {REEXPORT_HINT}") from None
    if crop < 1 or load < 1:
        raise WeightsMismatchError(f"{where}: the export's config has trained sizes {crop}/{load}; {REEXPORT_HINT}")
    return crop, load


def _check_format(config: Any, where: Path) -> Mapping[str, Any]:
    if not isinstance(config, Mapping) or config.get("format") != EXPORT_FORMAT:
        raise WeightsMismatchError(f"{where}: not an advseg export (no \"format\": \"{EXPORT_FORMAT}\"); "
                                   f"{REEXPORT_HINT}")
    if config.get("format_version") != EXPORT_VERSION:
        raise WeightsMismatchError(f"{where}: export format version {config.get('format_version')!r} is not "
                                   f"{EXPORT_VERSION}; use the advseg version that wrote it")
    return config


def read_json_file(path: Path) -> Any:
    """A small JSON file, or a one-line error (a truncated or hand-broken config)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise WeightsMismatchError(f"{path}: unreadable JSON ({type(error).__name__}: {error}); "
                                   f"{REEXPORT_HINT}") from None


def is_export_folder(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``advseg export --format safetensors``.

    Run folders have a config.json too (the training options): the ``format`` entry tells them apart.
    """
    config_file = Path(path) / CONFIG_NAME
    if not (Path(path).is_dir() and config_file.is_file()):
        return False
    try:
        content = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return (Path(path) / WEIGHTS_NAME).exists()  # a broken export's config: let the reader say so
    return isinstance(content, Mapping) and content.get("format") == EXPORT_FORMAT


def is_onnx_file(path: Path) -> bool:
    return Path(path).suffix.lower() == ONNX_SUFFIX and Path(path).is_file()


@dataclasses.dataclass
class ExportedModel:
    """A generator read from an export, ready to run, and what its config says about it."""

    network: nn.Module  # a torch generator (safetensors) or an OnnxGenerator
    spec: GeneratorSpec
    config: dict[str, Any]
    path: Path  # the file the weights came from
    sha256: str
    trained_crop_size: int
    trained_load_size: int


# ----------------------------------------------------------------------------- safetensors folders
def safetensors_metadata(content: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (8-byte little-endian length, then JSON)."""
    if len(content) < 8:
        return {}
    length = int.from_bytes(content[:8], "little")
    try:
        header = json.loads(content[8:8 + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(metadata) if isinstance(metadata, dict) else {}


def load_export_folder(folder: Path) -> ExportedModel:
    """Rebuild the generator of a safetensors export, refusing anything changed since the export.

    The weights are read once into memory; their sha256, header and tensors all come from those bytes.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    folder = Path(folder)
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    config = _check_format(read_json_file(config_file), config_file)
    spec = spec_from_config(config, config_file)
    crop, load = trained_sizes(config, config_file)
    if not weights_file.is_file():
        raise WeightsMismatchError(f"{folder}: no {WEIGHTS_NAME} beside config.json; {REEXPORT_HINT}")
    content = weights_file.read_bytes()
    recorded = config.get("weights", {}).get("sha256") if isinstance(config.get("weights"), Mapping) else None
    digest = hashlib.sha256(content).hexdigest()
    if recorded != digest:
        raise WeightsMismatchError(f"{weights_file}: sha256 {digest[:12]}... is not the {str(recorded)[:12]}... "
                                   f"that config.json records (changed or truncated); {REEXPORT_HINT}")
    written_for = safetensors_metadata(content).get(META_GENERATOR)
    if written_for != canonical_json(dataclasses.asdict(spec)):
        raise WeightsMismatchError(f"{folder}: config.json describes {spec.options()}, but {WEIGHTS_NAME} was "
                                   f"written for {written_for}; {REEXPORT_HINT}")
    try:
        state = load_safetensors(content)
    except (SafetensorError, ValueError) as error:
        raise WeightsMismatchError(f"{weights_file}: not a readable safetensors file ({error}); "
                                   f"{REEXPORT_HINT}") from None
    network = define_generator(spec.arch, spec.in_ch, spec.out_ch, spec.ngf, spec.norm, spec.dropout)
    load_generator_weights(network, state, f"{weights_file}: weights", REEXPORT_HINT)
    return ExportedModel(network.eval(), spec, dict(config), weights_file, digest, crop, load)


# ----------------------------------------------------------------------------- ONNX files
def onnx_digest(graph_bytes: bytes, config_text: str) -> str:
    """What an ONNX export's metadata records: sha256 over the graph (weights included) and the config."""
    return hashlib.sha256(graph_bytes + b"\0" + config_text.encode("utf-8")).hexdigest()


def graph_bytes(model: Any) -> bytes:
    """The serialised graph (nodes and weights), spelled the same way every time."""
    return model.graph.SerializeToString(deterministic=True)


def _import_onnx() -> tuple[Any, Any]:
    """onnx (reads the file) and onnxruntime (runs it), both required when an .onnx model is loaded, so
    that either one missing is refused before colorize or serve creates anything."""
    return require("onnx", ONNX_MODEL_PURPOSE), require("onnxruntime", ONNX_MODEL_PURPOSE)


def read_onnx_model(path: Path, content: bytes) -> tuple[Any, dict[str, Any]]:
    """The ONNX model in ``content`` (read from ``path``) and its advseg config, after checking the
    recorded sha256 of both. The caller runs these very bytes, so nothing can change in between."""
    onnx, _ = _import_onnx()
    try:
        model = onnx.load_model_from_string(content)
    except Exception as error:  # noqa: BLE001 - protobuf decode errors of every kind mean the same thing
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsMismatchError(f"{path}: not a readable ONNX file (truncated or damaged: {reason}); "
                                   f"{REEXPORT_HINT}") from None
    meta = {entry.key: entry.value for entry in model.metadata_props}
    if META_CONFIG not in meta or META_DIGEST not in meta:
        raise WeightsMismatchError(f"{path}: an ONNX file without advseg's metadata (made by another tool); "
                                   f"{REEXPORT_HINT}")
    if onnx_digest(graph_bytes(model), meta[META_CONFIG]) != meta[META_DIGEST]:
        raise WeightsMismatchError(f"{path}: its graph or config differs from what was exported (sha256 "
                                   f"mismatch: weights or metadata were changed); {REEXPORT_HINT}")
    try:
        config = json.loads(meta[META_CONFIG])
    except ValueError as error:
        raise WeightsMismatchError(f"{path}: its advseg config is not JSON ({error}); {REEXPORT_HINT}") from None
    return model, dict(_check_format(config, path))


def onnx_providers(device: torch.device) -> list[str]:
    """ONNX Runtime's execution providers for a device: CUDA (when this onnxruntime has it) or the CPU."""
    _, onnxruntime = _import_onnx()
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise AdvsegError(f"--device {device}: this onnxruntime has no CUDA provider; use --device cpu "
                          "or install onnxruntime-gpu")
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


def onnx_device(requested: str) -> torch.device:
    """The device an ONNX model runs on: ``auto`` is CUDA only when ONNX Runtime here can use it; an
    explicit CUDA device without ONNX Runtime's CUDA provider is refused now, before any output."""
    _, onnxruntime = _import_onnx()
    if requested == "auto":
        usable = "CUDAExecutionProvider" in onnxruntime.get_available_providers() and torch.cuda.is_available()
        return torch.device("cuda" if usable else "cpu")
    from advseg_cli.devices import resolve_device

    device = resolve_device(requested)
    onnx_providers(device)
    return device


class OnnxGenerator(nn.Module):
    """An ONNX Runtime session behind the generator interface colorize and serve call.

    It holds no torch weights: ``forward`` hands the input's values to ONNX Runtime and wraps the
    result. The session is made for the device of the first input (``onnx_providers``). The graph was
    exported in eval mode, so it has no train mode (colorize refuses ``--test-mode public`` for it).
    """

    def __init__(self, model_bytes: bytes, spec: GeneratorSpec) -> None:
        super().__init__()
        self.model_bytes = model_bytes
        self.spec = spec
        self._sessions: dict[str, Any] = {}

    def session(self, device: torch.device) -> Any:
        key = str(device)
        if key not in self._sessions:
            _, onnxruntime = _import_onnx()
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            self._sessions[key] = onnxruntime.InferenceSession(self.model_bytes, options,
                                                               providers=onnx_providers(device))
        return self._sessions[key]

    def forward(self, images: Tensor) -> Tensor:  # [N,in_ch,H,W] in [-1, 1] -> [N,out_ch,H,W]
        values = np.ascontiguousarray(images.detach().float().cpu().numpy())
        (photo,) = self.session(images.device).run([ONNX_OUTPUT], {ONNX_INPUT: values})
        return torch.from_numpy(photo).to(images.device)


def load_onnx_file(path: Path) -> ExportedModel:
    """An ONNX export, checked (sha256, config, input channels), wrapped for colorize and serve."""
    path = Path(path)
    content = path.read_bytes()
    model, config = read_onnx_model(path, content)
    spec = spec_from_config(config, path)
    crop, load = trained_sizes(config, path)
    inputs = {value.name: value for value in model.graph.input}
    if ONNX_INPUT not in inputs:
        raise WeightsMismatchError(f"{path}: the graph has no input named {ONNX_INPUT!r}; {REEXPORT_HINT}")
    network = OnnxGenerator(content, spec)
    return ExportedModel(network, spec, config, path, hashlib.sha256(content).hexdigest(), crop, load)
