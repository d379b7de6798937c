"""CycleGAN and Pix2Pix with the adversarial segmentation loss (Hicsonmez et al., ICIP 2021), the
paper's paired baseline AutoPainter (Liu et al., 2017), which takes the same segmentation terms, and the
one-sided CUT / FastCUT (Park et al., ECCV 2020) with the same terms as CycleGAN's.

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

Real maps are one-hot (or binary) maps of the cached labels in every mode, or, with ``seg_real='soft'``,
Seg's class probabilities of the real photo. The other variants of the segmentation terms (augmentation,
warm-up, adaptive balance, semantic consistency) are described in ``advseg_cli.models.seg_variants``.
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
from advseg_cli.models.patchnce import PatchProjection, encoder_features, parse_layers, patch_nce_loss
from advseg_cli.models.seg_variants import (
    SEG_REAL_MODES,
    FeatureProjection,
    SegAugment,
    balanced_weight,
    last_layer_weight,
    parse_augment_policy,
    semantic_consistency,
    warmup_scale,
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


def binarized_straight_through(sketch: Tensor) -> Tensor:
    """A sketch in [-1, 1] thresholded at mid-grey (0) to black and white; the gradient passes as identity."""
    return straight_through(torch.where(sketch > 0, 1.0, -1.0).to(sketch.dtype), sketch)


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
    _validate_seg_variants(config)


def _validate_seg_variants(config: Any) -> None:
    """The variants act on the segmentation discriminators: refuse them where there are none to act on."""
    check_choice("--seg-real", config.seg_real, SEG_REAL_MODES)
    parse_augment_policy(config.seg_augment)
    for field in ("seg_warmup", "seg_balance"):
        if getattr(config, field) < 0:
            raise AdvsegError(f"{_flag(field)}: cannot be negative, got {getattr(config, field)}")
    given = [flag for flag, on in (("--seg-real soft", config.seg_real == "soft"),
                                   ("--seg-augment", bool(config.seg_augment)),
                                   ("--seg-warmup", config.seg_warmup > 0),
                                   ("--seg-balance", config.seg_balance > 0)) if on]
    if given and config.advseg == "none":
        raise AdvsegError(f"{', '.join(given)}: change the segmentation discriminators' terms, and --advseg none "
                          "has none; use --advseg multi, binary or both")
    if config.seg_features < 0:
        raise AdvsegError(f"--seg-features: a number of channels cannot be negative, got {config.seg_features}")
    if config.seg_features > 0 and "multi" not in _SEG_KINDS[config.advseg]:
        raise AdvsegError("--seg-features: changes what D_M judges, and --advseg "
                          f"{config.advseg} has no D_M; use --advseg multi or both")
    if config.seg_features > 0 and config.seg_grad == "straight":
        raise AdvsegError("--seg-features: features have no hard form for --seg-grad straight to stand in for; "
                          "use --seg-grad soft (or compat: no gradient)")
    if config.seg_balance > 0 and config.seg_grad == "compat":
        raise AdvsegError("--seg-balance: with --seg-grad compat the segmentation terms have no gradient to "
                          "balance; use --seg-grad soft or straight")


def _refuse_color_on_maps(config: Any) -> None:
    """Unpaired models' segmentation discriminators see maps alone, which have no colour to augment."""
    if "color" in parse_augment_policy(config.seg_augment):
        raise AdvsegError("--seg-augment color: this model's segmentation discriminators see maps alone (no "
                          "photo to recolour); use translation,cutout")


def _validate_consistency(config: Any) -> None:
    if config.seg_consistency < 0:
        raise AdvsegError(f"--seg-consistency: a loss weight cannot be negative, got {config.seg_consistency}")
    if config.seg_consistency > 0 and config.photo_channels != 3:
        raise AdvsegError(f"--seg-consistency: the segmentation network needs RGB photos (photo channels 3, got "
                          f"{config.photo_channels})")


