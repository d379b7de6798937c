"""CycleGAN and Pix2Pix with the adversarial segmentation loss (Hicsonmez et al., ICIP 2021), and the
paper's paired baseline AutoPainter (Liu et al., 2017), which takes the same segmentation terms.

Each model is an ``nn.Module`` that holds its networks and its image pools, and computes named loss
terms. It holds no optimizer, scheduler or gradient scaler: the training loop owns those (and AMP,
DDP, checkpoints). One training step, in the public code's order::

    fakes = model.translate(batch)                 # generators (+ Seg maps of the generated photos)
    g = model.generator_losses(batch, fakes)       # freezes the discriminators, returns terms + 'total'
    g["total"].backward(); opt_G.step()
    d = model.discriminator_losses(batch, fakes)   # unfreezes them; uses pooled, detached fakes
    d["total"].backward(); opt_D.step()

(Pix2Pix's public order is the discriminator step first, then the generator step; both orders work
with the same ``fakes``, because the discriminator losses only see detached copies.)

Batches are mappings of tensors: ``real_A`` sketches [N,Ca,H,W] and ``real_B`` photos [N,3,H,W], both
in [-1, 1], and, when a segmentation discriminator is on, ``real_B_labels`` [N,H,W] uint8, the cached
135-class panoptic labels of the real photos (cropped / flipped like them).

Names follow the CycleGAN code base, mapped to the papers: G_A is the paper's G (sketch A -> photo B),
G_B its F (photo -> sketch); D_A judges photos (CycleGAN paper's D_Y), D_B judges sketches (D_X).
The AdvSegLoss paper's D_M (multi-class map) is ``D_M``; its binary-map discriminator "D_B" is
``D_Bin`` here, to keep it apart from CycleGAN's D_B.

Segmentation maps of generated photos (``seg_grad``):

``soft`` (default)
    ``seg.soft_probs(fake_B)``: class probabilities, differentiable with respect to the generated
    pixels (Seg's weights stay frozen), so ``lambda_seg * GAN(D_M(map), real)`` pushes the generator.
``compat``
    ``one_hot(seg.hard_labels(fake_B.detach()))``: the public code's hard maps, which carry no
    gradient, so the generator's segmentation term is a constant (its defect, kept for comparison).
``straight``
    A straight-through map: forward, the one-hot of Seg's hard labels (so D_M / D_Bin see maps as sharp
    as the real photos' one-hot maps and cannot tell generated ones by their softness); backward, the
    gradient of the soft probabilities (``hard + soft - soft.detach()``), so the loss still reaches
    the generator.

Real maps are one-hot (or binary) maps of the cached labels in both modes.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from advseg_cli.errors import AdvsegError
from advseg_cli.models.image_pool import ImagePool
from advseg_cli.models.losses import GAN_MODES, GANLoss, discriminator_loss, total_variation, weighted_l1
from advseg_cli.models.networks import (
    GENERATOR_ARCHS,
    INIT_TYPES,
    NORMS,
    check_choice,
    define_discriminator,
    define_generator,
    init_weights,
    set_requires_grad,
)
from advseg_cli.segmentation.classes import NUM_CLASSES
from advseg_cli.segmentation.maps import binary_from_labels, binary_from_probs, one_hot

ADVSEG_MODES: tuple[str, ...] = ("none", "multi", "binary", "both")
SEG_GRAD_MODES: tuple[str, ...] = ("soft", "compat", "straight")
POOL_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16,
                                       "bfloat16": torch.bfloat16}
BINARY_CHANNELS = 3  # unlabeled (always 0), thing, stuff

# advseg mode -> which segmentation discriminators exist ("multi": D_M, "binary": D_Bin).
_SEG_KINDS: dict[str, tuple[str, ...]] = {"none": (), "multi": ("multi",), "binary": ("binary",),
                                          "both": ("multi", "binary")}
_SEG_CHANNELS: dict[str, int] = {"multi": NUM_CLASSES, "binary": BINARY_CHANNELS}
_SEG_LOSS_NAMES: dict[str, str] = {"multi": "M", "binary": "Bin"}

Batch = Mapping[str, Tensor]


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """Forward the values of ``hard``, backward the gradient of ``soft`` (same shape)."""
    return hard.to(soft.dtype) + (soft - soft.detach())  # (x - x) is exactly 0: the forward is exactly hard


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _validate_common(config: Any) -> None:
    """Checks shared by both model configs; messages name the command-line option."""
    check_choice("--arch", config.arch, GENERATOR_ARCHS)
    check_choice("--norm", config.norm, NORMS)
    check_choice("--gan-mode", config.gan_mode, GAN_MODES)
    check_choice("--advseg", config.advseg, ADVSEG_MODES)
    check_choice("--seg-grad", config.seg_grad, SEG_GRAD_MODES)
    check_choice("--seg-pool-dtype", config.seg_pool_dtype, POOL_DTYPES)
    check_choice("--init-type", config.init_type, INIT_TYPES)
    for field in ("ngf", "ndf", "n_layers_d", "sketch_channels", "photo_channels"):
        if getattr(config, field) < 1:
            raise AdvsegError(f"{_flag(field)}: must be at least 1, got {getattr(config, field)}")
    if config.pool_size < 0:
        raise AdvsegError(f"--pool-size: must be 0 (no pool) or more, got {config.pool_size}")
    for field in (f.name for f in dataclasses.fields(config) if f.name.startswith("lambda_")):
        if getattr(config, field) < 0:
            raise AdvsegError(f"{_flag(field)}: a loss weight cannot be negative, got {getattr(config, field)}")
    if config.advseg != "none" and config.photo_channels != 3:
        raise AdvsegError(f"--advseg {config.advseg}: the segmentation network needs RGB photos "
                          f"(photo channels 3, got {config.photo_channels})")


@dataclasses.dataclass(frozen=True)
class CycleGANConfig:
    """CycleGAN + AdvSegLoss; defaults are the public code's (shared/REFERENCE.md)."""

    arch: str = "resnet_9blocks"  # generator of G_A and G_B: resnet_9blocks | resnet_6blocks | unet_256 | unet_128
    ngf: int = 64  # generator width: filters of its first convolution
    ndf: int = 64  # discriminator width: filters of the PatchGAN's first convolution
    n_layers_d: int = 3  # PatchGAN stride-2 layers; 3 gives 70x70 patches
    norm: str = "instance"  # normalisation in generators and discriminators: instance | batch | none
    dropout: bool = False  # dropout(0.5) inside the generators (CycleGAN: off)
    sketch_channels: int = 3  # channels of domain A; sketches are fed gray-replicated to RGB (public input_nc=3)
    photo_channels: int = 3  # channels of domain B (RGB photos)
    gan_mode: str = "lsgan"  # adversarial loss: lsgan (least squares) | vanilla (BCE)
    lambda_a: float = 10.0  # weight of the cycle loss |G_B(G_A(A)) - A|
    lambda_b: float = 10.0  # weight of the cycle loss |G_A(G_B(B)) - B|
    lambda_identity: float = 0.5  # identity loss weight, as a fraction of lambda_a / lambda_b (0: off)
    pool_size: int = 50  # history of generated images (and maps) shown to the discriminators; 0: none
    advseg: str = "none"  # segmentation discriminators: none | multi (D_M) | binary (D_Bin) | both
    lambda_seg: float = 10.0  # weight of each segmentation discriminator's term in the generator loss
    seg_grad: str = "soft"  # maps of generated photos: soft (differentiable) | compat (hard, no gradient)
    seg_pool_dtype: str = "float16"  # storage dtype of the map pools (a 50-map 135-channel pool is large)
    init_type: str = "normal"  # weight init: normal | xavier | kaiming | orthogonal
    init_gain: float = 0.02  # std of the normal init (scale for xavier / orthogonal)

    def validate(self) -> CycleGANConfig:
        _validate_common(self)
        if self.lambda_identity > 0 and self.sketch_channels != self.photo_channels:
            raise AdvsegError(
                f"--lambda-identity: the identity loss feeds photos to the sketch->photo generator, which needs "
                f"as many sketch channels as photo channels ({self.sketch_channels} vs {self.photo_channels}); "
                "use --lambda-identity 0 or 3-channel sketches"
            )
        return self


