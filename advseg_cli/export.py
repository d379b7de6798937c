"""``advseg export``: a trained colorizer as files people share (safetensors + config, or ONNX).

The generator is read through colorize's one resolver (:func:`advseg_cli.colorize.load_generator`):
a run folder, one of our checkpoints, a public-code generator file or an exported folder. What it
writes is described in :mod:`advseg_cli.exported_models`, which also reads it back.

Everything that can refuse (the source, OUT, the format) is checked before anything is written, and
files are written under temporary names and renamed into place; the file that marks an export as
complete (``config.json``, or the ``.onnx`` itself) comes last.
"""

from __future__ import annotations

import dataclasses
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from advseg_cli import __version__
from advseg_cli.colorize import SIZE_MULTIPLE, LoadedGenerator, load_generator, nearest_valid_side
from advseg_cli.errors import AdvsegError
from advseg_cli.exported_models import (CARD_NAME, CONFIG_NAME, EXPORT_FORMAT, EXPORT_VERSION, META_CONFIG,
                                        META_DIGEST, META_GENERATOR, ONNX_INPUT, ONNX_OUTPUT, ONNX_SUFFIX,
                                        WEIGHTS_NAME, canonical_json, graph_bytes, onnx_digest)
from advseg_cli.files import sha256_file, write_bytes_atomic
from advseg_cli.optional import require
from advseg_cli.runrecord import FOLDER_RECORD_NAME, RunRecord, record_path_for

