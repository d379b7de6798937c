"""Generators saved by the public code (``*_net_G*.pth``, ``*_net_G_A.pth``) loaded into our generators.

Three state-dict layouts are recognised from their keys:

``cyclegan-resnet``
    pytorch-CycleGAN-and-pix2pix's ResnetGenerator: one ``model.N`` Sequential. Same as ours.
``cyclegan-unet``
    its UnetGenerator: nested ``model.model.N`` blocks. Same as ours.
``advsegloss-resnet``
    the AdvSegLoss (GANILLA-derived) ResnetGenerator: ``model.*`` (pad + 7x7 conv, norm, ReLU, two
    stride-2 convs, the residual blocks), ``model_decode.*`` (two transposed convs, each + norm +
    ReLU), ``model_out.*`` (pad + 7x7 conv with bias; tanh in forward), and a branch
    ``model_fc_prep.*`` (stride-2 convs 4ngf -> 2ngf -> ngf, each + norm + ReLU, adaptive pool to
    4x4) / ``model_fc.*`` (Linear 16*ngf -> 256, i.e. 1024 -> 256 at ngf 64, ReLU, Linear 256 -> out_ch)
    whose output the public forward computes and throws away. Its weights are accepted and ignored;
    the branch is never computed (read from the repository's models/networks.py).

Also handled: the ``module.`` prefix of DataParallel saves, and the ``running_mean`` /
``running_var`` / ``num_batches_tracked`` entries that checkpoints of old PyTorch versions hold for
InstanceNorm layers (which track no statistics; the CycleGAN code base drops them the same way).

Files are untrusted: they are read only with ``torch.load(path, map_location="cpu", weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from advseg_cli.errors import WeightsMismatchError, WeightsNotFoundError
from advseg_cli.models.networks import GeneratorSpec, define_generator
from advseg_cli.weights import read_tensor_file

CYCLEGAN_RESNET = "cyclegan-resnet"
CYCLEGAN_UNET = "cyclegan-unet"
ADVSEGLOSS_RESNET = "advsegloss-resnet"
LAYOUTS: tuple[str, ...] = (CYCLEGAN_RESNET, CYCLEGAN_UNET, ADVSEGLOSS_RESNET)

_RESNET_BLOCK_KEY = re.compile(r"^model\.(\d+)\.conv_block\.")
_UNUSED_BRANCH_PREFIXES = ("model_fc_prep.", "model_fc.")
_INSTANCE_NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")
_FIRST_BLOCK = 10  # index of the first residual block in the ResNet generators' ``model``


@dataclasses.dataclass(frozen=True)
class PublicGeneratorInfo:
    """What was found in a public generator file, and what of it was not used."""

    path: Path
    layout: str  # one of LAYOUTS
    spec: GeneratorSpec | None  # the generator the file describes (U-Net dropout cannot be seen: False)
    ignored_keys: tuple[str, ...]  # the unused fc branch and stale InstanceNorm statistics


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a state dict of tensors from an untrusted file, without executing any pickled code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: no such generator checkpoint file")
    content = read_tensor_file(path, "a generator state dict")
    not_tensors = [key for key, value in content.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise WeightsMismatchError(
            f"{path}: expected a generator state dict (name -> tensor); entries {not_tensors[:3]} are not "
            "tensors (a training checkpoint of advseg is loaded with --resume or --init, not as a public file)"
        )
    return strip_data_parallel_prefix({str(key): value for key, value in content.items()})


def strip_data_parallel_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove the ``module.`` prefix that saving a DataParallel / DDP wrapper adds to every key."""
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module."):]: value for key, value in state.items()}
    return state


def detect_layout(state: Mapping[str, Tensor]) -> str | None:
    """Which public layout the keys follow, or None if none of them."""
    if any(key.startswith(("model_decode.", "model_out.")) for key in state):
        return ADVSEGLOSS_RESNET
    if any(key.startswith("model.model.") for key in state):
        return CYCLEGAN_UNET
    first_conv = state.get("model.1.weight")
    if first_conv is not None and first_conv.dim() == 4 and tuple(first_conv.shape[2:]) == (7, 7):
        return CYCLEGAN_RESNET
    return None