@dataclasses.dataclass(frozen=True)
class Pix2PixConfig:
    """Pix2Pix + AdvSegLoss; defaults are the public code's (shared/REFERENCE.md)."""

    arch: str = "resnet_9blocks"  # generator G: resnet_9blocks | resnet_6blocks | unet_256 | unet_128
    ngf: int = 64  # generator width: filters of its first convolution
    ndf: int = 64  # discriminator width: filters of the PatchGAN's first convolution
    n_layers_d: int = 3  # PatchGAN stride-2 layers; 3 gives 70x70 patches
    norm: str = "batch"  # normalisation in generator and discriminators: instance | batch | none
    dropout: bool = True  # dropout(0.5) inside the generator (pix2pix's noise source)
    sketch_channels: int = 3  # channels of domain A; sketches are fed gray-replicated to RGB (public input_nc=3)
    photo_channels: int = 3  # channels of domain B (RGB photos)
    gan_mode: str = "vanilla"  # adversarial loss: vanilla (BCE) | lsgan (least squares)
    lambda_l1: float = 100.0  # weight of |G(A) - B|
    pool_size: int = 0  # history of generated pairs shown to the discriminators; 0: none (pix2pix)
    advseg: str = "none"  # segmentation discriminators: none | multi (D_M) | binary (D_Bin) | both
    lambda_seg: float = 100.0  # weight of each segmentation discriminator's term in the generator loss
    seg_grad: str = "soft"  # maps of generated photos: soft (differentiable) | compat (hard, no gradient)
    seg_pool_dtype: str = "float16"  # storage dtype of the map pools (used only when pool_size > 0)
    init_type: str = "normal"  # weight init: normal | xavier | kaiming | orthogonal
    init_gain: float = 0.02  # std of the normal init (scale for xavier / orthogonal)

    def validate(self) -> Pix2PixConfig:
        _validate_common(self)
        return self


