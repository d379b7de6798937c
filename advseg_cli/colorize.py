"""``advseg colorize``: photos from a folder of sketches with a trained (or published) generator.

The generator comes from one of five places, told apart by what the path holds (``load_generator``
is the one resolver that colorize and serve share):

- a **run folder** of ``advseg train`` (``checkpoints/latest.pt``, or ``epoch_NNN.pt`` with ``epoch``);
- one of our **checkpoint files** (``format: advseg-checkpoint``): the model's config says which
  generator to build, its train config at which size it was trained;
- a **public-code generator state dict** (``*_net_G*.pth`` of the CycleGAN / pix2pix / AdvSegLoss
  code): the architecture is read from the keys, or given as ``arch`` / ``norm`` / ``dropout``;
- an **exported folder** of ``advseg export --format safetensors`` (config.json + model.safetensors);
- an **ONNX file** of ``advseg export --format onnx``, run by ONNX Runtime (deterministic mode only).

Two test-time modes, recorded in the run record because they give different FIDs:

``deterministic`` (advseg's default)
    bicubic resize to SIZE x SIZE, generator in eval mode (batch norm uses its running statistics,
    dropout is off), outputs rounded to uint8 as the training samples are.
``public`` (what the public code's ``test.py`` does)
    bicubic resize to LOAD x LOAD, then a random SIZE x SIZE crop, the generator left in train mode
    (batch norm uses the statistics of the one image, dropout stays on), outputs truncated to uint8
    as its ``tensor2im`` does. The crop and the dropout masks are drawn from a seed made of ``seed``
    and the sketch's relative path, so a run is reproducible and independent of batching, workers,
    shards and resumes.

Sketches are read like the training data reads them (any image mode, upright, converted to gray and
fed replicated to the generator's input channels) so a model sees at test time what it saw in training.
They are inputs from strangers, checked before decoding as ``advseg serve``'s uploads are
(``SKETCH_LIMITS``); a refused one is a failed input with its reason, never the end of the run.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import html
import math
import os
import pickle
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

from advseg_cli.pipeline import collect_finished, iterate_items
from advseg_cli.devices import autocast, check_precision, resolve_device
from advseg_cli.errors import (AdvsegError, AllInputsFailedError, ImageDecodeError, IncompatibleInputError,
                               WeightsMismatchError, WeightsNotFoundError)
from advseg_cli.files import remove_stale_temporaries, sha256_file, write_bytes_atomic
from advseg_cli.images import ImageLimits, image_size, is_valid_png, list_images, read_rgb, write_png
from advseg_cli.models.advseg import MODELS
from advseg_cli.models.networks import (GENERATOR_ARCHS, NORMS, GeneratorSpec, define_generator,
                                        load_generator_weights)
from advseg_cli.models.public_checkpoints import (detect_layout, generator_from_public, infer_spec,
                                                  load_public_generator, read_state_dict)
from advseg_cli.progress import progress
from advseg_cli.runrecord import RunRecord, conflicting_options, read_record, record_path_for
from advseg_cli.sharding import select_shard
from advseg_cli.training.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
from advseg_cli.training.data import Augmentation

TEST_MODES = ("deterministic", "public")
# The public code's test-time ``resize_and_crop`` (its --loadSize / --fineSize defaults).
PUBLIC_LOAD_SIZE = 286
PUBLIC_CROP_SIZE = 256
# Sides a generator maps to the same side: ResNet has two stride-2 levels, U-Net 8 (256) or 7 (128)
# and its innermost level must stay >= 1x1, so it needs whole multiples of its nominal size.
SIZE_MULTIPLE = {"resnet_9blocks": 4, "resnet_6blocks": 4, "unet_256": 256, "unet_128": 128}
GRID_FOLDER = "grid"
INDEX_NAME = "index.html"
# Sketch folders come from anyone: each file is checked as an upload of `advseg serve` is (one still image
# of a usual format, its data its declared size, within these limits) before it is decoded.
SKETCH_LIMITS = ImageLimits()

RUN_FOLDER = "run-folder"
ADVSEG_CHECKPOINT = "advseg-checkpoint"
PUBLIC_GENERATOR = "public-generator"
EXPORTED_FOLDER = "exported-folder"
ONNX_FILE = "onnx-file"

# Settings that decide what an output looks like: adding outputs made with other values into a
# folder would mix two models (or two test-time protocols) in one FID, so it is refused.
RESULT_KEYS = ("checkpoint_sha256", "generator", "test_mode", "size", "load_size", "seed", "quantisation",
               "precision")


@dataclasses.dataclass(frozen=True)
class ColorizeConfig:
    """Every option of the colorize stage; resolved values go to the run record."""

    size: int | None = None  # network side; None: the trained crop size (256 for public files); 0: see below
    # size 0 (deterministic only): each sketch is resized to the nearest side the generator accepts
    # (multiples of 4 for ResNet, 256 / 128 for the U-Nets) and the result is resized back to its size.
    test_mode: str = "deterministic"  # deterministic | public (see the module docstring)
    load_size: int | None = None  # public mode: resize before the random crop; None: trained (286 public)
    seed: int = 0  # public mode: seeds the per-image crop and dropout
    epoch: int | None = None  # run folders: use checkpoints/epoch_NNN.pt instead of latest.pt
    arch: str | None = None  # public files: generator architecture; None: read from the keys
    norm: str | None = None  # public files: instance | batch | none; None: read from the keys
    dropout: bool | None = None  # public files: dropout layers (a U-Net's leave no key); None: from keys
    batch_size: int = 8
    workers: int = 0  # DataLoader processes that decode and resize sketches
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast)
    grid: bool = False  # also write sketch | result sheets to OUT/grid/ and the OUT/index.html gallery
    overwrite: bool = False
    quiet: bool = False
    shard: tuple[int, int] = (0, 1)

    def validate(self) -> ColorizeConfig:
        if self.test_mode not in TEST_MODES:
            raise AdvsegError(f"--test-mode: unknown {self.test_mode!r}; use one of {', '.join(TEST_MODES)}")
        if self.size is not None and self.size < 0:
            raise AdvsegError(f"--size: must be >= 0, got {self.size}")
        if self.test_mode == "public" and self.size == 0:
            raise AdvsegError("--size 0 keeps each sketch's size, which the public test mode's random crop "
                              "does not; use --test-mode deterministic or a crop size")
        if self.load_size is not None and self.test_mode != "public":
            raise AdvsegError("--load-size is the resize before the random crop of --test-mode public only")
        if self.load_size is not None and self.load_size < 1:
            raise AdvsegError(f"--load-size: must be >= 1, got {self.load_size}")
        if self.batch_size < 1:
            raise AdvsegError("--batch-size: must be >= 1")
        if self.workers < 0:
            raise AdvsegError("--workers: must be >= 0")
        if self.epoch is not None and self.epoch < 0:
            raise AdvsegError(f"--epoch: must be >= 0, got {self.epoch}")
        if self.arch is not None and self.arch not in GENERATOR_ARCHS:
            raise AdvsegError(f"--arch: unknown {self.arch!r}; use one of {', '.join(GENERATOR_ARCHS)}")
        if self.norm is not None and self.norm not in NORMS:
            raise AdvsegError(f"--norm: unknown {self.norm!r}; use one of {', '.join(NORMS)}")
        return self


@dataclasses.dataclass(frozen=True)
class ColorizeSummary:
    """What a run did; the CLI prints it as one line."""

    done: int
    skipped: int
    failed: int
    out: Path
    record: Path
    size: int  # the network side used (0: each sketch's own size, rounded)
    test_mode: str
    index: Path | None  # the gallery, with --grid


# ----------------------------------------------------------------------------- loading the generator
@dataclasses.dataclass
class LoadedGenerator:
    """A generator ready to run, and where it came from (for the run record and the default sizes)."""

    network: nn.Module
    spec: GeneratorSpec
    kind: str  # run-folder | advseg-checkpoint | public-generator | exported-folder | onnx-file
    path: Path  # the file the weights were read from
    sha256: str
    model_name: str | None  # cyclegan | pix2pix for our checkpoints
    trained_crop_size: int  # the default --size
    trained_load_size: int  # the default --load-size of the public test mode
    layout: str | None = None  # public files: the detected state-dict layout
    step: int | None = None  # our checkpoints: optimisation steps done
    export_config: dict[str, Any] | None = None  # exports: their config (source run, checkpoint sha256 ...)

    @property
    def runs_onnx(self) -> bool:
        """Whether ONNX Runtime runs this generator (no torch network, eval mode only, fp32)."""
        return self.kind == ONNX_FILE

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "sha256": self.sha256, "model": self.model_name,
                "layout": self.layout, "step": self.step, "generator": dataclasses.asdict(self.spec),
                "trained_crop_size": self.trained_crop_size, "trained_load_size": self.trained_load_size,
                "export_source": (self.export_config or {}).get("source")}


def checkpoint_in_run_folder(run: Path, epoch: int | None) -> Path:
    """``run/checkpoints/latest.pt`` or ``epoch_NNN.pt``; a missing one names the ones that exist."""
    folder = run / "checkpoints"
    wanted = folder / ("latest.pt" if epoch is None else f"epoch_{epoch:03d}.pt")
    if wanted.is_file():
        return wanted
    if not folder.is_dir():
        raise WeightsNotFoundError(f"{run}: a folder without checkpoints/; pass a run folder of `advseg train`, "
                                   "a checkpoint file or a public-code *_net_G*.pth")
    epochs = sorted(int(p.stem[len("epoch_"):]) for p in folder.glob("epoch_*.pt") if p.stem[6:].isdigit())
    have = f"it has --epoch {', '.join(map(str, epochs))}" if epochs else "it has no epoch_NNN.pt snapshots"
    if epoch is None:
        raise WeightsNotFoundError(f"{run}: no checkpoints/latest.pt yet; {have}")
    raise WeightsNotFoundError(f"{run}: no checkpoints/{wanted.name}; {have}")


def _read_untrusted(path: Path) -> Any:
    """torch.load without running any pickled code; an unreadable file is one clear line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - text files, truncated zips, pickles with code: all the same to the user
        with open(path, "rb") as handle:
            head = handle.read(2)
        if head[:2] != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip, or (before 1.6) a pickle
            reason = "it is not a file written by torch.save"
        elif isinstance(error, pickle.UnpicklingError):
            reason = "it holds Python objects besides tensors, which are not unpickled (they could run code)"
        else:
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            reason = f"damaged or truncated ({type(error).__name__}{': ' + message if message else ''})"
        raise WeightsMismatchError(
            f"{path}: neither an advseg checkpoint nor a public-code generator state dict that can be read "
            f"safely (weights_only=True): {reason}") from None


