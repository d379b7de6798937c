"""The networks of CycleGAN / Pix2Pix (and so of AdvSegLoss): ResNet and U-Net generators, PatchGAN.

Architectures follow the CycleGAN / pix2pix code base (Zhu et al. 2017, Isola et al. 2017), on which
the AdvSegLoss public code is built. The module tree (and so the state-dict keys) of our generators
is the CycleGAN code base's: one ``model.N`` Sequential for the ResNet generator (Tanh included as its
last entry), nested ``model.model.N`` blocks for the U-Net, ``model.N`` for the PatchGAN. Public
checkpoints of that code base therefore load key for key; the AdvSegLoss repository's different
ResNet layout is remapped by :mod:`advseg_cli.models.public_checkpoints`.

Construction and weight initialisation are kept apart: the factories build networks with PyTorch's
default init, and :func:`init_weights` applies the normal(0, 0.02) init of the papers. The models in
:mod:`advseg_cli.models.advseg` call both.

Shapes: images are [N,C,H,W]; generators keep H,W (ResNet: H,W divisible by 4; U-Net-256: by 256,
U-Net-128: by 128); the PatchGAN maps [N,C,H,W] to [N,1,H',W'] logits, one per 70x70 patch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from advseg_cli.errors import AdvsegError, WeightsMismatchError

NORMS: tuple[str, ...] = ("instance", "batch", "none")
GENERATOR_ARCHS: tuple[str, ...] = ("resnet_9blocks", "resnet_6blocks", "unet_256", "unet_128")
PADDINGS: tuple[str, ...] = ("reflect", "replicate", "zero")
INIT_TYPES: tuple[str, ...] = ("normal", "xavier", "kaiming", "orthogonal")

# arch name -> (family, depth): number of residual blocks, or of U-Net down-samplings.
_ARCH_SHAPES: dict[str, tuple[str, int]] = {
    "resnet_9blocks": ("resnet", 9),
    "resnet_6blocks": ("resnet", 6),
    "unet_256": ("unet", 8),
    "unet_128": ("unet", 7),
}

NormFactory = Callable[[int], nn.Module]


def check_choice(option: str, value: str, choices: Iterable[str]) -> None:
    """Refuse an unknown option value with the list of valid ones (a user mistake, not a crash)."""
    choices = tuple(choices)
    if value not in choices:
        raise AdvsegError(f"{option}: unknown value {value!r}; use one of {', '.join(choices)}")


def norm_factory(norm: str) -> NormFactory:
    """``channels -> normalisation module``: the three normalisations of the CycleGAN code base.

    instance: InstanceNorm2d without affine parameters or running statistics (what CycleGAN uses);
    batch: BatchNorm2d with affine parameters and running statistics (what pix2pix uses);
    none: an Identity placeholder, so that module indices (and so state-dict keys) stay the same.
    """
    check_choice("--norm", norm, NORMS)
    if norm == "instance":
        return lambda channels: nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "batch":
        return lambda channels: nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    return lambda channels: nn.Identity()


def conv_bias(norm: str) -> bool:
    """Whether the convolutions before a norm layer carry a bias.

    Batch norm's own shift makes a bias redundant (the CycleGAN code base omits it); instance norm
    here has no affine shift, yet the code base keeps the bias there, and its checkpoints hold it.
    With no norm at all we keep the bias (the CycleGAN code base drops it, leaving a bias-free
    network; its rare ``--norm none`` checkpoints therefore do not load into ours).
    """
    return norm != "batch"


def _padding_layer(padding: str, width: int) -> tuple[list[nn.Module], int]:
    """Explicit padding module(s) plus the conv's own zero padding, for 'reflect'|'replicate'|'zero'."""
    check_choice("padding", padding, PADDINGS)
    if padding == "reflect":
        return [nn.ReflectionPad2d(width)], 0
    if padding == "replicate":
        return [nn.ReplicationPad2d(width)], 0
    return [], width