@dataclasses.dataclass(frozen=True)
class AutoPainterConfig(Pix2PixConfig):
    """AutoPainter (+ AdvSegLoss): Pix2Pix's networks and terms, plus total variation and VGG features.

    Defaults follow AutoPainter's public code (github.com/irfanICMLL/Auto_painter, auto-painter.py)
    where our networks can express them: U-Net generator and 70x70 PatchGAN (its own are the same
    shapes with 3x3 kernels), widths 48, vanilla GAN, L1 weight 50, TV weight 1e-3 on the summed
    squared neighbour differences, and the mean absolute difference of VGG16 conv3_2 activations
    (after the ReLU). Its feature weight 1e-4 applies to a Caffe-converted VGG16 fed 0-255 pixel values;
    torchvision's VGG16 (our weights) is fed ImageNet-normalised [0, 1] values, about 255 x 0.226 = 58
    times smaller, and ReLU networks scale about linearly, so our default is 1e-4 x 58 = 5.8e-3.
    """

    arch: str = "unet_256"  # generator G: unet_256 (AutoPainter's U-Net) | unet_128 | resnet_9blocks | resnet_6blocks
    ngf: int = 48  # generator width (the public code's --ngf 48)
    ndf: int = 48  # discriminator width (the public code's --ndf 48)
    lambda_l1: float = 50.0  # weight of |G(A) - B| (the public code's l1_weight)
    lambda_tv: float = 1e-3  # weight of the total variation of G(A) (the public code's tv_weight)
    lambda_feat: float = 5.8e-3  # weight of mean|VGG(G(A)) - VGG(B)| (see the class docstring)
    perceptual_layer: str = "relu3_2"  # VGG16 activations compared by the feature loss

    def validate(self) -> AutoPainterConfig:
        from advseg_cli.models.perceptual import PERCEPTUAL_LAYERS

        _validate_common(self)
        check_choice("--perceptual-layer", self.perceptual_layer, PERCEPTUAL_LAYERS)
        if self.lambda_feat > 0 and self.photo_channels != 3:
            raise AdvsegError(f"--lambda-feat: the VGG feature loss needs RGB photos (photo channels 3, got "
                              f"{self.photo_channels}); use --lambda-feat 0")
        return self