EXPORT_FORMATS = ("safetensors", "onnx")
ONNX_PURPOSE = "--format onnx"  # what needs the onnx package, in its refusal
DEFAULT_OPSET = 17  # InstanceNormalization, reflect Pad and ConvTranspose as these generators need them


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Every option of the export stage; resolved values go to the run record."""

    format: str = "safetensors"  # safetensors (folder) | onnx (file)
    epoch: int | None = None  # run folders: export checkpoints/epoch_NNN.pt instead of latest.pt
    arch: str | None = None  # public files: as colorize's --arch / --norm / --dropout
    norm: str | None = None
    dropout: bool | None = None
    opset: int = DEFAULT_OPSET  # ONNX opset
    overwrite: bool = False

    def validate(self) -> ExportConfig:
        if self.format not in EXPORT_FORMATS:
            raise AdvsegError(f"--format: unknown {self.format!r}; use one of {', '.join(EXPORT_FORMATS)}")
        if self.opset < 13:
            raise AdvsegError(f"--opset {self.opset}: use 13 or later")
        return self


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    """What an export wrote; the CLI prints it as one line."""

    out: Path  # the folder (safetensors) or the .onnx file
    format: str
    spec_options: str
    source_sha256: str
    record: Path


# ----------------------------------------------------------------------------- the config
def _run_folder_of(generator: LoadedGenerator) -> Path | None:
    """The run folder a checkpoint belongs to (RUN/checkpoints/X.pt), when it looks like one."""
    folder = generator.path.parent.parent
    return folder if generator.path.parent.name == "checkpoints" and (folder / "config.json").is_file() else None


def _read_json_or_none(path: Path) -> dict[str, Any] | None:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def export_config(generator: LoadedGenerator, trace_side: int) -> dict[str, Any]:
    """config.json / the ONNX metadata: what rebuilds and runs the generator, and where it came from."""
    spec = generator.spec
    previous_source = (generator.export_config or {}).get("source")
    run = _run_folder_of(generator)
    source = previous_source if isinstance(previous_source, dict) else {
        "kind": generator.kind, "checkpoint": str(generator.path.resolve()), "sha256": generator.sha256,
        "run": str(run.resolve()) if run else None, "model": generator.model_name, "step": generator.step,
        "public_layout": generator.layout}
    return {
        "format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "advseg_version": __version__,
        "generator": dataclasses.asdict(spec),
        "trained_crop_size": generator.trained_crop_size, "trained_load_size": generator.trained_load_size,
        "size_multiple": SIZE_MULTIPLE[spec.arch], "onnx_trace_side": trace_side,
        "preprocess": {"sketch": "decode, convert to gray (ITU-R 601 'L'), bicubic resize to trained_crop_size "
                                 "(or any side that is a multiple of size_multiple), x / 127.5 - 1, replicate "
                                 "to in_ch channels, NCHW float32"},
        "postprocess": {"photo": "clamp to [-1, 1], round((x + 1) * 127.5) to uint8, NCHW -> HWC RGB"},
        "source": source,
    }


def _training_lines(train: dict[str, Any], record: dict[str, Any] | None, step: Any) -> list[str]:
    """The model card's data and training sections, from the run's config.json and run record."""
    options = train.get("model_options") or {}
    segcache = train.get("segcache")
    status = (record or {}).get("status", "no final run record (stopped early or still running)")
    return [f"- advseg mode: {options.get('advseg', 'none')} (seg-grad {options.get('seg_grad', 'soft')})",
            "", "## Training data", "", f"- sketches: `{train.get('sketches')}`", f"- photos: `{train.get('photos')}`",
            f"- segmentation cache: `{segcache}`" if segcache else "- no segmentation cache",
            "", "## Training", "",
            f"- steps: {step}; epochs planned: {train.get('epochs')} + {train.get('epochs_decay')} decay; "
            f"batch {train.get('batch_size')}; lr {train.get('lr')}; seed {train.get('seed')}",
            f"- run status: {status}"]


def _fid_line(fid: dict[str, Any] | None) -> str:
    """FID as `advseg fid --json > RUN/fid.json` recorded it, if the run has one."""
    if not fid or not isinstance(fid.get("fid"), (int, float)):
        return "- FID: not measured for this run (no fid.json in the run folder)"
    images = (fid.get("fake") or {}).get("images", "?") if isinstance(fid.get("fake"), dict) else "?"
    return f"- FID: {fid['fid']:.2f} ({images} generated images; `advseg fid`)"


def model_card(config: dict[str, Any], generator: LoadedGenerator) -> str:
    """README.md of a safetensors export: the run record's facts in a model-card shape."""
    source = config["source"]
    run = Path(source["run"]) if source.get("run") else None
    train = _read_json_or_none(run / "config.json") if run else None
    spec = generator.spec
    lines = ["---", "library_name: advseg", "tags: [sketch-colorization, image-to-image, gan, advseg]", "---", "",
             f"# Sketch colorizer{': ' + run.name if run else ''}", "",
             "A sketch -> photo generator trained with advseg (adversarial segmentation loss, Hicsonmez et al., "
             "ICIP 2021). Files: `model.safetensors` (weights), `config.json` (how to rebuild and run it).", "",
             "## Model", "",
             f"- model: {source.get('model') or 'public-code generator'}; generator {spec.options()} "
             f"({spec.in_ch} -> {spec.out_ch} channels)",
             f"- trained at crop {config['trained_crop_size']} (resize {config['trained_load_size']}); "
             f"input sides must be multiples of {config['size_multiple']}"]
    if train:
        lines += _training_lines(train, _read_json_or_none(run / FOLDER_RECORD_NAME), source.get("step"))
    lines += ["", "## Evaluation", "", _fid_line(_read_json_or_none(run / "fid.json") if run else None),
              "", "## Provenance", "",
              f"- source checkpoint: `{source.get('checkpoint')}` (sha256 `{source.get('sha256')}`)",
              f"- exported by advseg {__version__}", "", "## Use", "", "```bash",
              "advseg colorize THIS_FOLDER sketches/ colorized/", "advseg serve THIS_FOLDER", "```", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- writers
def trace_side(generator: LoadedGenerator) -> int:
    """The side of the example input the ONNX graph is traced with: the trained size, made valid."""
    multiple = SIZE_MULTIPLE[generator.spec.arch]
    return nearest_valid_side(generator.trained_crop_size, multiple)


def write_safetensors_export(network: torch.nn.Module, config: dict[str, Any], card: str, out: Path) -> None:
    """model.safetensors (its header names the spec it was written for), README.md, then config.json."""
    from safetensors.torch import save as save_safetensors

    state = {key: value.detach().cpu().contiguous() for key, value in network.state_dict().items()}
    content = save_safetensors(state, metadata={"format": "pt", META_GENERATOR: canonical_json(config["generator"])})
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / WEIGHTS_NAME, content)
    write_bytes_atomic(out / CARD_NAME, card.encode("utf-8"))
    final = {**config, "weights": {"file": WEIGHTS_NAME, "sha256": sha256_file(out / WEIGHTS_NAME)}}
    write_bytes_atomic(out / CONFIG_NAME, (json.dumps(final, indent=2) + "\n").encode("utf-8"))