def _generator_from_advseg(payload: Mapping[str, Any], path: Path, kind: str) -> LoadedGenerator:
    """Our checkpoint: build the photo generator the model config describes and load its weights."""
    if payload.get("version") != CHECKPOINT_VERSION:
        raise WeightsMismatchError(f"{path}: checkpoint version {payload.get('version')} is not "
                                   f"{CHECKPOINT_VERSION}; use the advseg version that wrote it")
    name = payload.get("model_name")
    if name not in MODELS:
        raise WeightsMismatchError(f"{path}: checkpoint of an unknown model {name!r}")
    config_type, model_type = MODELS[name]
    try:
        config = config_type(**payload["model_config"])
        train_config = payload["train_config"]
        crop, load = int(train_config["crop_size"]), int(train_config["load_size"])
        weights = payload["model"]
    except (KeyError, TypeError, ValueError) as error:
        raise WeightsMismatchError(f"{path}: incomplete advseg checkpoint ({type(error).__name__}: {error})") from None
    network = define_generator(config.arch, config.sketch_channels, config.photo_channels, config.ngf,
                               config.norm, config.dropout)
    prefix = model_type.generator_names[0] + "."  # the sketch -> photo generator: G_A or G
    state = {key[len(prefix):]: value for key, value in weights.items() if key.startswith(prefix)}
    load_generator_weights(network, state, f"{path}: its {prefix[:-1]} weights")
    step = payload.get("position", {}).get("step") if isinstance(payload.get("position"), Mapping) else None
    return LoadedGenerator(network, network.spec, kind, path, sha256_file(path), name, crop, load, step=step)


