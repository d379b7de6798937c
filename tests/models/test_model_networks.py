"""Networks: shapes, output range, the PatchGAN's 70x70 receptive field, initialisation statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advseg_cli.errors import AdvsegError
from advseg_cli.models.networks import (
    GeneratorSpec,
    NLayerDiscriminator,
    define_discriminator,
    define_generator,
    init_weights,
    patchgan_output_size,
    patchgan_receptive_field,
    set_requires_grad,
)


@pytest.mark.parametrize("arch,size", [("resnet_9blocks", 32), ("resnet_6blocks", 40), ("unet_128", 128),
                                       ("unet_256", 256)])
def test_generators_keep_the_size_and_end_in_tanh(arch: str, size: int) -> None:
    torch.manual_seed(0)
    net = init_weights(define_generator(arch, 3, 3, ngf=2, norm="instance"), gain=1.0)  # large weights saturate
    out = net(torch.randn(2, 3, size, size) * 3)
    assert out.shape == (2, 3, size, size)
    assert out.abs().max() <= 1.0
    assert out.abs().max() > 0.99  # tanh really is the last layer: large pre-activations saturate near 1
    assert net.spec == GeneratorSpec(arch, 3, 3, 2, "instance", False)


def test_resnet_generator_channels_and_layout() -> None:
    net = define_generator("resnet_9blocks", 1, 3, ngf=4, norm="batch", dropout=True)
    assert net(torch.randn(2, 1, 16, 16)).shape == (2, 3, 16, 16)
    keys = net.state_dict()
    assert keys["model.1.weight"].shape == (4, 1, 7, 7)
    assert "model.1.bias" not in keys  # batch norm: no conv bias, as the CycleGAN code base
    assert keys["model.10.conv_block.6.weight"].shape == (16, 16, 3, 3)  # dropout shifts the 2nd conv to 6
    assert keys["model.26.weight"].shape == (3, 4, 7, 7) and "model.26.bias" in keys  # output conv, 17+9
    assert isinstance(net.model[27], nn.Tanh)


def test_patchgan_gives_30x30_at_256_and_6x6_at_64() -> None:
    assert patchgan_receptive_field(3) == 70
    assert patchgan_output_size(256) == 30 and patchgan_output_size(64) == 6
    net = define_discriminator(3, ndf=2, n_layers=3, norm="instance")
    assert net(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 6, 6)


def test_patchgan_output_pixel_sees_exactly_a_70x70_patch() -> None:
    """Measured, not computed: backprop one interior output logit and find the input pixels it depends on.

    No normalisation here (instance statistics would couple every pixel), so the support is the
    convolutional receptive field.
    """
    torch.manual_seed(0)
    net = init_weights(NLayerDiscriminator(1, ndf=2, n_layers=3, norm="none"), gain=0.5)
    image = torch.randn(1, 1, 128, 128, requires_grad=True)
    out = net(image)
    assert out.shape == (1, 1, 14, 14)
    out[0, 0, 6, 6].backward()
    rows, cols = torch.nonzero(image.grad[0, 0], as_tuple=True)
    assert int(rows.max() - rows.min() + 1) == 70
    assert int(cols.max() - cols.min() + 1) == 70


def test_init_weights_statistics() -> None:
    torch.manual_seed(0)
    net = init_weights(define_generator("resnet_6blocks", 3, 3, ngf=16, norm="batch"), "normal", 0.02)
    conv_weights = torch.cat([m.weight.detach().flatten() for m in net.modules()
                              if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    assert conv_weights.numel() > 100_000
    assert abs(float(conv_weights.std()) - 0.02) < 0.0005
    assert abs(float(conv_weights.mean())) < 0.0005
    biases = [m.bias for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None]
    assert biases and all(float(b.detach().abs().max()) == 0.0 for b in biases)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    bn_weights = torch.cat([m.weight.detach() for m in norms])
    assert abs(float(bn_weights.mean()) - 1.0) < 0.005 and 0.015 < float(bn_weights.std()) < 0.025
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in norms)


def test_init_weights_gain_and_linear_layers() -> None:
    torch.manual_seed(1)
    linear = init_weights(nn.Sequential(nn.Linear(400, 500)), "normal", 0.1)[0]
    assert abs(float(linear.weight.detach().std()) - 0.1) < 0.003 and float(linear.bias.detach().abs().max()) == 0.0


def test_factories_refuse_unknown_names_with_the_valid_ones() -> None:
    with pytest.raises(AdvsegError, match="--arch.*resnet_9blocks"):
        define_generator("resnet_12blocks", 3, 3)
    with pytest.raises(AdvsegError, match="--norm.*instance"):
        define_discriminator(3, norm="group")
    with pytest.raises(AdvsegError, match="--init-type"):
        init_weights(nn.Linear(2, 2), "uniform")


def test_set_requires_grad() -> None:
    nets = [define_discriminator(3, ndf=2), None]
    set_requires_grad(nets, False)
    assert not any(p.requires_grad for p in nets[0].parameters())
    set_requires_grad(nets, True)
    assert all(p.requires_grad for p in nets[0].parameters())