@dataclasses.dataclass(frozen=True)
class GeneratorSpec:
    """What a generator is, in the words of the command line (used in checkpoints and error messages)."""

    arch: str  # resnet_9blocks | resnet_6blocks | unet_256 | unet_128
    in_ch: int  # input image channels (3: sketches are fed as gray replicated to RGB)
    out_ch: int  # output image channels
    ngf: int = 64  # filters of the first conv layer
    norm: str = "instance"  # instance | batch | none
    dropout: bool = False  # dropout(0.5) in the residual blocks / inner U-Net blocks

    def options(self) -> str:
        """The options that build this generator, as a user would type them."""
        text = f"--arch {self.arch} --norm {self.norm} --ngf {self.ngf}"
        return text + (" --dropout" if self.dropout else " --no-dropout")


class ResnetBlock(nn.Module):
    """x + [pad, conv3x3, norm, ReLU, (dropout), pad, conv3x3, norm](x): a residual block at constant width.

    The Sequential's indices match the CycleGAN code base (conv at 1 and 5, or 1 and 6 with dropout).
    """

    def __init__(self, dim: int, norm: str, dropout: bool, padding: str = "reflect") -> None:
        super().__init__()
        make_norm, bias = norm_factory(norm), conv_bias(norm)
        layers: list[nn.Module] = []
        pad, conv_pad = _padding_layer(padding, 1)
        layers += pad + [nn.Conv2d(dim, dim, 3, padding=conv_pad, bias=bias), make_norm(dim), nn.ReLU(True)]
        if dropout:
            layers.append(nn.Dropout(0.5))
        pad, conv_pad = _padding_layer(padding, 1)
        layers += pad + [nn.Conv2d(dim, dim, 3, padding=conv_pad, bias=bias), make_norm(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """Johnson et al.'s image-transformation network.

    c7s1-ngf, d2ngf, d4ngf, n_blocks x R4ngf, u2ngf, ungf, c7s1-out, tanh.

    Index layout of ``model`` (n = n_blocks): 0 pad, 1 conv7x7, 2 norm, 3 ReLU; 4-6 and 7-9 the two
    stride-2 convs (+norm, ReLU); 10 .. 9+n the residual blocks; then two transposed convs (+norm, ReLU)
    at 10+n .. 15+n; 16+n pad, 17+n conv7x7 (with bias), 18+n tanh.
    """

    def __init__(self, in_ch: int, out_ch: int, ngf: int = 64, norm: str = "instance",
                 dropout: bool = False, n_blocks: int = 9, padding: str = "reflect") -> None:
        super().__init__()
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        make_norm, bias = norm_factory(norm), conv_bias(norm)
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7, padding=0, bias=bias),
                                   make_norm(ngf), nn.ReLU(True)]
        for level in range(2):  # encoder: two stride-2 convolutions, doubling the width
            width = ngf * 2 ** level
            layers += [nn.Conv2d(width, width * 2, 3, stride=2, padding=1, bias=bias),
                       make_norm(width * 2), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4, norm, dropout, padding) for _ in range(n_blocks)]
        for level in range(2):  # decoder: two stride-2 transposed convolutions, halving the width
            width = ngf * 2 ** (2 - level)
            layers += [nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1, output_padding=1,
                                          bias=bias),
                       make_norm(width // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_ch, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.n_blocks = n_blocks

    def forward(self, images: Tensor) -> Tensor:  # [N,in_ch,H,W] -> [N,out_ch,H,W] in (-1, 1)
        return self.model(images)


class UnetSkipBlock(nn.Module):
    """One level of the U-Net: x -> cat(x, up(sub(down(x)))) (the outermost level returns up(...) alone).

    ``model`` indices as in the CycleGAN code base: outermost [downconv, sub, ReLU, upconv, tanh];
    innermost [LeakyReLU, downconv, ReLU, upconv, upnorm]; others [LeakyReLU, downconv, downnorm, sub,
    ReLU, upconv, upnorm(, dropout)].
    """

    def __init__(self, outer_ch: int, inner_ch: int, norm: str, in_ch: int | None = None,
                 submodule: nn.Module | None = None, outermost: bool = False, innermost: bool = False,
                 dropout: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        make_norm, bias = norm_factory(norm), conv_bias(norm)
        in_ch = outer_ch if in_ch is None else in_ch
        downconv = nn.Conv2d(in_ch, inner_ch, 4, stride=2, padding=1, bias=bias)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_ch * 2, outer_ch, 4, stride=2, padding=1)
            layers = [downconv, submodule, nn.ReLU(True), upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_ch, outer_ch, 4, stride=2, padding=1, bias=bias)
            layers = [nn.LeakyReLU(0.2), downconv, nn.ReLU(True), upconv, make_norm(outer_ch)]
        else:
            upconv = nn.ConvTranspose2d(inner_ch * 2, outer_ch, 4, stride=2, padding=1, bias=bias)
            layers = [nn.LeakyReLU(0.2), downconv, make_norm(inner_ch), submodule,
                      nn.ReLU(True), upconv, make_norm(outer_ch)]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.outermost:
            return self.model(x)
        # The code base's in-place LeakyReLU overwrites x with LeakyReLU(x) before this concatenation;
        # the parent level applies ReLU to the concatenation next, and ReLU(LeakyReLU(x)) = ReLU(x),
        # so the plain (not in-place) form used here computes the same function.
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """The pix2pix U-Net: ``num_downs`` stride-2 levels (8 for 256 px, 7 for 128 px) with skip connections."""

    def __init__(self, in_ch: int, out_ch: int, num_downs: int, ngf: int = 64, norm: str = "batch",
                 dropout: bool = False) -> None:
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"num_downs must be >= 5, got {num_downs}")
        block = UnetSkipBlock(ngf * 8, ngf * 8, norm, innermost=True)
        for _ in range(num_downs - 5):  # the inner levels at width 8*ngf carry the dropout
            block = UnetSkipBlock(ngf * 8, ngf * 8, norm, submodule=block, dropout=dropout)
        block = UnetSkipBlock(ngf * 4, ngf * 8, norm, submodule=block)
        block = UnetSkipBlock(ngf * 2, ngf * 4, norm, submodule=block)
        block = UnetSkipBlock(ngf, ngf * 2, norm, submodule=block)
        self.model = UnetSkipBlock(out_ch, ngf, norm, in_ch=in_ch, submodule=block, outermost=True)
        self.num_downs = num_downs

    def forward(self, images: Tensor) -> Tensor:  # [N,in_ch,H,W] -> [N,out_ch,H,W] in (-1, 1)
        return self.model(images)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: a fully convolutional net giving one real/fake logit per (70x70 for n_layers=3) patch.

    C64 (no norm) - C128 - C256 (stride 2) - C512 (stride 1) - conv to 1 channel (stride 1); 4x4
    kernels, LeakyReLU 0.2. The output is a logit: GANLoss applies the sigmoid (vanilla) or none (LSGAN).
    """

    def __init__(self, in_ch: int, ndf: int = 64, n_layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        make_norm, bias = norm_factory(norm), conv_bias(norm)
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            previous, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(ndf * previous, ndf * mult, 4, stride=2, padding=1, bias=bias),
                       make_norm(ndf * mult), nn.LeakyReLU(0.2, True)]
        previous, mult = mult, min(2 ** n_layers, 8)
        layers += [nn.Conv2d(ndf * previous, ndf * mult, 4, stride=1, padding=1, bias=bias),
                   make_norm(ndf * mult), nn.LeakyReLU(0.2, True),
                   nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*layers)
        self.n_layers = n_layers
        self.skip_zero_channels = False  # D_M: its 135 map channels are mostly zeros (see forward)
        self.static_channels: Tensor | None = None  # input channels that can be non-zero, when known

    def forward(self, images: Tensor) -> Tensor:  # [N,in_ch,H,W] -> [N,1,H',W'] logits
        keep = self.channels_to_keep(images) if self.skip_zero_channels else None
        if keep is None:
            return self.model(images)
        first = self.model[0]
        out = F.conv2d(images.index_select(1, keep), first.weight.index_select(1, keep), first.bias,
                       first.stride, first.padding)
        for layer in self.model[1:]:
            out = layer(out)
        return out

    def channels_to_keep(self, images: Tensor) -> Tensor | None:
        """The input channels the first convolution needs, or None for all.

        A channel that is zero everywhere adds exactly nothing to the first layer's output and gets an
        exactly zero weight gradient, so dropping it changes only the order of the remaining sums (the
        output moves by float rounding, ~1e-7 relative). A one-hot map of a photo with a few classes
        of 135 is mostly such channels, and the first layer holds most of D_M's arithmetic.
        Without a gradient to the input, the zero channels are found in the data (NaN counts as
        non-zero); with one, a dropped channel's input gradient would be lost, so only the channels
        the segmenter can never fill (``static_channels``) are dropped.
        """
        if images.is_meta:  # the size check (training.geometry) runs on shapes alone
            return None
        if images.requires_grad:
            keep = self.static_channels
        else:
            keep = images.abs().amax((0, 2, 3)).ne(0).nonzero().flatten()  # NaN != 0: a NaN channel stays
        if keep is None or keep.numel() == images.shape[1]:
            return None
        if keep.numel() == 0:  # an all-zero input: one (zero) channel keeps the convolution well-formed
            keep = keep.new_zeros(1)
        return keep.to(images.device)


def patchgan_receptive_field(n_layers: int = 3) -> int:
    """Side of the input patch one PatchGAN output sees: 70 for n_layers=3 (hence "70x70 PatchGAN").

    Walk back from one output pixel: every layer has a 4x4 kernel; n_layers have stride 2, the last
    two stride 1. field = 1 + sum_l (k - 1) * prod(strides before l).
    """
    strides = [2] * n_layers + [1, 1]
    field, jump = 1, 1
    for stride in strides:
        field += 3 * jump
        jump *= stride
    return field


def patchgan_output_size(size: int, n_layers: int = 3) -> int:
    """Side of the PatchGAN's logit map for a ``size`` input: 30 at 256 px, 6 at 64 px (n_layers=3)."""
    for _ in range(n_layers):
        size = (size + 2 - 4) // 2 + 1
    for _ in range(2):
        size = size + 2 - 4 + 1
    return size