def _generator_from_public_file(path: Path, arch: str | None, norm: str | None,
                                dropout: bool | None) -> LoadedGenerator:
    """A public-code state dict: what the keys say, overridden by the options the user gave."""
    if arch is None and norm is None:
        network, info = generator_from_public(path, dropout=dropout)
    else:
        state = read_state_dict(path)
        layout = detect_layout(state)
        seen = infer_spec(state, layout) if layout is not None else None
        base = seen or GeneratorSpec(arch or "resnet_9blocks", 3, 3)
        spec = dataclasses.replace(base, arch=arch or base.arch, norm=norm or base.norm,
                                   dropout=base.dropout if dropout is None else dropout)
        network = define_generator(spec.arch, spec.in_ch, spec.out_ch, spec.ngf, spec.norm, spec.dropout)
        info = load_public_generator(path, network)  # a mismatch is one line naming what would fit
    return LoadedGenerator(network, network.spec, PUBLIC_GENERATOR, path, sha256_file(path), None,
                           PUBLIC_CROP_SIZE, PUBLIC_LOAD_SIZE, layout=info.layout)


def _generator_from_export(path: Path, overrides: list[str], epoch: int | None) -> LoadedGenerator:
    """An exported folder (safetensors) or ONNX file: it carries its own architecture and sizes."""
    from advseg_cli import exported_models

    if overrides or epoch is not None:
        flags = overrides + (["--epoch"] if epoch is not None else [])
        raise AdvsegError(f"{' / '.join(flags)} do not apply to {path}: an exported model carries its own "
                          "architecture and weights")
    onnx = exported_models.is_onnx_file(path)
    loaded = exported_models.load_onnx_file(path) if onnx else exported_models.load_export_folder(path)
    source = loaded.config.get("source") if isinstance(loaded.config.get("source"), Mapping) else {}
    step = source.get("step") if isinstance(source.get("step"), int) else None
    model = source.get("model") if isinstance(source.get("model"), str) else None
    return LoadedGenerator(loaded.network, loaded.spec, ONNX_FILE if onnx else EXPORTED_FOLDER, loaded.path,
                           loaded.sha256, model, loaded.trained_crop_size, loaded.trained_load_size, step=step,
                           export_config=loaded.config)


