"""GAN and L1 losses against their closed forms."""

from __future__ import annotations

import pytest
import torch

from advseg_cli.errors import AdvsegError
from advseg_cli.models.losses import GANLoss, discriminator_loss, weighted_l1


def test_lsgan_is_the_mean_squared_distance_to_the_target() -> None:
    prediction = torch.tensor([[[[0.0, 0.5], [2.0, -1.0]]]])
    loss = GANLoss("lsgan")
    assert loss(prediction, True).item() == pytest.approx(((0 - 1) ** 2 + 0.25 + 1 + 4) / 4)
    assert loss(prediction, False).item() == pytest.approx((0 + 0.25 + 4 + 1) / 4)


def test_vanilla_is_binary_cross_entropy_of_the_sigmoid() -> None:
    logits = torch.tensor([[[[0.0, 2.0], [-3.0, 1.0]]]])
    probability = torch.sigmoid(logits)
    loss = GANLoss("vanilla")
    assert loss(logits, True).item() == pytest.approx(float(-torch.log(probability).mean()), rel=1e-6)
    assert loss(logits, False).item() == pytest.approx(float(-torch.log(1 - probability).mean()), rel=1e-6)
    assert loss(torch.zeros(1, 1, 3, 3), True).item() == pytest.approx(float(torch.log(torch.tensor(2.0))))


def test_targets_are_non_persistent_buffers_that_follow_the_dtype() -> None:
    loss = GANLoss("lsgan")
    assert dict(loss.named_buffers()).keys() == {"real_label", "fake_label"}
    assert loss.state_dict() == {}  # nothing to save in a checkpoint
    half = torch.full((1, 1, 2, 2), 0.5, dtype=torch.bfloat16)
    assert loss.target_like(half, True).dtype == torch.bfloat16
    assert loss(half, True).item() == pytest.approx(0.25)


def test_gan_loss_refuses_unknown_modes() -> None:
    with pytest.raises(AdvsegError, match="lsgan, vanilla"):
        GANLoss("wgan")


def test_weighted_l1_and_discriminator_loss() -> None:
    a, b = torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5)
    assert weighted_l1(a, b, 10.0).item() == pytest.approx(5.0)
    with pytest.raises(ValueError, match="different shapes"):
        weighted_l1(a, b[:, :1], 1.0)
    gan = GANLoss("lsgan")
    real, fake = torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    # D is perfect on reals (0) and fully fooled by the fakes ((1-0)^2 = 1): 0.5 * (0 + 1).
    assert discriminator_loss(gan, real, fake).item() == pytest.approx(0.5)
