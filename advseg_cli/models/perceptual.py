"""The frozen VGG16 feature extractor behind AutoPainter's perceptual (feature) loss.

AutoPainter (Liu et al., 2017) compares generated and real photos in the feature space of an
ImageNet-trained VGG16; its public code uses the ``conv3_2`` activations (after the ReLU). We take the
weights from the file most PyTorch users already have, torchvision's ``vgg16-397923af.pth`` (its
``features.N`` keys), and build only the layers up to the chosen one: the full VGG16 is 138 M
parameters, the layers up to relu3_2 are 1.1 M, so the rest is never allocated.

Like the segmentation network, this network is held by the model but not registered as a sub-module:
its weights are not in the model's checkpoints, and it never trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advseg_cli.errors import AdvsegError, WeightsMismatchError
from advseg_cli.weights import ResolvedWeights, WeightsSpec, read_tensor_file, register_weights, resolve_weights

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_WEIGHTS = register_weights(
    WeightsSpec(
        name="vgg16-imagenet",
        filename=Path(VGG16_URL).name,
        option="--perceptual-weights",
        used_by="advseg train --model autopainter",
        how_to_get=f"download torchvision's ImageNet VGG16 from {VGG16_URL}",
        sha256_prefix="397923af",  # torchvision names its files after their sha256; the full hash is not published
        url=VGG16_URL,
        torch_hub=True,  # torchvision.models.vgg16(weights=...) downloads it there
    )
)

# torchvision's vgg16 "D" configuration: conv widths, "M" = 2x2 max pooling. Each conv is followed by a
# ReLU, so the indices of ``features`` (and of the weight file's keys) follow from this list.
_VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                        512, 512, 512, "M")
_BLOCK_NAMES = ("1_1", "1_2", "", "2_1", "2_2", "", "3_1", "3_2", "3_3", "", "4_1", "4_2", "4_3", "",
                "5_1", "5_2", "5_3", "")


def _layer_ends() -> dict[str, int]:
    """'relu3_2' -> the length of ``features`` that ends with that ReLU (torchvision's indices)."""
    ends, index = {}, 0
    for width, name in zip(_VGG16_LAYOUT, _BLOCK_NAMES):
        index += 1 if width == "M" else 2
        if name:
            ends[f"relu{name}"] = index
    return ends


PERCEPTUAL_LAYERS: dict[str, int] = _layer_ends()  # relu1_1 ... relu5_3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg16_features(end: int) -> nn.Sequential:
    """torchvision's ``vgg16().features[:end]``, built without the rest of the network."""
    layers: list[nn.Module] = []
    in_ch = 3
    for width in _VGG16_LAYOUT:
        if width == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, int(width), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            in_ch = int(width)
        if len(layers) >= end:
            break
    return nn.Sequential(*layers[:end])


class PerceptualFeatures(nn.Module):
    """Images in [-1, 1] -> VGG16 activations at ``layer``, with ImageNet normalisation applied first."""

    def __init__(self, layer: str = "relu3_2") -> None:
        super().__init__()
        if layer not in PERCEPTUAL_LAYERS:
            raise AdvsegError(f"--perceptual-layer {layer}: use one of {', '.join(PERCEPTUAL_LAYERS)}")
        self.layer = layer
        self.features = vgg16_features(PERCEPTUAL_LAYERS[layer])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.weights_record: dict[str, str] | None = None
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        unit = (images + 1) / 2  # [-1, 1] -> [0, 1], torchvision's input range
        return self.features((unit - self.mean.to(images.dtype)) / self.std.to(images.dtype))

    def load_torchvision_state(self, state: dict[str, Any], source: str) -> None:
        """Copy the ``features.N.weight/bias`` entries we need; everything else in the file is ignored."""
        wanted = self.features.state_dict()
        missing = [f"features.{name}" for name in wanted if not isinstance(state.get(f"features.{name}"), Tensor)]
        if missing:
            raise WeightsMismatchError(
                f"{source}: not torchvision's VGG16 weights (no {missing[0]}); expected the layout of "
                f"{VGG16_WEIGHTS.filename}")
        wrong = [f"features.{name} {tuple(state[f'features.{name}'].shape)} (expected {tuple(tensor.shape)})"
                 for name, tensor in wanted.items() if state[f"features.{name}"].shape != tensor.shape]
        if wrong:
            raise WeightsMismatchError(f"{source}: not VGG16 weights: {wrong[0]}")
        self.features.load_state_dict({name: state[f"features.{name}"] for name in wanted})

    def describe(self) -> dict[str, Any]:
        return {"network": "vgg16", "layer": self.layer, "weights": self.weights_record}


def build_perceptual(layer: str, weights: Path | None, device: torch.device) -> PerceptualFeatures:
    """The frozen feature network with real weights (resolved like every weights file), on ``device``."""
    network = PerceptualFeatures(layer)
    resolved: ResolvedWeights = resolve_weights(VGG16_WEIGHTS.name, weights)
    network.load_torchvision_state(read_tensor_file(resolved.path, "torchvision's VGG16 state dict"),
                                   str(resolved.path))
    network.weights_record = resolved.as_record()
    return network.to(device)