def load_generator(checkpoint: Path, *, epoch: int | None = None, arch: str | None = None,
                   norm: str | None = None, dropout: bool | None = None) -> LoadedGenerator:
    """The sketch -> photo generator of a run folder, one of our checkpoints, a public-code file, an
    exported folder or an ONNX file: the one resolver of everything that reads a model.

    Every torch file is read with ``torch.load(weights_only=True)``, exports with safetensors or
    onnx after their sha256 check: a model file can never run code.
    """
    from advseg_cli.exported_models import is_export_folder, is_onnx_file

    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise WeightsNotFoundError(f"{checkpoint}: no such run folder or checkpoint file (nor exported model)")
    overrides = [flag for flag, value in (("--arch", arch), ("--norm", norm), ("--dropout", dropout))
                 if value is not None]
    if is_export_folder(checkpoint) or is_onnx_file(checkpoint):
        return _generator_from_export(checkpoint, overrides, epoch)
    if checkpoint.is_dir():
        path, kind = checkpoint_in_run_folder(checkpoint, epoch), RUN_FOLDER
    else:
        if epoch is not None:
            raise AdvsegError(f"--epoch picks a checkpoint of a run folder; {checkpoint} is a file")
        path, kind = checkpoint, ADVSEG_CHECKPOINT
    content = _read_untrusted(path)
    if isinstance(content, Mapping) and content.get("format") == CHECKPOINT_FORMAT:
        if overrides:
            raise AdvsegError(f"{' / '.join(overrides)} describe public-code generator files; {path} is an "
                              "advseg checkpoint, which carries its own architecture")
        return _generator_from_advseg(content, path, kind)
    if kind == RUN_FOLDER:
        raise WeightsMismatchError(f"{path}: not an advseg checkpoint, although it is in a run folder")
    del content  # read again, key by key, by the public loader
    return _generator_from_public_file(path, arch, norm, dropout)


# ----------------------------------------------------------------------------- geometry
@dataclasses.dataclass(frozen=True)
class Geometry:
    """How a sketch becomes the network's input; picklable for the DataLoader workers."""

    mode: str  # deterministic | public
    size: int  # network side (0: each sketch's own size rounded to ``multiple``)
    load_size: int  # public: the resize before the random crop
    seed: int  # public: base of the per-image seeds
    multiple: int  # the generator accepts sides that are multiples of this


