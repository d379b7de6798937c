"""The ``shapes`` backend: a small segmentation network trained on the shapes world, a real Seg offline.

Two roles, two independently trained networks (:mod:`advseg_cli.world.seg_training`):

* ``shapes-seg`` (a dilated FCN without skips, seed 0) is the backend ``--backend shapes``: what
  ``advseg segcache`` and the training's segmentation discriminators use, exactly like the COCO
  backends (it is the cheaper of the two: it runs forward and backward inside every training step);
* ``shapes-seg-eval`` (a U-Net, seed 1) is the **evaluation** segmenter. It is not a registered
  backend, so no training loss can use it: scores measured with it are not the quantity being
  optimised. Its pooled bottleneck features are the feature network of the experiment's Fréchet
  distance.

Weights are safetensors files (architecture and width in their header's metadata) in ``$ADVSEG_HOME``
or named with ``--weights``; beside each lies its run record (``<file>.run.json``) with its sha256,
its validation mIoU and how it was trained. A file whose sha256 is not its record's is refused.

Input: the training tensors (RGB in [-1, 1]) as they are. Output: logits over the world's nine
classes; ``soft_probs`` puts their softmax into the matching channels of the 135-class layout (the
other channels are 0, so each pixel sums to 1), ``hard_labels`` is the argmax's 135-layout id.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advseg_cli.errors import WeightsMismatchError, WeightsNotFoundError
from advseg_cli.files import sha256_file
from advseg_cli.runrecord import read_record, record_path_for
from advseg_cli.segmentation.base import Segmenter, check_images, register_backend, register_weights_check
from advseg_cli.segmentation.classes import NUM_CLASSES
from advseg_cli.weights import ResolvedWeights, WeightsSpec, advseg_home, register_weights, resolve_weights
from advseg_cli.world.render import WORLD_CLASS_IDS, WORLD_CLASS_NAMES, WORLD_VERSION

NUM_WORLD_CLASSES = len(WORLD_CLASS_IDS)
_HOW_TO_GET = "train it with `advseg data prepare shapes ROOT` (its seg step, a few minutes on a CPU)"
SEG_WEIGHTS = register_weights(WeightsSpec(
    name="shapes-seg", filename="shapes-seg.safetensors", option="--weights", how_to_get=_HOW_TO_GET,
    used_by="advseg segcache/train --backend shapes"))
EVAL_WEIGHTS = register_weights(WeightsSpec(
    name="shapes-seg-eval", filename="shapes-seg-eval.safetensors", option="--eval-weights",
    how_to_get=_HOW_TO_GET, used_by="advseg experiment seg-effect"))
ROLES: dict[str, tuple[WeightsSpec, str, int]] = {  # role -> (weights, architecture, seed)
    "seg": (SEG_WEIGHTS, "fcn", 0),  # cheap: it runs inside every training step
    "eval": (EVAL_WEIGHTS, "unet", 1),
}


def world_segmenter_path(role: str, seg_out: Path | None) -> Path:
    """Where the shapes world's ``role`` weights live: ``seg_out`` or ``$ADVSEG_HOME``."""
    return (seg_out or advseg_home()) / ROLES[role][0].filename


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ShapesUNet(nn.Module):
    """U-Net over a stride-2 stem (widths w, 2w, 3w at 1/2, 1/4, 1/8 of the input), logits upsampled
    bilinearly to the input: the evaluation segmenter (``ROLES``); any input side that is a multiple of 8."""

    def __init__(self, width: int = 16, classes: int = NUM_WORLD_CLASSES) -> None:
        super().__init__()
        w = width
        self.enc1 = nn.Sequential(_conv(3, w, 2), _conv(w, w))
        self.enc2 = nn.Sequential(_conv(w, 2 * w, 2), _conv(2 * w, 2 * w))
        self.enc3 = nn.Sequential(_conv(2 * w, 3 * w, 2), _conv(3 * w, 3 * w, dilation=2), _conv(3 * w, 3 * w))
        self.up3 = nn.ConvTranspose2d(3 * w, 2 * w, 2, 2)
        self.dec2 = _conv(4 * w, 2 * w)
        self.up2 = nn.ConvTranspose2d(2 * w, w, 2, 2)
        self.dec1 = _conv(2 * w, w)
        self.head = nn.Conv2d(w, classes, 1)

    def feature_map(self, x: Tensor) -> Tensor:
        """[N, w, H/2, W/2]: the decoder's last activations, what the classifier reads."""
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([self.up3(e3), e2], 1))
        return self.dec1(torch.cat([self.up2(d2), e1], 1))

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(self.head(self.feature_map(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def features(self, x: Tensor) -> Tensor:
        """[N, 3w] spatially averaged bottleneck activations: the Fréchet distance's feature vector."""
        return self.enc3(self.enc2(self.enc1(x))).mean(dim=(2, 3))


class ShapesFCN(nn.Module):
    """Stride-4 dilated FCN without skip connections: the training Seg (``ROLES``), cheap enough to train on
    a CPU in minutes and to run inside every training step."""

    def __init__(self, width: int = 32, classes: int = NUM_WORLD_CLASSES) -> None:
        super().__init__()
        w = width
        self.encoder = nn.Sequential(_conv(3, w // 2, 2), _conv(w // 2, w, 2), _conv(w, w, dilation=1),
                                     _conv(w, 2 * w, dilation=2), _conv(2 * w, 2 * w, dilation=4))
        self.head = nn.Conv2d(2 * w, classes, 1)

    def feature_map(self, x: Tensor) -> Tensor:
        """[N, 2w, H/4, W/4]: the encoder's output, what the 1x1 classifier reads."""
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head(self.feature_map(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


ARCHITECTURES: dict[str, tuple[type[nn.Module], int]] = {"unet": (ShapesUNet, 16), "fcn": (ShapesFCN, 32)}


def build_network(arch: str, width: int | None = None) -> nn.Module:
    cls, default_width = ARCHITECTURES[arch]
    return cls(width or default_width)


def pad_to_multiple(images: Tensor, multiple: int = 8) -> tuple[Tensor, tuple[int, int]]:
    """Reflect-pad bottom/right to a multiple of ``multiple``; returns the original size for cropping."""
    height, width = images.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h), mode="replicate")
    return images, (height, width)


def world_logits(network: nn.Module, images: Tensor) -> Tensor:
    """[N,3,H,W] in [-1,1] -> [N,9,H,W] logits, any H, W (padded for the network, cropped back)."""
    padded, (height, width) = pad_to_multiple(images)
    return network(padded)[..., :height, :width]


# ------------------------------------------------------------------------------------ weights files
def save_network(network: nn.Module, arch: str, width: int, path: Path) -> str:
    """Write ``network`` as safetensors (its architecture in the header); returns the file's sha256."""
    from safetensors.torch import save_file

    from advseg_cli.files import atomic_path

    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items()}
    metadata = {"format": "advseg-shapes-seg", "arch": arch, "width": str(width),
                "world_version": str(WORLD_VERSION), "classes": json.dumps(list(WORLD_CLASS_NAMES))}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return sha256_file(path)


def verify_against_record(path: Path) -> dict[str, Any]:
    """The weights' run record, after checking the file is the one it describes (sha256)."""
    record = read_record(record_path_for(path))
    if record is None:
        raise WeightsMismatchError(f"{path}: no record {record_path_for(path).name} beside it, so its origin and "
                                   f"sha256 cannot be checked; {_HOW_TO_GET}")
    expected = str(record.get("extra", {}).get("sha256", ""))
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsMismatchError(f"{path}: sha256 {actual[:12]}... differs from its record's {expected[:12]}... "
                                   f"(the file was changed or replaced); {_HOW_TO_GET} again")
    return record


def load_network(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """A verified weights file -> (network in eval mode, its record); one-line errors for bad files."""
    from safetensors import SafetensorError, safe_open

    record = verify_against_record(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsMismatchError(f"{path}: not a safetensors file ({exc})".splitlines()[0]) from None
    if metadata.get("format") != "advseg-shapes-seg" or metadata.get("arch") not in ARCHITECTURES:
        raise WeightsMismatchError(f"{path}: not a shapes-world segmenter (header {metadata}); {_HOW_TO_GET}")
    if json.loads(metadata.get("classes", "[]")) != list(WORLD_CLASS_NAMES):
        raise WeightsMismatchError(f"{path}: trained on another class list; {_HOW_TO_GET} again")
    network = build_network(metadata["arch"], int(metadata["width"]))
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsMismatchError(f"{path}: weights do not fit the {metadata['arch']} network "
                                   f"({str(exc).splitlines()[0]})") from None
    return network.eval(), record


def resolve_role_weights(role: str, explicit: Path | None) -> ResolvedWeights:
    """The file of ``role`` ('seg' | 'eval'): ``explicit``, else ``$ADVSEG_HOME``; verified against its record."""
    spec = ROLES[role][0]
    resolved = resolve_weights(spec.name, explicit)
    if resolved.path.is_dir():
        raise WeightsNotFoundError(f"{spec.option} {resolved.path}: a folder; pass the .safetensors file")
    verify_against_record(resolved.path)
    return resolved


# ------------------------------------------------------------------------------------ the backend
class ShapesSegmenter(Segmenter):
    """A trained shapes-world network behind the Segmenter interface (hard labels, soft probabilities)."""

    backend = "shapes"

    def __init__(self, network: nn.Module, device: torch.device, precision: str = "fp32",
                 weights_record: dict[str, str] | None = None, model_name: str = "shapes-seg") -> None:
        super().__init__(device, precision)
        self.network = network.eval()
        self.model_name = model_name
        self.weights_record = weights_record
        self.register_buffer("lut", torch.tensor(WORLD_CLASS_IDS, dtype=torch.long), persistent=False)
        self.to(self.device)

    def logits(self, images: Tensor) -> Tensor:
        check_images(images)
        return world_logits(self.network, images.to(self.device, torch.float32))

    def features(self, images: Tensor) -> Tensor:
        """The network's ``feature_map`` of the images, cropped to the part that covers them (the network
        reads them padded to a multiple of 8)."""
        check_images(images)
        padded, (height, width) = pad_to_multiple(images.to(self.device, torch.float32))
        features = self.network.feature_map(padded)
        stride = padded.shape[-1] // features.shape[-1]
        return features[..., :math.ceil(height / stride), :math.ceil(width / stride)]

    def map_channels(self) -> Tensor:
        """The world's nine class ids: ``scatter_to_layout`` leaves every other channel at zero."""
        return self.lut.sort().values

    def scatter_to_layout(self, world_probs: Tensor) -> Tensor:
        """[N,9,H,W] -> [N,135,H,W] with the nine channels at their 135-layout ids, zeros elsewhere."""
        batch, _, height, width = world_probs.shape
        probs = world_probs.new_zeros(batch, NUM_CLASSES, height, width)
        return probs.index_copy(1, self.lut, world_probs)

    @torch.no_grad()
    def hard_labels(self, images: Tensor) -> Tensor:
        return self.lut[self.logits(images).argmax(1)].to(torch.uint8)

    def soft_probs(self, images: Tensor) -> Tensor:
        return self.scatter_to_layout(self.logits(images).softmax(1))

    def hard_and_soft(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """One forward for both (the straight-through map needs both); labels are the soft map's argmax."""
        world_probs = self.logits(images).softmax(1)
        return self.lut[world_probs.detach().argmax(1)].to(torch.uint8), self.scatter_to_layout(world_probs)


def build_role_segmenter(role: str, weights: Path | None, device: torch.device,
                         precision: str = "fp32") -> ShapesSegmenter:
    """The verified network of ``role`` as a frozen Segmenter (the eval role is never a backend)."""
    resolved = resolve_role_weights(role, weights)
    network, _ = load_network(resolved.path)
    segmenter = ShapesSegmenter(network, device, precision, resolved.as_record(), ROLES[role][0].name)
    return segmenter.freeze()


@register_weights_check("shapes")
def check_shapes_weights(weights: Path | None) -> str:
    resolved = resolve_role_weights("seg", weights)
    return f"{resolved.path} ({resolved.source})"


@register_backend("shapes")
def build_shapes(weights: Path | None, device: torch.device, precision: str = "fp32") -> ShapesSegmenter:
    """Factory of the registry: the training Seg of the shapes world."""
    return build_role_segmenter("seg", weights, device, precision)