@dataclasses.dataclass
class CycleGANFakes:
    """The generators' outputs of one step (graph attached), shared by the G and D losses."""

    fake_B: Tensor  # G_A(real_A): the colorized sketch
    rec_A: Tensor  # G_B(fake_B): the sketch reconstructed from it
    fake_A: Tensor  # G_B(real_B): the sketch made from a photo
    rec_B: Tensor  # G_A(fake_A): the photo reconstructed from it
    fake_B_maps: dict[str, Tensor]  # "multi" [N,135,H,W] / "binary" [N,3,H,W] segmentation maps of fake_B


@dataclasses.dataclass
class Pix2PixFakes:
    """The generator's output of one step (graph attached), shared by the G and D losses."""

    fake_B: Tensor  # G(real_A)
    fake_B_maps: dict[str, Tensor]  # "multi" / "binary" segmentation maps of fake_B


class AdvSegModel(nn.Module):
    """What both models share: the segmentation discriminators, maps, pools and parameter groups.

    ``seg`` (the frozen Segmenter) is held but not registered as a sub-module: its weights are not
    part of this model's state dict, parameters or ``.to()``; build it on the training device.
    """

    name: ClassVar[str]
    generator_names: ClassVar[tuple[str, ...]]
    image_discriminator_names: ClassVar[tuple[str, ...]]
    paired: ClassVar[bool]  # trains on (sketch, photo) pairs with the same relative path
    uses_perceptual: ClassVar[bool] = False  # takes a frozen feature network (AutoPainter)

    def __init__(self, config: Any, seg: nn.Module | None, pool_seed: int) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.seg_kinds = _SEG_KINDS[config.advseg]
        if self.seg_kinds and seg is None:
            raise ValueError(f"advseg={config.advseg!r} needs a segmentation network (seg=None was given)")
        object.__setattr__(self, "_seg", seg)  # deliberately not a registered sub-module
        object.__setattr__(self, "_perceptual", None)  # AutoPainter's frozen VGG16 features, likewise
        self.criterion_gan = GANLoss(config.gan_mode)
        self.pool_seed = pool_seed
        self.pools: dict[str, ImagePool] = {}

    @property
    def seg(self) -> nn.Module | None:
        return self._seg

    @property
    def perceptual(self) -> nn.Module | None:
        return self._perceptual

    # ----------------------------------------------------------------------------------------------
    # construction helpers

    def _build_seg_discriminators(self, conditioning_channels: int) -> None:
        """D_M over 135 (+ conditioning) channels and/or D_Bin over 3 (+ conditioning) channels."""
        config = self.config
        self.D_M = self.D_Bin = None
        for kind in self.seg_kinds:
            net = define_discriminator(conditioning_channels + _SEG_CHANNELS[kind], config.ndf, config.n_layers_d,
                                       config.norm)
            setattr(self, self._seg_discriminator_name(kind), init_weights(net, config.init_type, config.init_gain))
            self._add_pool(f"seg_{kind}", POOL_DTYPES[config.seg_pool_dtype])

    def _add_pool(self, name: str, storage_dtype: torch.dtype | None = None) -> None:
        # Each pool draws from its own stream: the seed mixes a stable hash of the pool's name.
        seed = (self.pool_seed * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 63)
        self.pools[name] = ImagePool(self.config.pool_size, seed, storage_dtype)

    @staticmethod
    def _seg_discriminator_name(kind: str) -> str:
        return "D_" + _SEG_LOSS_NAMES[kind]

    # ----------------------------------------------------------------------------------------------
    # parameter groups (the loop builds one optimizer per group) and freezing

    def generator_modules(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.generator_names]

    def discriminator_modules(self) -> list[nn.Module]:
        names = self.image_discriminator_names + tuple(self._seg_discriminator_name(k) for k in self.seg_kinds)
        return [getattr(self, name) for name in names]

    def generator_parameters(self) -> list[nn.Parameter]:
        return [p for net in self.generator_modules() for p in net.parameters()]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [p for net in self.discriminator_modules() for p in net.parameters()]

    def set_discriminators_trainable(self, flag: bool) -> None:
        """requires_grad of every discriminator (image and segmentation) on or off."""
        set_requires_grad(self.discriminator_modules(), flag)

    @property
    def photo_generator(self) -> nn.Module:
        """The sketch -> photo generator (what colorize runs)."""
        return getattr(self, self.generator_names[0])

    # ----------------------------------------------------------------------------------------------
    # segmentation maps

    def fake_maps(self, fake_B: Tensor) -> dict[str, Tensor]:
        """Segmentation maps of generated photos, per kind; differentiable in ``soft`` mode only."""
        if not self.seg_kinds:
            return {}
        if self.config.seg_grad == "soft":
            probs = self.seg.soft_probs(fake_B)  # [N,135,H,W], gradient flows to fake_B
            maps = {"multi": probs, "binary": binary_from_probs(probs) if "binary" in self.seg_kinds else None}
        elif self.config.seg_grad == "straight":
            labels, probs = self.seg.hard_and_soft(fake_B)  # one forward where the backend allows it
            maps = {"multi": straight_through(one_hot(labels), probs),
                    "binary": straight_through(binary_from_labels(labels), binary_from_probs(probs))
                    if "binary" in self.seg_kinds else None}
        else:
            with torch.no_grad():
                labels = self.seg.hard_labels(fake_B.detach())  # [N,H,W] uint8
                maps = {"multi": one_hot(labels) if "multi" in self.seg_kinds else None,
                        "binary": binary_from_labels(labels) if "binary" in self.seg_kinds else None}
        return {kind: maps[kind].to(fake_B.dtype) for kind in self.seg_kinds}

    def real_maps(self, batch: Batch, like: Tensor) -> dict[str, Tensor]:
        """One-hot / binary maps of the real photos' cached labels, matching ``like``'s size and dtype."""
        if not self.seg_kinds:
            return {}
        labels = batch.get("real_B_labels")
        if labels is None:
            raise ValueError(f"advseg={self.config.advseg!r}: the batch needs 'real_B_labels' [N,H,W]")
        if labels.shape != (like.shape[0], *like.shape[2:]):
            raise ValueError(f"real_B_labels has shape {tuple(labels.shape)}, the photos are {tuple(like.shape)}")
        makers = {"multi": one_hot, "binary": binary_from_labels}
        return {kind: makers[kind](labels).to(like.dtype) for kind in self.seg_kinds}

    # ----------------------------------------------------------------------------------------------
    # image pools (part of a resumable checkpoint)

    def pools_state_dict(self) -> dict[str, dict[str, Any]]:
        return {name: pool.state_dict() for name, pool in self.pools.items()}

    def load_pools_state_dict(self, state: Mapping[str, Mapping[str, Any]]) -> None:
        if set(state) != set(self.pools):
            raise ValueError(f"pool states {sorted(state)} do not match this model's pools {sorted(self.pools)}")
        for name, pool in self.pools.items():
            pool.load_state_dict(dict(state[name]))

    # ----------------------------------------------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{type(self).__name__} has no forward: call translate(), generator_losses() and "
                        "discriminator_losses()")

    @staticmethod
    def _with_total(terms: dict[str, Tensor]) -> dict[str, Tensor]:
        terms["total"] = torch.stack([value.float() for value in terms.values()]).sum()
        return terms