def nearest_valid_side(side: int, multiple: int) -> int:
    """The multiple of ``multiple`` nearest to ``side`` (halves go up), at least ``multiple``."""
    return max(multiple, int(math.floor(side / multiple + 0.5)) * multiple)


def image_seed(seed: int, relative: Path) -> int:
    """A 63-bit seed owned by one sketch: same crop and dropout whatever the batch, worker or shard."""
    digest = hashlib.sha256(f"{seed}\0{Path(relative).as_posix()}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def _bicubic(gray: np.ndarray, width: int, height: int) -> np.ndarray:
    if gray.shape == (height, width):
        return gray
    return np.asarray(Image.fromarray(gray).resize((width, height), Image.BICUBIC))


@dataclasses.dataclass(frozen=True)
class PreparedSketch:
    """One sketch as the network will see it (gray, uint8) and, for size 0, as it was."""

    network_input: np.ndarray  # HxW uint8 at the network's size
    original: np.ndarray | None  # HxW uint8 gray at the input's size (size 0 only; the grid shows it)
    input_hw: tuple[int, int]


def prepare_sketch(rgb: np.ndarray, relative: Path, geometry: Geometry) -> PreparedSketch:
    """Decoded sketch -> the gray network input, as the training data prepares it (gray, bicubic)."""
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    height, width = gray.shape
    if geometry.mode == "public":
        resized = _bicubic(gray, geometry.load_size, geometry.load_size)
        x, y, _flip = Augmentation(geometry.load_size, geometry.size, flip=False).draw(
            torch.Generator().manual_seed(image_seed(geometry.seed, relative)))
        crop = resized[y:y + geometry.size, x:x + geometry.size]
        return PreparedSketch(np.ascontiguousarray(crop), None, (height, width))
    if geometry.size:
        return PreparedSketch(_bicubic(gray, geometry.size, geometry.size), None, (height, width))
    target_h, target_w = (nearest_valid_side(side, geometry.multiple) for side in (height, width))
    return PreparedSketch(_bicubic(gray, target_w, target_h), gray, (height, width))


def network_tensor(inputs: list[np.ndarray], channels: int, device: torch.device) -> Tensor:
    """Gray uint8 HxW arrays -> [N, channels, H, W] in [-1, 1] (gray replicated, as in training)."""
    batch = torch.from_numpy(np.stack(inputs)).to(device, non_blocking=True)  # [N,H,W] uint8
    batch = batch.float().div(127.5).sub(1.0).unsqueeze(1)
    return batch.expand(-1, channels, -1, -1).contiguous()


def quantise(images: Tensor, mode: str) -> np.ndarray:
    """[N,C,H,W] in [-1,1] -> NxHxWxC uint8: rounded (deterministic, as the training samples) or
    truncated (public, as the public code's tensor2im: ((x + 1) / 2 * 255).astype(uint8))."""
    images = images.detach().float().clamp(-1, 1)
    if mode == "public":
        values = ((images + 1) / 2.0 * 255.0).trunc()
    else:
        values = ((images + 1) * 127.5).round()
    return values.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def depends_on_the_batch(network: nn.Module) -> bool:
    """Whether an image's output in train mode depends on its batch mates or the RNG (batch norm's
    batch statistics, dropout): the public mode then runs such networks one image at a time."""
    return any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)) for m in network.modules())


@torch.inference_mode()
def generate(network: nn.Module, inputs: list[np.ndarray], device: torch.device, precision: str,
             seeds: list[int] | None = None) -> Tensor:
    """Run the generator on equal-sized gray inputs; with ``seeds`` one image at a time, each with its
    own RNG state (the public mode's dropout), as the public code's batch size 1 did."""
    channels = network.spec.in_ch
    tensor = network_tensor(inputs, channels, device)
    if device.type == "cuda":
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    with autocast(device, precision):
        if seeds is None:
            return network(tensor).float()
        outputs = []
        for index, seed in enumerate(seeds):
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                outputs.append(network(tensor[index:index + 1]).float())
        return torch.cat(outputs)


# ----------------------------------------------------------------------------- outputs
@dataclasses.dataclass(frozen=True)
class _Job:
    relative: Path  # sketch path relative to SKETCHES
    source: Path
    target: Path
    sheet: Path  # OUT/grid/<relative>.png


