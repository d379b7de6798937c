"""Which crop sizes a model can train at, found before anything is written.

Every generator must give back an image of its input's size (the L1, cycle and identity terms compare
them), and every discriminator must produce at least one logit and keep its normalisation layers fed (an
instance norm needs more than one pixel, a batch norm with one image per batch more than one). Instead of
keeping a table of rules per architecture, the model's own networks are run once on the *meta* device:
shapes propagate exactly as in a real forward (the same layers, the same checks inside them) but no memory
is allocated and nothing is computed, so the probe costs milliseconds even for 256 px ResNet-9s.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from advseg_cli.models.advseg import MODELS, uses_segmenter

SEARCH_LIMIT = 4096  # largest crop size proposed as a valid neighbour


class _FrozenNetworkPlaceholder:
    """Stands in for the frozen Seg / VGG while the networks are built: only the trained networks' shapes matter."""

    def feature_channels(self) -> int:
        return 1  # the width of --seg-features' fixed projection's input: no trained network's shape depends on it


def build_meta_networks(model: str, model_config: Any) -> list[tuple[str, nn.Module]]:
    """The model's generators and discriminators, on the meta device, in training mode, by name."""
    model_type = MODELS[model][1]
    seg = _FrozenNetworkPlaceholder() if uses_segmenter(model_config) else None
    frozen = (_FrozenNetworkPlaceholder(),) if model_type.uses_perceptual else ()
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = model_type(model_config, seg, 0, *frozen)
    names = built.generator_names + built.image_discriminator_names + tuple(
        built._seg_discriminator_name(kind) for kind in built.seg_kinds)
    return [(name, getattr(built, name).train()) for name in names]


def _input_channels(network: nn.Module) -> int:
    first = next(module for module in network.modules() if isinstance(module, nn.Conv2d))
    return first.in_channels


def network_problem(name: str, network: nn.Module, size: int, batch_size: int, generator: bool) -> str | None:
    """Why ``network`` cannot train on ``batch_size`` images of size x size, or None when it can."""
    images = torch.empty(batch_size, _input_channels(network), size, size, device="meta")
    try:
        with torch.no_grad():
            out = network(images)
    except (RuntimeError, ValueError) as exc:
        return f"{name} fails at {size}x{size} ({str(exc).splitlines()[0]})"
    height, width = out.shape[-2:]
    if generator and (height, width) != (size, size):
        return f"{name} turns {size}x{size} into {height}x{width}"
    if not generator and min(height, width) < 1:
        return f"{name} has no output at {size}x{size}"
    return None


def size_problem(networks: list[tuple[str, nn.Module]], generator_names: tuple[str, ...], size: int,
                 batch_size: int) -> str | None:
    """The first reason why one of the networks cannot train at ``size``, or None."""
    for name, network in networks:
        problem = network_problem(name, network, size, batch_size, name in generator_names)
        if problem:
            return problem
    return None


def search_range(size: int) -> tuple[int, int]:
    """Sizes searched for valid neighbours: half to twice the given size (at least up to 256 px)."""
    return max(1, size // 2), min(SEARCH_LIMIT, max(2 * size, 256))


def valid_neighbours(networks: list[tuple[str, nn.Module]], generator_names: tuple[str, ...], size: int,
                     batch_size: int) -> tuple[int | None, int | None]:
    """The nearest trainable crop sizes below and above ``size`` within ``search_range`` (None: none there)."""
    low, high = search_range(size)
    trains = lambda s: size_problem(networks, generator_names, s, batch_size) is None  # noqa: E731
    below = next((s for s in range(size - 1, low - 1, -1) if trains(s)), None)
    above = next((s for s in range(size + 1, high + 1) if trains(s)), None)
    return below, above


def crop_size_refusal(model: str, model_config: Any, crop_size: int, load_size: int, batch_size: int) -> str | None:
    """One line saying why ``--crop-size`` cannot train this model and which sizes can, or None.

    The proposals also respect ``--load-size`` (the crop is taken from the resized photo), so following the
    advice never runs into the next refusal.
    """
    networks = build_meta_networks(model, model_config)
    generator_names = MODELS[model][1].generator_names
    problem = size_problem(networks, generator_names, crop_size, batch_size)
    if problem is None:
        return None
    below, above = valid_neighbours(networks, generator_names, crop_size, batch_size)
    sizes = [str(s) for s in (below, above) if s is not None]
    low, high = search_range(crop_size)
    advice = f"valid crop sizes nearby: {' or '.join(sizes)}" if sizes else \
        f"no crop size from {low} to {high} works; change --arch or --n-layers-d"
    if above is not None and above > load_size and below is None:
        advice += f" (with --load-size at least {above})"
    if model_config.arch == "unet_256" and below is None:
        advice += "; or --arch unet_128, which trains from 128 px"
    what = f"{model_config.arch} generator, {model_config.n_layers_d}-layer PatchGAN, {model_config.norm} norm"
    return f"--crop-size {crop_size}: the {model} model ({what}) cannot train at this size: {problem}; {advice}"