class CycleGANAdvSeg(AdvSegModel):
    """Unpaired: G_A (sketch -> photo), G_B (photo -> sketch), D_A (photos), D_B (sketches), + D_M / D_Bin.

    Generator loss: GAN(D_A(G_A(A))) + GAN(D_B(G_B(B))) + lambda_a |G_B(G_A(A)) - A| + lambda_b
    |G_A(G_B(B)) - B| + lambda_identity (lambda_b |G_A(B) - B| + lambda_a |G_B(A) - A|) + lambda_seg
    GAN(D_K(map_K(G_A(A)))) for each segmentation discriminator K. D_M / D_Bin see maps alone.
    """

    name = "cyclegan"
    generator_names = ("G_A", "G_B")
    image_discriminator_names = ("D_A", "D_B")
    paired = False

    def __init__(self, config: CycleGANConfig | None = None, seg: nn.Module | None = None, pool_seed: int = 0) -> None:
        super().__init__(config or CycleGANConfig(), seg, pool_seed)
        c = self.config
        init = lambda net: init_weights(net, c.init_type, c.init_gain)  # noqa: E731
        self.G_A = init(define_generator(c.arch, c.sketch_channels, c.photo_channels, c.ngf, c.norm, c.dropout))
        self.G_B = init(define_generator(c.arch, c.photo_channels, c.sketch_channels, c.ngf, c.norm, c.dropout))
        self.D_A = init(define_discriminator(c.photo_channels, c.ndf, c.n_layers_d, c.norm))
        self.D_B = init(define_discriminator(c.sketch_channels, c.ndf, c.n_layers_d, c.norm))
        self._add_pool("fake_B")
        self._add_pool("fake_A")
        self._build_seg_discriminators(conditioning_channels=0)

    def translate(self, batch: Batch) -> CycleGANFakes:
        real_A, real_B = batch["real_A"], batch["real_B"]
        fake_B = self.G_A(real_A)
        fake_A = self.G_B(real_B)
        return CycleGANFakes(fake_B=fake_B, rec_A=self.G_B(fake_B), fake_A=fake_A, rec_B=self.G_A(fake_A),
                             fake_B_maps=self.fake_maps(fake_B))

    def generator_losses(self, batch: Batch, fakes: CycleGANFakes | None = None,
                         freeze_discriminators: bool = True) -> dict[str, Tensor]:
        """Weighted terms G_A, G_B, cycle_A, cycle_B, (idt_A, idt_B), (G_M, G_Bin) and their 'total'."""
        if freeze_discriminators:
            self.set_discriminators_trainable(False)
        c, gan = self.config, self.criterion_gan
        fakes = fakes if fakes is not None else self.translate(batch)
        real_A, real_B = batch["real_A"], batch["real_B"]
        terms = {
            "G_A": gan(self.D_A(fakes.fake_B), True),
            "G_B": gan(self.D_B(fakes.fake_A), True),
            "cycle_A": weighted_l1(fakes.rec_A, real_A, c.lambda_a),
            "cycle_B": weighted_l1(fakes.rec_B, real_B, c.lambda_b),
        }
        if c.lambda_identity > 0:
            terms["idt_A"] = weighted_l1(self.G_A(real_B), real_B, c.lambda_b * c.lambda_identity)
            terms["idt_B"] = weighted_l1(self.G_B(real_A), real_A, c.lambda_a * c.lambda_identity)
        for kind in self.seg_kinds:
            D_seg = getattr(self, self._seg_discriminator_name(kind))
            terms["G_" + _SEG_LOSS_NAMES[kind]] = c.lambda_seg * gan(D_seg(fakes.fake_B_maps[kind]), True)
        return self._with_total(terms)

    def discriminator_losses(self, batch: Batch, fakes: CycleGANFakes | None = None) -> dict[str, Tensor]:
        """Terms D_A, D_B, (D_M, D_Bin), each 0.5 * (real + pooled fake), and their 'total'."""
        self.set_discriminators_trainable(True)
        if fakes is None:
            with torch.no_grad():
                fakes = self.translate(batch)
        gan, real_A, real_B = self.criterion_gan, batch["real_A"], batch["real_B"]
        terms = {
            "D_A": discriminator_loss(gan, self.D_A(real_B), self.D_A(self.pools["fake_B"].query(fakes.fake_B))),
            "D_B": discriminator_loss(gan, self.D_B(real_A), self.D_B(self.pools["fake_A"].query(fakes.fake_A))),
        }
        real_maps = self.real_maps(batch, fakes.fake_B)
        for kind in self.seg_kinds:
            D_seg = getattr(self, self._seg_discriminator_name(kind))
            pooled = self.pools[f"seg_{kind}"].query(fakes.fake_B_maps[kind])
            terms["D_" + _SEG_LOSS_NAMES[kind]] = discriminator_loss(gan, D_seg(real_maps[kind]), D_seg(pooled))
        return self._with_total(terms)