def output_path(out: Path, relative: Path) -> Path:
    """Results keep the sketch's relative path and stem; the format is always PNG."""
    return out / relative.with_suffix(".png")


def sheet_path(out: Path, relative: Path) -> Path:
    return out / GRID_FOLDER / relative.with_suffix(".png")


def _plan(sketches: Path, out: Path, relatives: list[Path], record: RunRecord | None) -> list[_Job]:
    """One job per sketch; two sketches that would write the same result (a.jpg, a.png) are reported."""
    jobs, seen = [], {}
    for relative in relatives:
        target = output_path(out, relative)
        if target in seen:
            if record is not None:
                record.add_failure(relative.as_posix(), f"same output name as {seen[target].as_posix()}")
            continue
        seen[target] = relative
        jobs.append(_Job(relative, sketches / relative, target, sheet_path(out, relative)))
    return jobs


def side_by_side(sketch_gray: np.ndarray, result: np.ndarray) -> np.ndarray:
    """sketch | result, one sheet (the sketch as RGB, the result as written)."""
    left = np.repeat(sketch_gray[:, :, None], 3, axis=2)
    right = result if result.ndim == 3 and result.shape[2] == 3 else np.repeat(result.reshape(
        result.shape[0], result.shape[1], 1), 3, axis=2)
    return np.concatenate([left, right], axis=1)


def resize_back(result: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """A result made at a rounded side (--size 0) back to the sketch's own size (bicubic)."""
    if result.shape[:2] == tuple(input_hw):
        return result
    image = Image.fromarray(result if result.shape[2] == 3 else result[:, :, 0])
    return np.asarray(image.resize((input_hw[1], input_hw[0]), Image.BICUBIC))


def finish_result(result: np.ndarray, prepared: PreparedSketch, job: _Job, keep_size: bool, grid: bool) -> None:
    """Write one result (resized back to the sketch's size with --size 0) and, with --grid, its sheet."""
    if keep_size:
        result = resize_back(result, prepared.input_hw)
    image = result[:, :, 0] if result.ndim == 3 and result.shape[2] == 1 else result
    write_png(job.target, np.ascontiguousarray(image))
    if grid:
        sketch = prepared.original if keep_size and prepared.original is not None else prepared.network_input
        write_png(job.sheet, side_by_side(sketch, result))


def write_gallery(out: Path, sheets: list[tuple[str, Path]], title: str, details: list[str]) -> Path:
    """OUT/index.html: one row per sheet (name, image), links relative to OUT, names escaped."""
    rows = []
    for name, sheet in sheets:
        href = html.escape(urllib.parse.quote(sheet.relative_to(out).as_posix()), quote=True)
        rows.append(f'<tr><td class="name">{html.escape(name)}</td>'
                    f'<td><a href="{href}"><img src="{href}" alt="{html.escape(name, quote=True)}" '
                    f'loading="lazy"></a></td></tr>')
    items = "".join(f"<li>{html.escape(line)}</li>" for line in details)
    text = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title>\n<style>body{{font-family:sans-serif}}"
            "td{padding:4px;vertical-align:middle}td.name{font-family:monospace}"
            "img{max-width:100%;min-height:256px;image-rendering:pixelated}</style>"
            f"</head><body>\n<h1>{html.escape(title)}</h1>\n<ul>{items}</ul>\n"
            f"<p>sketch | result, {len(rows)} sheets</p>\n<table>\n" + "\n".join(rows) + "\n</table>\n</body></html>\n")
    index = out / INDEX_NAME
    write_bytes_atomic(index, text.encode("utf-8"))
    return index


# ----------------------------------------------------------------------------- the stage
class _SketchDataset(Dataset):
    """Decodes and prepares sketches in DataLoader workers; a failure is returned (not raised)."""

    def __init__(self, jobs: list[_Job], geometry: Geometry) -> None:
        self.jobs = jobs
        self.geometry = geometry

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> tuple[int, PreparedSketch | None, str]:
        job = self.jobs[index]
        try:
            rgb = read_rgb(job.source, SKETCH_LIMITS)
            return index, prepare_sketch(rgb, job.relative, self.geometry), ""
        except ImageDecodeError as exc:
            return index, None, exc.reason