def define_generator(arch: str, in_ch: int, out_ch: int, ngf: int = 64, norm: str = "instance",
                     dropout: bool = False) -> nn.Module:
    """Build a generator by its command-line name (weights left at PyTorch's default: see init_weights).

    The returned network carries ``.spec`` (a :class:`GeneratorSpec`) for checkpoints and messages.
    """
    check_choice("--arch", arch, GENERATOR_ARCHS)
    family, depth = _ARCH_SHAPES[arch]
    if family == "resnet":
        net: nn.Module = ResnetGenerator(in_ch, out_ch, ngf, norm, dropout, n_blocks=depth)
    else:
        net = UnetGenerator(in_ch, out_ch, depth, ngf, norm, dropout)
    net.spec = GeneratorSpec(arch, in_ch, out_ch, ngf, norm, dropout)
    return net


def define_discriminator(in_ch: int, ndf: int = 64, n_layers: int = 3, norm: str = "instance") -> nn.Module:
    """Build a PatchGAN (70x70 with n_layers=3) over ``in_ch`` input channels."""
    norm_factory(norm)  # validates the name
    return NLayerDiscriminator(in_ch, ndf, n_layers, norm)


def init_weights(net: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """The papers' initialisation, applied in place: conv / linear weights ~ N(0, gain) (or xavier /
    kaiming / orthogonal), their biases 0; BatchNorm weights ~ N(1, gain), biases 0.

    Uses the global torch RNG, so ``torch.manual_seed`` before building makes it reproducible.
    """
    check_choice("--init-type", init_type, INIT_TYPES)

    def initialise(module: nn.Module) -> None:
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            if init_type == "normal":
                nn.init.normal_(module.weight, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(module.weight, gain=gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(module.weight, a=0, mode="fan_in")
            else:
                nn.init.orthogonal_(module.weight, gain=gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            nn.init.normal_(module.weight, 1.0, gain)
            nn.init.zeros_(module.bias)

    with torch.no_grad():
        net.apply(initialise)
    return net


def set_requires_grad(nets: Iterable[nn.Module | None], flag: bool) -> None:
    """Switch the gradients of whole networks on or off (discriminators are frozen in the generator
    step so that its backward pass computes no discriminator gradients it would throw away)."""
    for net in nets:
        if net is not None:
            for parameter in net.parameters():
                parameter.requires_grad_(flag)


def load_generator_weights(network: nn.Module, state: dict[str, Tensor], owner: str, hint: str = "") -> None:
    """Load ``state`` exactly (strict), or one line saying which weights do not fit which generator and why.

    Every reader of generator weights (checkpoints, exported folders) needs the same refusal, so a file made for
    other options is never half-loaded into a generator that then computes something else.
    """
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise WeightsMismatchError(f"{owner} do not fit {network.spec.options()}: {first}"
                                   + (f"; {hint}" if hint else "")) from None