class Pix2PixAdvSeg(AdvSegModel):
    """Paired: G (sketch -> photo), D on concat(A, B), + D_M / D_Bin on concat(real_B, map).

    Generator loss: GAN(D(A, G(A))) + lambda_l1 |G(A) - B| + lambda_seg GAN(D_K(real_B, map_K(G(A))))
    for each segmentation discriminator K. As in the paper's Pix2Pix variant, the segmentation
    discriminators are conditioned on the real photo: they see (3 + 135) or (3 + 3) channels.
    """

    name = "pix2pix"
    generator_names = ("G",)
    image_discriminator_names = ("D",)
    paired = True

    def __init__(self, config: Pix2PixConfig | None = None, seg: nn.Module | None = None, pool_seed: int = 0) -> None:
        super().__init__(config or Pix2PixConfig(), seg, pool_seed)
        c = self.config
        self.G = init_weights(define_generator(c.arch, c.sketch_channels, c.photo_channels, c.ngf, c.norm, c.dropout),
                              c.init_type, c.init_gain)
        self.D = init_weights(define_discriminator(c.sketch_channels + c.photo_channels, c.ndf, c.n_layers_d, c.norm),
                              c.init_type, c.init_gain)
        self._add_pool("fake_AB")
        self._build_seg_discriminators(conditioning_channels=c.photo_channels)

    def translate(self, batch: Batch) -> Pix2PixFakes:
        fake_B = self.G(batch["real_A"])
        return Pix2PixFakes(fake_B=fake_B, fake_B_maps=self.fake_maps(fake_B))

    def _conditioned(self, photo: Tensor, seg_map: Tensor) -> Tensor:
        return torch.cat([photo, seg_map.to(photo.dtype)], 1)

    def generator_losses(self, batch: Batch, fakes: Pix2PixFakes | None = None,
                         freeze_discriminators: bool = True) -> dict[str, Tensor]:
        """Weighted terms G_GAN, G_L1, (G_M, G_Bin) and their 'total'."""
        if freeze_discriminators:
            self.set_discriminators_trainable(False)
        c, gan = self.config, self.criterion_gan
        fakes = fakes if fakes is not None else self.translate(batch)
        real_A, real_B = batch["real_A"], batch["real_B"]
        terms = {
            "G_GAN": gan(self.D(torch.cat([real_A, fakes.fake_B], 1)), True),
            "G_L1": weighted_l1(fakes.fake_B, real_B, c.lambda_l1),
        }
        for kind in self.seg_kinds:
            D_seg = getattr(self, self._seg_discriminator_name(kind))
            conditioned = self._conditioned(real_B, fakes.fake_B_maps[kind])
            terms["G_" + _SEG_LOSS_NAMES[kind]] = c.lambda_seg * gan(D_seg(conditioned), True)
        return self._with_total(terms)

    def discriminator_losses(self, batch: Batch, fakes: Pix2PixFakes | None = None) -> dict[str, Tensor]:
        """Terms D, (D_M, D_Bin), each 0.5 * (real + pooled fake), and their 'total'."""
        self.set_discriminators_trainable(True)
        if fakes is None:
            with torch.no_grad():
                fakes = self.translate(batch)
        gan, real_A, real_B = self.criterion_gan, batch["real_A"], batch["real_B"]
        fake_AB = self.pools["fake_AB"].query(torch.cat([real_A, fakes.fake_B], 1))
        terms = {"D": discriminator_loss(gan, self.D(torch.cat([real_A, real_B], 1)), self.D(fake_AB))}
        real_maps = self.real_maps(batch, fakes.fake_B)
        for kind in self.seg_kinds:
            D_seg = getattr(self, self._seg_discriminator_name(kind))
            real = self._conditioned(real_B, real_maps[kind])
            fake = self.pools[f"seg_{kind}"].query(self._conditioned(real_B, fakes.fake_B_maps[kind]))
            terms["D_" + _SEG_LOSS_NAMES[kind]] = discriminator_loss(gan, D_seg(real), D_seg(fake))
        return self._with_total(terms)