def onnx_run_device(config: ColorizeConfig, generator: LoadedGenerator) -> torch.device:
    """The device ONNX Runtime runs an ONNX export on; settings that need a torch network are refused.

    The graph was exported in eval mode and in float32: the public test mode (train-mode batch norm
    and dropout) and autocast precisions have nothing to act on, so they would silently do nothing.
    """
    from advseg_cli.exported_models import onnx_device

    if config.test_mode != "deterministic":
        raise AdvsegError(f"--test-mode {config.test_mode}: {generator.path} is an ONNX graph exported in eval "
                          "mode; use its safetensors export or the run folder for the public test mode")
    if config.precision != "fp32":
        raise AdvsegError(f"--precision {config.precision}: {generator.path} is a float32 ONNX graph; "
                          "use --precision fp32")
    return onnx_device(config.device)


def resolve_geometry(config: ColorizeConfig, generator: LoadedGenerator) -> Geometry:
    """--size / --load-size defaults from the checkpoint, checked against what the network accepts."""
    arch = generator.spec.arch
    multiple = SIZE_MULTIPLE[arch]
    size = generator.trained_crop_size if config.size is None else config.size
    if size and size % multiple:
        raise AdvsegError(f"--size {size}: a {arch} generator needs a multiple of {multiple} "
                          f"(e.g. {nearest_valid_side(size, multiple)}); --size 0 rounds each sketch's own size")
    load_size = 0
    if config.test_mode == "public":
        load_size = config.load_size or max(generator.trained_load_size, size)
        if load_size < size:
            raise AdvsegError(f"--load-size {load_size} is smaller than the crop --size {size}")
    seed = config.seed if config.test_mode == "public" else 0
    return Geometry(config.test_mode, size, load_size, seed, multiple)


def _check_resumable(record_file: Path, options: dict[str, Any], overwrite: bool) -> None:
    """Refuse to add results of another model or protocol into a folder made with different ones."""
    previous = read_record(record_file)
    if previous is None or overwrite:
        return
    if previous.get("stage") != "colorize":
        raise IncompatibleInputError(f"{record_file.parent}: holds the output of `advseg {previous.get('stage')}`; "
                                     "use another OUT folder or --overwrite")
    changed = conflicting_options(previous.get("options", {}), options, RESULT_KEYS)
    if changed:
        raise IncompatibleInputError(f"{record_file.parent}: made with another checkpoint or settings "
                                     f"({'; '.join(changed)}); use another OUT folder or --overwrite")


def _is_done(job: _Job, grid: bool, mode: str) -> bool:
    return is_valid_png(job.target, mode) and (not grid or is_valid_png(job.sheet, "RGB"))


def colorize_folder(checkpoint: Path, sketches: Path, out: Path,
                    config: ColorizeConfig = ColorizeConfig()) -> ColorizeSummary:
    """Colorize every sketch under ``sketches`` into ``out`` (same relative paths, .png) with a record."""
    config.validate()
    sketches, out = Path(sketches), Path(out)
    relatives = list_images(sketches)
    if not relatives:
        raise AdvsegError(f"{sketches}: no image files found (looked for .png, .jpg, .bmp, .tif, .webp, ...)")
    if out.resolve().is_relative_to(sketches.resolve()):
        raise AdvsegError(f"OUT {out} lies inside SKETCHES {sketches}; choose an output folder outside it")
    device = resolve_device(config.device)
    check_precision(config.precision, device)
    generator = load_generator(checkpoint, epoch=config.epoch, arch=config.arch, norm=config.norm,
                               dropout=config.dropout)
    if generator.runs_onnx:
        device = onnx_run_device(config, generator)
    geometry = resolve_geometry(config, generator)

    options = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()},
               "sketches": str(sketches.resolve()), "checkpoint": str(generator.path.resolve()),
               "checkpoint_kind": generator.kind, "checkpoint_sha256": generator.sha256,
               "generator": dataclasses.asdict(generator.spec), "size": geometry.size,
               "load_size": geometry.load_size or None, "seed": geometry.seed if config.test_mode == "public" else None,
               "quantisation": "truncate" if config.test_mode == "public" else "round",
               "eval_mode": config.test_mode == "deterministic"}
    record_file = record_path_for(out, config.shard)
    out.mkdir(parents=True, exist_ok=True)
    _check_resumable(record_file, options, config.overwrite)
    remove_stale_temporaries(out)

    weights = {"name": "generator", "path": str(generator.path.resolve()), "sha256": generator.sha256,
               "source": generator.kind}
    record = RunRecord(stage="colorize", options=options, weights=[weights], extra={"checkpoint": generator.describe()})
    jobs = _plan(sketches, out, select_shard(relatives, config.shard), record)
    png_mode = "RGB" if generator.spec.out_ch == 3 else "L"
    todo = [job for job in jobs if config.overwrite or not _is_done(job, config.grid, png_mode)]
    record.counts["skipped"] = len(jobs) - len(todo)
    record.write(record_file)
    try:
        _run_jobs(todo, generator, geometry, config, device, record)
    except KeyboardInterrupt:
        record.finish("interrupted")
        record.write(record_file)
        raise
    index = _write_index(out, sketches, relatives, generator, geometry) if config.grid else None
    record.finish("complete")
    record.write(record_file)
    if record.counts["failed"] and not record.counts["done"] and not record.counts["skipped"]:
        raise AllInputsFailedError(f"colorize: all {record.counts['failed']} sketches failed; see {record_file}")
    return ColorizeSummary(record.counts["done"], record.counts["skipped"], record.counts["failed"], out,
                           record_file, geometry.size, config.test_mode, index)