def uses_segmenter(config: Any) -> bool:
    """Whether a model of this config needs the frozen Seg: segmentation discriminators, or the consistency term."""
    return config.advseg != "none" or getattr(config, "seg_consistency", 0.0) > 0


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
    cycle_noise: float = 0.0  # std of Gaussian noise on G_B's sketch before G_A reconstructs the photo (0: off)
    cycle_binarize: bool = False  # G_A reconstructs the photo from G_B's sketch thresholded at mid-grey (straight-through)
    pool_size: int = 50  # history of generated images (and maps) shown to the discriminators; 0: none
    advseg: str = "none"  # segmentation discriminators: none | multi (D_M) | binary (D_Bin) | both
    lambda_seg: float = 10.0  # weight of each segmentation discriminator's term in the generator loss
    seg_grad: str = "soft"  # maps of generated photos: soft (differentiable) | compat (hard, no gradient)
    seg_pool_dtype: str = "float16"  # storage dtype of the map pools (a 50-map 135-channel pool is large)
    seg_real: str = "hard"  # real photos' maps: hard (one-hot of the cached labels) | soft (Seg's probabilities)
    seg_augment: str = ""  # DiffAugment of the segmentation discriminators' inputs: translation,cutout[,color]
    seg_warmup: int = 0  # steps over which the segmentation terms' weight ramps up from 0
    seg_balance: float = 0.0  # > 0: segmentation gradient on G's last layer = this x the image GAN term's
    seg_features: int = 0  # > 0: D_M judges Seg's last features, projected to this many channels, not its map
    init_type: str = "normal"  # weight init: normal | xavier | kaiming | orthogonal
    init_gain: float = 0.02  # std of the normal init (scale for xavier / orthogonal)

    def validate(self) -> CycleGANConfig:
        _validate_common(self)
        _refuse_color_on_maps(self)
        if self.cycle_noise < 0:
            raise AdvsegError(f"--cycle-noise: a standard deviation cannot be negative, got {self.cycle_noise}")
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
    seg_real: str = "hard"  # real photos' maps: hard (one-hot of the cached labels) | soft (Seg's probabilities)
    seg_augment: str = ""  # DiffAugment of the segmentation discriminators' inputs: translation,cutout[,color]
    seg_warmup: int = 0  # steps over which the segmentation terms' weight ramps up from 0
    seg_balance: float = 0.0  # > 0: segmentation gradient on G's last layer = this x the image GAN term's
    seg_features: int = 0  # > 0: D_M judges Seg's last features, projected to this many channels, not its map
    seg_consistency: float = 0.0  # weight of CE(Seg(G(A)), real photo's labels): non-adversarial (CyCADA)
    init_type: str = "normal"  # weight init: normal | xavier | kaiming | orthogonal
    init_gain: float = 0.02  # std of the normal init (scale for xavier / orthogonal)

    def validate(self) -> Pix2PixConfig:
        _validate_common(self)
        _validate_consistency(self)
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
        _validate_consistency(self)
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
    discriminators_first: ClassVar[bool] = False  # the loop's order: D step before G step (CUT's public order)
    default_schedule: ClassVar[tuple[int, int]] = (100, 100)  # public epochs at the initial rate, then of decay

    def __init__(self, config: Any, seg: nn.Module | None, pool_seed: int) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.seg_kinds = _SEG_KINDS[config.advseg]
        if uses_segmenter(config) and seg is None:
            raise ValueError(f"advseg={config.advseg!r} (or seg_consistency) needs a segmentation network "
                             "(seg=None was given)")
        self.seg_augment = SegAugment("")  # the policy is set with the segmentation discriminators
        self.step_count = 0  # steps finished before this one (the loop sets it: the warm-up reads it)
        self.last_seg_weight: Tensor | None = None  # this step's weight of the segmentation terms
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
        self.seg_augment = SegAugment(config.seg_augment, color_channels=conditioning_channels)
        if config.seg_features > 0:  # before D_M's own initialisation draws from the same generator
            self.feature_projection = FeatureProjection(self.seg.feature_channels(), config.seg_features)
        for kind in self.seg_kinds:
            judged = config.seg_features if kind == "multi" and config.seg_features > 0 else _SEG_CHANNELS[kind]
            net = define_discriminator(conditioning_channels + judged, config.ndf, config.n_layers_d, config.norm)
            if kind == "multi" and config.seg_features == 0:
                self._skip_empty_map_channels(net, conditioning_channels)
            setattr(self, self._seg_discriminator_name(kind), init_weights(net, config.init_type, config.init_gain))
            self._add_pool(f"seg_{kind}", POOL_DTYPES[config.seg_pool_dtype])

    def _skip_empty_map_channels(self, net: nn.Module, conditioning_channels: int) -> None:
        """D_M's first layer skips the map channels that are zero (exact but for rounding; see
        ``NLayerDiscriminator.channels_to_keep``); the ones this Seg can never fill also in G's step."""
        net.skip_zero_channels = True
        used = self.seg.map_channels() if hasattr(self.seg, "map_channels") else None  # (geometry's stand-in has none)
        if used is not None:
            net.static_channels = torch.cat([torch.arange(conditioning_channels),
                                             conditioning_channels + used.cpu().long()])

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

    def late_parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameter groups created after construction (CUT's projection head, on the first batch), by name.

        The loop gives each its own optimizer and scheduler once it exists (empty for most models).
        """
        return {}

    def data_dependent_initialize(self, batch: Batch) -> None:
        """Create what needs a batch to know its shape (CUT's projection head); nothing for most models."""

    def set_discriminators_trainable(self, flag: bool) -> None:
        """requires_grad of every discriminator (image and segmentation) on or off."""
        set_requires_grad(self.discriminator_modules(), flag)

    @property
    def photo_generator(self) -> nn.Module:
        """The sketch -> photo generator (what colorize runs)."""
        return getattr(self, self.generator_names[0])

    def set_step(self, step: int) -> None:
        """The number of steps finished before the coming one (the loop's position; resumes restore it)."""
        self.step_count = step

    def step_statistics(self) -> dict[str, Tensor]:
        """Values of this step worth a metrics column: the segmentation weight when warm-up or balance sets it."""
        varies = self.config.seg_warmup > 0 or self.config.seg_balance > 0
        if self.seg_kinds and varies and self.last_seg_weight is not None:
            return {"weight/seg": self.last_seg_weight.detach()}
        return {}

    def _weighted_seg_terms(self, raw: dict[str, Tensor], gan_term: Tensor) -> dict[str, Tensor]:
        """The segmentation terms times their weight: lambda_seg (or the adaptive balance) times the warm-up."""
        if not raw:
            return {}
        c = self.config
        if c.seg_balance > 0:
            seg_sum = torch.stack([term.float() for term in raw.values()]).sum()
            weight = balanced_weight(seg_sum, gan_term, last_layer_weight(self.photo_generator), c.seg_balance)
        else:
            weight = torch.tensor(float(c.lambda_seg), device=gan_term.device)
        weight = weight * warmup_scale(self.step_count, c.seg_warmup)
        self.last_seg_weight = weight
        return {name: weight.to(term.dtype) * term for name, term in raw.items()}

    # ----------------------------------------------------------------------------------------------
    # segmentation maps

    def fake_maps(self, fake_B: Tensor) -> dict[str, Tensor]:
        """Segmentation maps of generated photos, per kind; differentiable in ``soft`` mode only. With
        ``--seg-features`` D_M's input is Seg's projected features instead (differentiable likewise)."""
        if not self.seg_kinds:
            return {}
        map_kinds = self._class_map_kinds
        maps = self._fake_class_maps(fake_B, map_kinds) if map_kinds else {}
        if len(map_kinds) < len(self.seg_kinds):
            with torch.set_grad_enabled(self.config.seg_grad == "soft" and torch.is_grad_enabled()):
                maps["multi"] = self.projected_features(fake_B)
        return {kind: maps[kind].to(fake_B.dtype) for kind in self.seg_kinds}

    @property
    def _class_map_kinds(self) -> tuple[str, ...]:
        """The segmentation discriminators that judge class maps (D_M judges features with --seg-features)."""
        return tuple(kind for kind in self.seg_kinds if not (kind == "multi" and self.config.seg_features))

    def _fake_class_maps(self, fake_B: Tensor, kinds: tuple[str, ...]) -> dict[str, Tensor]:
        """The class maps (multi: [N,135,H,W], binary: [N,3,H,W]) of ``kinds`` as ``seg_grad`` makes them."""
        if self.config.seg_grad == "soft":
            probs = self.seg.soft_probs(fake_B)  # [N,135,H,W], gradient flows to fake_B
            maps = {"multi": probs, "binary": binary_from_probs(probs) if "binary" in kinds else None}
        elif self.config.seg_grad == "straight":
            labels, probs = self.seg.hard_and_soft(fake_B)  # one forward where the backend allows it
            maps = {"multi": straight_through(one_hot(labels), probs),
                    "binary": straight_through(binary_from_labels(labels), binary_from_probs(probs))
                    if "binary" in kinds else None}
        else:
            with torch.no_grad():
                labels = self.seg.hard_labels(fake_B.detach())  # [N,H,W] uint8
                maps = {"multi": one_hot(labels) if "multi" in kinds else None,
                        "binary": binary_from_labels(labels) if "binary" in kinds else None}
        return {kind: maps[kind] for kind in kinds}

    def projected_features(self, photos: Tensor) -> Tensor:
        """``--seg-features``: Seg's last feature map through the fixed projection, at the photos' size."""
        return self.feature_projection(self.seg.features(photos), photos.shape[-2:])

    def real_maps(self, batch: Batch, like: Tensor) -> dict[str, Tensor]:
        """One-hot / binary maps of the real photos' cached labels (or Seg's soft maps of them, ``seg_real``),
        matching ``like``'s size and dtype; with ``--seg-features``, D_M's input is Seg's projected
        features of the real photo, made at training time as the generated photo's are."""
        if not self.seg_kinds:
            return {}
        maps: dict[str, Tensor] = {}
        map_kinds = self._class_map_kinds
        if len(map_kinds) < len(self.seg_kinds):
            with torch.no_grad():
                maps["multi"] = self.projected_features(batch["real_B"])
        if map_kinds and self.config.seg_real == "soft":
            with torch.no_grad():
                probs = self.seg.soft_probs(batch["real_B"])
            maps.update({kind: probs if kind == "multi" else binary_from_probs(probs) for kind in map_kinds})
        elif map_kinds:
            maps.update(self._hard_real_maps(batch, like, map_kinds))
        return {kind: maps[kind].to(like.dtype) for kind in self.seg_kinds}

    def _hard_real_maps(self, batch: Batch, like: Tensor, kinds: tuple[str, ...]) -> dict[str, Tensor]:
        """One-hot / binary maps of the cached labels of the real photos."""
        labels = batch.get("real_B_labels")
        if labels is None:
            raise ValueError(f"advseg={self.config.advseg!r}: the batch needs 'real_B_labels' [N,H,W]")
        if labels.shape != (like.shape[0], *like.shape[2:]):
            raise ValueError(f"real_B_labels has shape {tuple(labels.shape)}, the photos are {tuple(like.shape)}")
        makers = {"multi": one_hot, "binary": binary_from_labels}
        return {kind: makers[kind](labels) for kind in kinds}

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

    def _map_generator_terms(self, fake_maps: dict[str, Tensor], gan_term: Tensor) -> dict[str, Tensor]:
        """G_M / G_Bin of the unpaired models, whose map discriminators see the generated photo's maps alone."""
        raw = {}
        for kind in self.seg_kinds:
            D_seg = getattr(self, self._seg_discriminator_name(kind))
            raw["G_" + _SEG_LOSS_NAMES[kind]] = self.criterion_gan(D_seg(self.seg_augment(fake_maps[kind])), True)
        return self._weighted_seg_terms(raw, gan_term)

    def _map_discriminator_terms(self, real_maps: dict[str, Tensor], fake_maps: dict[str, Tensor]) -> dict[str, Tensor]:
        """D_M / D_Bin of the unpaired models: real photos' maps against pooled maps of generated photos."""
        terms = {}
        for kind in self.seg_kinds:
            D_seg = getattr(self, self._seg_discriminator_name(kind))
            pooled = self.pools[f"seg_{kind}"].query(fake_maps[kind])
            real, fake = self.seg_augment.pair(real_maps[kind], pooled)
            terms["D_" + _SEG_LOSS_NAMES[kind]] = discriminator_loss(self.criterion_gan, D_seg(real), D_seg(fake))
        return terms

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
        return CycleGANFakes(fake_B=fake_B, rec_A=self.G_B(fake_B), fake_A=fake_A,
                             rec_B=self.G_A(self._sketch_for_cycle(fake_A)), fake_B_maps=self.fake_maps(fake_B))

    def _sketch_for_cycle(self, fake_A: Tensor) -> Tensor:
        """G_B's sketch as G_A reads it in the photo cycle: binarised (``cycle_binarize``), then with
        Gaussian noise on top (``cycle_noise``).

        Without them the cycle rewards G_B for drawing a code of the photo into its sketches (faint
        marks, grey levels and textures HED never draws) and G_A learns to read that code instead of
        sketches (Chu et al., "CycleGAN, a master of steganography", 2017). Noise drowns what is faint;
        binarising, as the real sketches are binary, removes every grey level, and its straight-through
        gradient still trains G_B through the cycle. The noise is drawn from the global RNG, so a
        resumed run draws the same, and only in training; binarising is deterministic and always on.
        """
        sketch = binarized_straight_through(fake_A) if self.config.cycle_binarize else fake_A
        if not self.training or self.config.cycle_noise <= 0:
            return sketch
        return sketch + self.config.cycle_noise * torch.randn_like(sketch)

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
        terms.update(self._map_generator_terms(fakes.fake_B_maps, terms["G_A"]))
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
        terms.update(self._map_discriminator_terms(real_maps, fakes.fake_B_maps))
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
        raw = {}
        for kind in self.seg_kinds:
            D_seg = getattr(self, self._seg_discriminator_name(kind))
            conditioned = self._conditioned(real_B, fakes.fake_B_maps[kind])
            raw["G_" + _SEG_LOSS_NAMES[kind]] = gan(D_seg(self.seg_augment(conditioned)), True)
        terms.update(self._weighted_seg_terms(raw, terms["G_GAN"]))
        if c.seg_consistency > 0:
            terms["G_SegCE"] = c.seg_consistency * self._consistency(batch, fakes)
        return self._with_total(terms)

    def _consistency(self, batch: Batch, fakes: Pix2PixFakes) -> Tensor:
        """Cross-entropy of Seg's map of G(A) against the real photo's cached labels."""
        labels = batch.get("real_B_labels")
        if labels is None:
            raise ValueError("seg_consistency: the batch needs 'real_B_labels' [N,H,W]")
        c = self.config  # fake_maps made these probabilities (D_M's input, unless it judges features)
        reusable = c.seg_grad == "soft" and "multi" in self.seg_kinds and c.seg_features == 0
        probs = fakes.fake_B_maps["multi"] if reusable else self.seg.soft_probs(fakes.fake_B)
        return semantic_consistency(probs, labels)

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
            real, fake = self.seg_augment.pair(real, fake)
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


@dataclasses.dataclass(frozen=True)
class CUTConfig:
    """CUT (+ AdvSegLoss); defaults are the public CUT code's (docs/training.md names the file of each).

    ``nce_layers`` are indices into our ResNet generator's ``model`` Sequential. The public default
    '0,4,8,12,16' counts layers of its anti-aliased generator and means, in its authors' words, "the pixel
    layer, output of downsampling conv layers, and output of resnet layers" (the 1st and 5th block). Our
    generator (CycleGAN's, stride-2 convolutions without blur) has those layers at 0, 4, 7, 10 and 14.
    """

    arch: str = "resnet_9blocks"  # generator G: resnet_9blocks | resnet_6blocks (the NCE layers need a ResNet)
    ngf: int = 64  # generator width
    ndf: int = 64  # discriminator width
    n_layers_d: int = 3  # PatchGAN stride-2 layers (70x70 patches; the public netD 'basic')
    norm: str = "instance"  # normalisation of G and D (public normG, normD: instance)
    dropout: bool = False  # dropout in G's residual blocks (public no_dropout True)
    sketch_channels: int = 3  # channels of domain A (sketches gray-replicated to RGB, public input_nc 3)
    photo_channels: int = 3  # channels of domain B
    gan_mode: str = "lsgan"  # adversarial loss (public gan_mode lsgan)
    lambda_gan: float = 1.0  # weight of GAN(D(G(A))) in G's loss (public lambda_GAN)
    lambda_nce: float = 1.0  # weight of the PatchNCE loss (public lambda_NCE: CUT 1, FastCUT 10); 0: off
    nce_idt: bool = True  # also PatchNCE(B, G(B)), each term weighted 0.5 (public nce_idt: CUT on, FastCUT off)
    nce_layers: str = "0,4,7,10,14"  # G layers whose features PatchNCE compares (public '0,4,8,12,16', see above)
    num_patches: int = 256  # patches sampled per layer and image (public num_patches)
    nce_t: float = 0.07  # temperature of the PatchNCE logits (public nce_T)
    netf_nc: int = 256  # output width of the projection MLPs (public netF_nc, netF mlp_sample)
    flip_equivariance: bool = False  # flip the input at random, flip the output's features back (FastCUT)
    pool_size: int = 0  # history of generated images for D (public CUT: 0, no pool)
    advseg: str = "none"  # segmentation discriminators: none | multi (D_M) | binary (D_Bin) | both
    lambda_seg: float = 10.0  # weight of each segmentation term (no public value: CycleGAN + AdvSegLoss's 10)
    seg_grad: str = "soft"  # maps of generated photos: soft (differentiable) | compat (hard, no gradient)
    seg_pool_dtype: str = "float16"  # storage dtype of the map pools (used only when pool_size > 0)
    seg_real: str = "hard"  # real photos' maps: hard (one-hot of the cached labels) | soft (Seg's probabilities)
    seg_augment: str = ""  # DiffAugment of the segmentation discriminators' inputs: translation,cutout[,color]
    seg_warmup: int = 0  # steps over which the segmentation terms' weight ramps up from 0
    seg_balance: float = 0.0  # > 0: segmentation gradient on G's last layer = this x the image GAN term's
    seg_features: int = 0  # > 0: D_M judges Seg's last features, projected to this many channels, not its map
    init_type: str = "xavier"  # weight init of G, D and the projection head (public init_type xavier)
    init_gain: float = 0.02  # its gain (public init_gain)

    def validate(self) -> CUTConfig:
        _validate_common(self)
        _refuse_color_on_maps(self)
        if not self.arch.startswith("resnet"):
            raise AdvsegError(f"--arch {self.arch}: CUT's PatchNCE reads the encoder layers of a ResNet generator; "
                              "use --arch resnet_9blocks or resnet_6blocks")
        try:
            layers = parse_layers(self.nce_layers)
        except ValueError as exc:
            raise AdvsegError(f"--nce-layers: {exc}") from None
        encoder_layers = 10 + (9 if self.arch == "resnet_9blocks" else 6)  # stem + 2 downsamplings + the blocks
        if layers[-1] >= encoder_layers:
            raise AdvsegError(f"--nce-layers: {self.arch}'s encoder has layers 0..{encoder_layers - 1}, "
                              f"got {layers[-1]}")
        for field in ("num_patches", "netf_nc"):
            if getattr(self, field) < 1:
                raise AdvsegError(f"{_flag(field)}: must be at least 1, got {getattr(self, field)}")
        if self.nce_t <= 0:
            raise AdvsegError(f"--nce-t: the temperature must be positive, got {self.nce_t}")
        if self.nce_idt and self.lambda_nce > 0 and self.sketch_channels != self.photo_channels:
            raise AdvsegError(f"--nce-idt: the identity term feeds photos to G, which needs as many sketch as photo "
                              f"channels ({self.sketch_channels} vs {self.photo_channels}); use --no-nce-idt")
        return self


@dataclasses.dataclass(frozen=True)
class FastCUTConfig(CUTConfig):
    """FastCUT: CUT with the public ``--CUT_mode FastCUT`` defaults (NCE weight 10, no identity term, flips)."""

    lambda_nce: float = 10.0  # public FastCUT lambda_NCE
    nce_idt: bool = False  # public FastCUT nce_idt
    flip_equivariance: bool = True  # public FastCUT flip_equivariance

    def validate(self) -> FastCUTConfig:
        super().validate()
        return self


@dataclasses.dataclass
class CUTFakes:
    """G's outputs of one step (graph attached), shared by the G and D losses."""

    fake_B: Tensor  # G(real_A), of the flipped sketch when ``flipped``
    idt_B: Tensor | None  # G(real_B) (flipped likewise) when the identity NCE term is on
    flipped: bool  # this step's flip-equivariance coin: the inputs were flipped left-right
    fake_B_maps: dict[str, Tensor]  # "multi" / "binary" segmentation maps of fake_B


class CUTAdvSeg(AdvSegModel):
    """Unpaired, one-sided: G (sketch -> photo), D (photos), the projection head F, + D_M / D_Bin on maps alone.

    Generator loss: lambda_gan GAN(D(G(A))) + lambda_nce PatchNCE(A, G(A)) (with the identity term: 0.5 each
    of PatchNCE(A, G(A)) and PatchNCE(B, G(B))) + lambda_seg GAN(D_K(map_K(G(A)))) per segmentation
    discriminator K, as in CycleGAN + AdvSegLoss. PatchNCE averages its layers' mean patch losses. Order of
    a step as in the public code: D first, then G and F together.
    """

    name = "cut"
    generator_names = ("G",)
    image_discriminator_names = ("D",)
    paired = False
    discriminators_first = True
    default_schedule = (200, 200)  # public n_epochs, n_epochs_decay

    def __init__(self, config: CUTConfig | None = None, seg: nn.Module | None = None, pool_seed: int = 0) -> None:
        super().__init__(config or self._default_config(), seg, pool_seed)
        c = self.config
        self.nce_layer_ids = parse_layers(c.nce_layers)
        self.G = init_weights(define_generator(c.arch, c.sketch_channels, c.photo_channels, c.ngf, c.norm, c.dropout),
                              c.init_type, c.init_gain)
        self.D = init_weights(define_discriminator(c.photo_channels, c.ndf, c.n_layers_d, c.norm),
                              c.init_type, c.init_gain)
        self.F = PatchProjection(c.netf_nc, c.init_type, c.init_gain)  # empty until the first batch
        self._add_pool("fake_B")
        self._build_seg_discriminators(conditioning_channels=0)

    @staticmethod
    def _default_config() -> CUTConfig:
        return CUTConfig()

    # -- the lazily created projection head
    def data_dependent_initialize(self, batch: Batch) -> None:
        """Create F's MLPs from the widths of G's encoder features on this batch (the public code's first batch)."""
        if self.config.lambda_nce > 0 and not self.F.initialised:
            with torch.no_grad():
                self.F.create(encoder_features(self.G, batch["real_A"][:1], self.nce_layer_ids))

    def late_parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """F gets its own optimizer once it exists and the NCE loss is on (public: only when lambda_NCE > 0)."""
        if self.config.lambda_nce > 0 and self.F.initialised:
            return {"F": list(self.F.parameters())}
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """A checkpoint holds F's weights; build its MLPs from their shapes first (a resume has no batch yet)."""
        if not self.F.initialised and any(key.startswith("F.mlps.") for key in state_dict):
            self.F.create_from_state(state_dict, "F.", next(self.G.parameters()).device)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # -- one step
    def translate(self, batch: Batch) -> CUTFakes:
        """G on the sketches (and the photos, for the identity term) in one batch, as the public forward."""
        c, real_A = self.config, batch["real_A"]
        identity = c.nce_idt and c.lambda_nce > 0
        real = torch.cat([real_A, batch["real_B"]], 0) if identity else real_A
        flipped = self.training and c.flip_equivariance and bool(torch.rand(()) < 0.5)  # global RNG: resumable
        if flipped:
            real = torch.flip(real, [3])
        fake = self.G(real)
        fake_B = fake[:real_A.shape[0]]
        return CUTFakes(fake_B=fake_B, idt_B=fake[real_A.shape[0]:] if identity else None, flipped=flipped,
                        fake_B_maps=self.fake_maps(fake_B))

    def patch_nce(self, source: Tensor, output: Tensor, flipped: bool) -> Tensor:
        """PatchNCE between G's encoder features of ``source`` (keys) and of ``output`` (queries), layer mean.

        With ``flipped``, ``output`` was made from the flipped source: its features are flipped back so that
        positions correspond (flip equivariance). The sampled positions come from the keys' maps.
        """
        queries = encoder_features(self.G, output, self.nce_layer_ids)
        if flipped:
            queries = [torch.flip(feature, [3]) for feature in queries]
        keys = encoder_features(self.G, source, self.nce_layer_ids)
        positions = self.F.sample_positions(keys, self.config.num_patches)
        projected_keys = self.F(keys, positions)
        projected_queries = self.F(queries, positions)
        losses = [patch_nce_loss(q, k, source.shape[0], self.config.nce_t).mean()
                  for q, k in zip(projected_queries, projected_keys)]
        return torch.stack(losses).mean()

    def generator_losses(self, batch: Batch, fakes: CUTFakes | None = None,
                         freeze_discriminators: bool = True) -> dict[str, Tensor]:
        """Weighted terms G_GAN, NCE, (NCE_Y), (G_M, G_Bin) and their 'total'."""
        if freeze_discriminators:
            self.set_discriminators_trainable(False)
        c, gan = self.config, self.criterion_gan
        fakes = fakes if fakes is not None else self.translate(batch)
        terms = {"G_GAN": c.lambda_gan * gan(self.D(fakes.fake_B), True)}
        if c.lambda_nce > 0:
            weight = c.lambda_nce * (0.5 if fakes.idt_B is not None else 1.0)
            terms["NCE"] = weight * self.patch_nce(batch["real_A"], fakes.fake_B, fakes.flipped)
            if fakes.idt_B is not None:
                terms["NCE_Y"] = weight * self.patch_nce(batch["real_B"], fakes.idt_B, fakes.flipped)
        terms.update(self._map_generator_terms(fakes.fake_B_maps, terms["G_GAN"]))
        return self._with_total(terms)

    def discriminator_losses(self, batch: Batch, fakes: CUTFakes | None = None) -> dict[str, Tensor]:
        """Terms D, (D_M, D_Bin), each 0.5 * (real + pooled fake), and their 'total'."""
        self.set_discriminators_trainable(True)
        if fakes is None:
            with torch.no_grad():
                fakes = self.translate(batch)
        gan, real_B = self.criterion_gan, batch["real_B"]
        terms = {"D": discriminator_loss(gan, self.D(real_B), self.D(self.pools["fake_B"].query(fakes.fake_B)))}
        real_maps = self.real_maps(batch, fakes.fake_B)
        terms.update(self._map_discriminator_terms(real_maps, fakes.fake_B_maps))
        return self._with_total(terms)


class FastCUTAdvSeg(CUTAdvSeg):
    """FastCUT: the same model with FastCUT's defaults (FastCUTConfig) and its shorter public schedule."""

    name = "fastcut"
    default_schedule = (150, 50)  # public FastCUT n_epochs, n_epochs_decay

    @staticmethod
    def _default_config() -> CUTConfig:
        return FastCUTConfig()


MODELS: dict[str, tuple[type, type[AdvSegModel]]] = {
    "cyclegan": (CycleGANConfig, CycleGANAdvSeg),
    "pix2pix": (Pix2PixConfig, Pix2PixAdvSeg),
    "autopainter": (AutoPainterConfig, AutoPainterAdvSeg),
    "cut": (CUTConfig, CUTAdvSeg),
    "fastcut": (FastCUTConfig, FastCUTAdvSeg),
}


def model_config(model: str, **options: Any) -> CycleGANConfig | Pix2PixConfig | AutoPainterConfig | CUTConfig:
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
    """Build ``model`` (a name of MODELS: cyclegan, pix2pix, autopainter, cut, fastcut) with ``config`` (its
    defaults when None).

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