class AutoPainterAdvSeg(Pix2PixAdvSeg):
    """Pix2Pix's G and D, with AutoPainter's generator loss (+ D_M / D_Bin as in Pix2Pix + AdvSegLoss).

    Generator loss: GAN(D(A, G(A))) + lambda_l1 |G(A) - B| + lambda_tv TV(G(A)) + lambda_feat
    mean|VGG(G(A)) - VGG(B)| (+ the segmentation terms). ``perceptual`` is the frozen VGG16 feature
    network; like Seg it is held, not registered, so checkpoints and colorize never need it.
    """

    name = "autopainter"
    uses_perceptual = True

    def __init__(self, config: AutoPainterConfig | None = None, seg: nn.Module | None = None, pool_seed: int = 0,
                 perceptual: nn.Module | None = None) -> None:
        config = config or AutoPainterConfig()
        super().__init__(config, seg, pool_seed)
        if config.lambda_feat > 0 and perceptual is None:
            raise ValueError("lambda_feat > 0 needs the VGG feature network (perceptual=None was given)")
        object.__setattr__(self, "_perceptual", perceptual)  # deliberately not a registered sub-module

    def generator_losses(self, batch: Batch, fakes: Pix2PixFakes | None = None,
                         freeze_discriminators: bool = True) -> dict[str, Tensor]:
        """Weighted terms G_GAN, G_L1, (G_M, G_Bin), G_TV, G_feat and their 'total'."""
        c = self.config
        fakes = fakes if fakes is not None else self.translate(batch)
        terms = super().generator_losses(batch, fakes, freeze_discriminators)
        del terms["total"]
        terms["G_TV"] = c.lambda_tv * total_variation(fakes.fake_B)
        if c.lambda_feat > 0:
            with torch.no_grad():
                target = self.perceptual(batch["real_B"])
            terms["G_feat"] = weighted_l1(self.perceptual(fakes.fake_B), target, c.lambda_feat)
        return self._with_total(terms)


