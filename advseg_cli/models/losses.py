"""The losses of CycleGAN / Pix2Pix + AdvSegLoss: the adversarial (GAN) loss and weighted L1 terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advseg_cli.models.networks import check_choice

GAN_MODES: tuple[str, ...] = ("lsgan", "vanilla")


class GANLoss(nn.Module):
    """Adversarial loss on a discriminator's logit map, against an all-real or all-fake target.

    ``lsgan`` (least squares, Mao et al. 2017; CycleGAN's choice): mean((D(x) - target)^2).
    ``vanilla`` (Goodfellow et al. 2014; pix2pix's choice): binary cross-entropy of sigmoid(D(x)).
    The public code puts a Sigmoid layer in the discriminator and uses BCELoss; we keep the
    discriminator's raw logits and use BCE-with-logits, the same function but numerically stable
    and allowed under autocast.

    The targets are registered buffers, so they follow ``.to(device)`` and are broadcast to the
    prediction's shape without allocating a target tensor per call. They are not persistent: a loss
    has nothing to save in a checkpoint.
    """

    def __init__(self, mode: str = "lsgan", real_label: float = 1.0, fake_label: float = 0.0) -> None:
        super().__init__()
        check_choice("--gan-mode", mode, GAN_MODES)
        self.mode = mode
        self.register_buffer("real_label", torch.tensor(real_label), persistent=False)
        self.register_buffer("fake_label", torch.tensor(fake_label), persistent=False)

    def target_like(self, prediction: Tensor, target_is_real: bool) -> Tensor:
        label = self.real_label if target_is_real else self.fake_label
        return label.to(prediction.dtype).expand_as(prediction)

    def forward(self, prediction: Tensor, target_is_real: bool) -> Tensor:
        """Scalar loss of the logit map ``prediction`` ([N,1,H',W']) against real (True) or fake (False)."""
        target = self.target_like(prediction, target_is_real)
        if self.mode == "lsgan":
            return F.mse_loss(prediction, target)
        return F.binary_cross_entropy_with_logits(prediction, target)


def weighted_l1(prediction: Tensor, target: Tensor, weight: float) -> Tensor:
    """``weight * mean|prediction - target|``: the cycle, identity and pix2pix reconstruction terms."""
    if prediction.shape != target.shape:
        raise ValueError(f"L1 between different shapes {tuple(prediction.shape)} and {tuple(target.shape)}")
    return F.l1_loss(prediction, target) * weight


def discriminator_loss(criterion: GANLoss, pred_real: Tensor, pred_fake: Tensor) -> Tensor:
    """0.5 * (GAN(D(real), real) + GAN(D(fake), fake)): the halving slows D relative to G, as in the papers."""
    return 0.5 * (criterion(pred_real, True) + criterion(pred_fake, False))


def total_variation(images: Tensor) -> Tensor:
    """Sum of squared differences between vertical and horizontal neighbours, per image, batch mean.

    AutoPainter's smoothness term. Its public code sums over the whole batch (``2 * (l2_loss(dy) +
    l2_loss(dx))``, batch 1); the per-image mean keeps the weight's meaning at other batch sizes. It is a
    sum, not a mean, so its size grows with the image: the public weight 1e-3 is for 256-512 px crops.
    """
    dy = images[:, :, 1:, :] - images[:, :, :-1, :]
    dx = images[:, :, :, 1:] - images[:, :, :, :-1]
    return (dy.float().pow(2).sum() + dx.float().pow(2).sum()) / images.shape[0]