def _write_index(out: Path, sketches: Path, relatives: list[Path], generator: LoadedGenerator,
                 geometry: Geometry) -> Path:
    """The gallery of every sheet in OUT/grid (those of other shards included)."""
    sheets = [(job.relative.as_posix(), job.sheet) for job in _plan(sketches, out, relatives, None)
              if job.sheet.is_file()]
    size = f"{geometry.size} px" if geometry.size else "each sketch's own size"
    details = [f"checkpoint: {generator.path} (sha256 {generator.sha256[:16]}...)",
               f"generator: {generator.spec.options()}",
               f"test mode: {geometry.mode}, size: {size}"
               + (f", load size {geometry.load_size}, seed {geometry.seed}" if geometry.mode == "public" else "")]
    return write_gallery(out, sheets, f"advseg colorize: {sketches.name}", details)


def _run_jobs(jobs: list[_Job], generator: LoadedGenerator, geometry: Geometry, config: ColorizeConfig,
              device: torch.device, record: RunRecord) -> None:
    """Batches of equal-sized inputs on the device; resizing back and PNG writing on threads."""
    if not jobs:
        return
    network = generator.network.to(device).requires_grad_(False)
    network.train(geometry.mode == "public")  # public: batch statistics and dropout, as its test.py
    if device.type == "cuda":
        network = network.to(memory_format=torch.channels_last)
    one_at_a_time = geometry.mode == "public" and depends_on_the_batch(network)
    if geometry.size == 0 and config.batch_size > 1:  # equal sizes next to each other form batches
        jobs = sorted(jobs, key=lambda job: (image_size(job.source), job.relative.as_posix()))
    dataset = _SketchDataset(jobs, geometry)
    keep_size = geometry.size == 0
    with concurrent.futures.ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool, \
            progress(total=len(jobs), desc="colorize", quiet=config.quiet) as bar:
        pending: list[concurrent.futures.Future] = []

        def flush(batch: list[tuple[int, PreparedSketch]]) -> None:
            seeds = [image_seed(geometry.seed, jobs[i].relative) for i, _ in batch] if one_at_a_time else None
            outputs = generate(network, [item.network_input for _, item in batch], device, config.precision, seeds)
            for (index, item), result in zip(batch, quantise(outputs, geometry.mode)):
                pending.append(pool.submit(finish_result, result, item, jobs[index], keep_size, config.grid))

        batch: list[tuple[int, PreparedSketch]] = []
        for index, item, reason in iterate_items(dataset, config.workers):
            if item is None:
                record.add_failure(jobs[index].relative.as_posix(), reason)
                bar.update(1)
                continue
            if batch and (item.network_input.shape != batch[0][1].network_input.shape
                          or len(batch) == config.batch_size):
                flush(batch)
                batch = []
            batch.append((index, item))
            bar.update(collect_finished(pending, record, block=len(pending) > 4 * config.batch_size))
        if batch:
            flush(batch)
        bar.update(collect_finished(pending, record, block=True, wait_all=True))