def _resnet_spec(state: Mapping[str, Tensor], layout: str) -> GeneratorSpec | None:
    first_conv = state["model.1.weight"]  # [ngf, in_ch, 7, 7]
    blocks = sorted({int(match.group(1)) for key in state if (match := _RESNET_BLOCK_KEY.match(key))})
    n_blocks = len(blocks)
    arch = {9: "resnet_9blocks", 6: "resnet_6blocks"}.get(n_blocks)
    if arch is None or blocks != list(range(_FIRST_BLOCK, _FIRST_BLOCK + n_blocks)):
        return None
    # With dropout the block's second conv moves from index 5 to 6 (the norm layer otherwise sits at 6).
    second = state.get(f"model.{_FIRST_BLOCK}.conv_block.6.weight")
    dropout = second is not None and second.dim() == 4
    norm = "batch" if "model.2.weight" in state else ("instance" if "model.1.bias" in state else "none")
    out_key = "model_out.1.weight" if layout == ADVSEGLOSS_RESNET else f"model.{_FIRST_BLOCK + n_blocks + 7}.weight"
    if out_key not in state:
        return None
    return GeneratorSpec(arch, int(first_conv.shape[1]), int(state[out_key].shape[0]), int(first_conv.shape[0]),
                         norm, dropout)


def _unet_spec(state: Mapping[str, Tensor]) -> GeneratorSpec | None:
    if "model.model.0.weight" not in state or "model.model.3.weight" not in state:
        return None
    num_downs = sum(1 for key, value in state.items() if key.endswith(".weight") and value.dim() == 4) // 2
    arch = {8: "unet_256", 7: "unet_128"}.get(num_downs)
    if arch is None:
        return None
    first_conv = state["model.model.0.weight"]  # [ngf, in_ch, 4, 4]
    last_upconv = state["model.model.3.weight"]  # [2 ngf, out_ch, 4, 4]
    norm = "batch" if "model.model.1.model.2.weight" in state else "instance"
    return GeneratorSpec(arch, int(first_conv.shape[1]), int(last_upconv.shape[1]), int(first_conv.shape[0]), norm,
                         dropout=False)


def infer_spec(state: Mapping[str, Tensor], layout: str) -> GeneratorSpec | None:
    """The generator a public state dict describes (None when its shape is not one we build)."""
    try:
        return _unet_spec(state) if layout == CYCLEGAN_UNET else _resnet_spec(state, layout)
    except (KeyError, IndexError):
        return None


def to_our_layout(state: Mapping[str, Tensor], layout: str) -> tuple[dict[str, Tensor], list[str]]:
    """Rename a public state dict's keys to our generators' keys; returns (renamed, ignored keys).

    The AdvSegLoss layout's three Sequentials are our one ``model`` Sequential cut in three:
    ``model_decode.J`` is ``model.(10+n+J)`` and ``model_out.J`` is ``model.(16+n+J)``; its fc branch
    has no counterpart and is dropped.
    """
    if layout != ADVSEGLOSS_RESNET:
        return dict(state), []
    blocks = {int(match.group(1)) for key in state if (match := _RESNET_BLOCK_KEY.match(key))}
    decode_start = _FIRST_BLOCK + len(blocks)
    out_start = decode_start + 6
    renamed: dict[str, Tensor] = {}
    ignored: list[str] = []
    for key, value in state.items():
        if key.startswith(_UNUSED_BRANCH_PREFIXES):
            ignored.append(key)
            continue
        for prefix, start in (("model_decode.", decode_start), ("model_out.", out_start)):
            if key.startswith(prefix):
                index, _, rest = key[len(prefix):].partition(".")
                key = f"model.{start + int(index)}.{rest}"
                break
        renamed[key] = value
    return renamed, ignored