MODELS: dict[str, tuple[type, type[AdvSegModel]]] = {
    "cyclegan": (CycleGANConfig, CycleGANAdvSeg),
    "pix2pix": (Pix2PixConfig, Pix2PixAdvSeg),
    "autopainter": (AutoPainterConfig, AutoPainterAdvSeg),
}


def model_config(model: str, **options: Any) -> CycleGANConfig | Pix2PixConfig | AutoPainterConfig:
    """The validated config of ``model`` with its public-code defaults, overridden by ``options``.

    The CLI passes only the options the user gave, so each model keeps its own defaults (e.g.
    lambda_seg 10 for CycleGAN, 100 for Pix2Pix).
    """
    check_choice("--model", model, MODELS)
    config_type = MODELS[model][0]
    known = {field.name for field in dataclasses.fields(config_type)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise AdvsegError(f"--model {model}: options {', '.join(_flag(u) for u in unknown)} do not apply to it")
    return config_type(**options).validate()


def build_model(model: str, config: Any = None, seg: nn.Module | None = None, pool_seed: int = 0,
                perceptual: nn.Module | None = None) -> AdvSegModel:
    """Build ``model`` ('cyclegan' | 'pix2pix' | 'autopainter') with ``config`` (its defaults when None).

    ``perceptual`` (the frozen VGG16 features) is for AutoPainter only.
    """
    check_choice("--model", model, MODELS)
    config_type, model_type = MODELS[model]
    config = config if config is not None else config_type()
    if type(config) is not config_type:
        raise TypeError(f"model {model!r} takes a {config_type.__name__}, got {type(config).__name__}")
    if model_type.uses_perceptual:
        return model_type(config, seg, pool_seed, perceptual)
    if perceptual is not None:
        raise TypeError(f"model {model!r} has no feature loss; perceptual must be None")
    return model_type(config, seg, pool_seed)