def onnx_bytes(network: torch.nn.Module, side: int, opset: int, config: dict[str, Any]) -> bytes:
    """The generator traced to ONNX (eval mode, float32, dynamic N/H/W) with advseg's metadata.

    The TorchScript-based exporter (``dynamo=False``) handles these plain convolutional networks
    without the extra onnxscript dependency the newer exporter needs; its deprecation warnings are
    silenced here because the tests compare its graph with torch on every architecture.
    """
    onnx = require("onnx", ONNX_PURPOSE)

    network = network.eval().cpu().float()
    example = torch.zeros(1, network.spec.in_ch, side, side)
    axes = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (example,), buffer, opset_version=opset, dynamo=False,
                          training=torch.onnx.TrainingMode.EVAL, input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                          dynamic_axes={ONNX_INPUT: axes, ONNX_OUTPUT: axes})
    model = onnx.load_model_from_string(buffer.getvalue())
    text = canonical_json(config)
    model.producer_name, model.producer_version = "advseg", __version__
    model.doc_string = f"advseg sketch colorizer: {network.spec.options()}"
    for key, value in ((META_CONFIG, text), (META_DIGEST, onnx_digest(graph_bytes(model), text))):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


# ----------------------------------------------------------------------------- the stage
def _check_out(out: Path, config: ExportConfig) -> None:
    """Refuse an OUT that does not fit the format, or holds something, before anything is written."""
    if config.format == "onnx":
        if out.suffix.lower() != ONNX_SUFFIX:
            raise AdvsegError(f"OUT {out}: --format onnx writes one file; name it *.onnx (e.g. {out / 'model.onnx'})")
        if out.is_dir():
            raise AdvsegError(f"OUT {out} is a folder; name the .onnx file to write")
        if out.exists() and not config.overwrite:
            raise AdvsegError(f"OUT {out} exists; use --overwrite to replace it")
        return
    if out.suffix.lower() == ONNX_SUFFIX:
        raise AdvsegError(f"OUT {out}: --format safetensors writes a folder; for an ONNX file add --format onnx")
    if out.exists() and not out.is_dir():
        raise AdvsegError(f"OUT {out} is a file; --format safetensors writes a folder")
    if out.is_dir() and any(out.iterdir()) and not config.overwrite:
        raise AdvsegError(f"OUT {out} is not empty; choose a new folder or use --overwrite")


def export_model(source: Path, out: Path, config: ExportConfig = ExportConfig()) -> ExportSummary:
    """Export the sketch -> photo generator of ``source`` to ``out`` in ``config.format``."""
    config.validate()
    if config.format == "onnx":
        require("onnx", ONNX_PURPOSE)  # a missing extra is refused first: before loading, before writing
    source, out = Path(source), Path(out)
    _check_out(out, config)
    generator = load_generator(source, epoch=config.epoch, arch=config.arch, norm=config.norm,
                               dropout=config.dropout)
    if generator.runs_onnx:
        raise AdvsegError(f"{source} is already an ONNX file; export from its run folder or safetensors folder")
    side = trace_side(generator)
    description = export_config(generator, side)
    network = generator.network.eval()
    options = {**dataclasses.asdict(config), "source": str(source.resolve()), "out": str(out.resolve())}
    record = RunRecord(stage="export", options=options,
                       weights=[{"name": "generator", "path": str(generator.path.resolve()),
                                 "sha256": generator.sha256, "source": generator.kind}])
    if config.format == "onnx":
        write_bytes_atomic(out, onnx_bytes(network, side, config.opset, description))
        record_file = out.with_name(out.name + ".run.json")
    else:
        write_safetensors_export(network, description, model_card(description, generator), out)
        record_file = record_path_for(out)
    record.counts["done"] = 1
    record.finish("complete")
    record.write(record_file)
    return ExportSummary(out, config.format, generator.spec.options(), generator.sha256, record_file)