def _drop_instance_norm_statistics(state: dict[str, Tensor], generator: nn.Module) -> list[str]:
    """Remove statistics that old checkpoints stored for InstanceNorm layers which keep none."""
    expected = generator.state_dict()
    dropped = []
    for key in list(state):
        module_path, _, name = key.rpartition(".")
        if key in expected or name not in _INSTANCE_NORM_STATS:
            continue
        try:
            module = generator.get_submodule(module_path)
        except AttributeError:
            continue
        if isinstance(module, nn.InstanceNorm2d) and not module.track_running_stats:
            del state[key]
            dropped.append(key)
    return dropped


def _mismatch_report(state: Mapping[str, Tensor], generator: nn.Module) -> str:
    """'' when ``state`` fits ``generator`` exactly, else a short list of what differs."""
    expected = generator.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
              for key in expected if key in state and state[key].shape != expected[key].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:2])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:2])})")
    if shapes:
        problems.append(f"{len(shapes)} of another shape (e.g. file vs model: {shapes[0]})")
    return "; ".join(problems)


def _spec_words(spec: GeneratorSpec | None) -> str:
    if spec is None:
        return "an architecture advseg does not build"
    return f"{spec.arch}, ngf {spec.ngf}, norm {spec.norm}, dropout {'on' if spec.dropout else 'off'}, " \
           f"{spec.in_ch} -> {spec.out_ch} channels"


def load_public_generator(path: Path, generator: nn.Module) -> PublicGeneratorInfo:
    """Load a public-code generator file into ``generator`` (one of ours, built by define_generator).

    Raises WeightsMismatchError naming the file, the detected layout and the options that would build
    a fitting generator, when the file's keys or shapes do not fit.
    """
    path = Path(path)
    state = read_state_dict(path)
    layout = detect_layout(state)
    if layout is None:
        raise WeightsMismatchError(
            f"{path}: not a generator of a known public layout ({', '.join(LAYOUTS)}); "
            f"its first keys are {', '.join(list(state)[:3])}"
        )
    spec = infer_spec(state, layout)
    renamed, ignored = to_our_layout(state, layout)
    ignored += _drop_instance_norm_statistics(renamed, generator)
    problems = _mismatch_report(renamed, generator)
    if problems:
        ours = getattr(generator, "spec", None)
        hint = f"try {spec.options()}" if spec is not None else "advseg builds resnet_9blocks, resnet_6blocks, " \
                                                                "unet_256 and unet_128 generators"
        built = f" built with {ours.options()}" if ours is not None else ""
        raise WeightsMismatchError(
            f"{path}: {layout} generator ({_spec_words(spec)}) does not fit the generator{built}: "
            f"{problems}. {hint}"
        )
    generator.load_state_dict(renamed, strict=True)
    return PublicGeneratorInfo(path, layout, spec, tuple(ignored))


def generator_from_public(path: Path, dropout: bool | None = None) -> tuple[nn.Module, PublicGeneratorInfo]:
    """Build the generator a public file describes and load it (for colorize / fine-tuning without
    having to know the file's --arch / --norm). ``dropout`` overrides what the keys say (a U-Net's
    dropout leaves no trace in its keys)."""
    path = Path(path)
    state = read_state_dict(path)
    layout = detect_layout(state)
    spec = infer_spec(state, layout) if layout is not None else None
    if spec is None:
        raise WeightsMismatchError(
            f"{path}: not a generator advseg can build (layout {layout or 'unknown'}); advseg builds "
            "resnet_9blocks, resnet_6blocks, unet_256 and unet_128 generators"
        )
    if dropout is not None:
        spec = dataclasses.replace(spec, dropout=dropout)
    generator = define_generator(spec.arch, spec.in_ch, spec.out_ch, spec.ngf, spec.norm, spec.dropout)
    return generator, load_public_generator(path, generator)
