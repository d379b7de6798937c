"""--seg-grad straight: hard maps forward (as sharp as the real photos'), the soft map's gradient backward;
and the segmentation-gradient norm the training loop logs."""

from __future__ import annotations

import pytest
import torch

from advseg_cli.models.advseg import straight_through
from advseg_cli.segmentation.maps import binary_from_labels, binary_from_probs, one_hot
from advseg_cli.training.loop import segmentation_gradient_norm
from tests.models.conftest import PixelwiseSeg
from tests.models.test_advseg_models import SEG_TERMS, real_batch, tiny


@pytest.fixture(scope="module")
def seg() -> PixelwiseSeg:
    return PixelwiseSeg()


def test_straight_through_forwards_the_hard_values_and_backwards_the_soft_gradient() -> None:
    soft = torch.rand(2, 5, 3, 3, requires_grad=True)
    hard = torch.zeros(2, 5, 3, 3)
    hard[:, 0] = 1
    mixed = straight_through(hard, soft)
    assert torch.equal(mixed, hard)  # exactly, not approximately
    weights = torch.randn(2, 5, 3, 3)
    (mixed * weights).sum().backward()
    assert torch.equal(soft.grad, weights)  # d(mixed)/d(soft) is the identity


@pytest.mark.parametrize("model_name", ["cyclegan", "pix2pix"])
def test_straight_maps_equal_the_hard_maps_and_carry_the_soft_gradient(seg: PixelwiseSeg, model_name: str) -> None:
    model = tiny(model_name, seg, advseg="both", seg_grad="straight")
    batch = real_batch(seg)
    fakes = model.translate(batch)
    fake_B = fakes.fake_B.detach()
    labels = seg.hard_labels(fake_B)
    assert torch.equal(fakes.fake_B_maps["multi"], one_hot(labels))
    assert torch.equal(fakes.fake_B_maps["binary"], binary_from_labels(labels))
    assert fakes.fake_B_maps["multi"].requires_grad
    # backward: exactly the gradient the soft map would give through the same upstream gradient
    upstream = torch.randn_like(fakes.fake_B_maps["multi"])
    (grad_straight,) = torch.autograd.grad((fakes.fake_B_maps["multi"] * upstream).sum(), fakes.fake_B,
                                           retain_graph=True)
    (grad_soft,) = torch.autograd.grad((seg.soft_probs(fakes.fake_B) * upstream).sum(), fakes.fake_B)
    torch.testing.assert_close(grad_straight, grad_soft)
    up_binary = torch.randn_like(fakes.fake_B_maps["binary"])
    fakes = model.translate(batch)
    (straight_bin,) = torch.autograd.grad((fakes.fake_B_maps["binary"] * up_binary).sum(), fakes.fake_B,
                                          retain_graph=True)
    (soft_bin,) = torch.autograd.grad((binary_from_probs(seg.soft_probs(fakes.fake_B)) * up_binary).sum(),
                                      fakes.fake_B)
    torch.testing.assert_close(straight_bin, soft_bin)


@pytest.mark.parametrize("model_name", ["cyclegan", "pix2pix"])
def test_the_logged_norm_is_the_seg_terms_gradient_and_zero_in_compat(seg: PixelwiseSeg, model_name: str) -> None:
    batch = real_batch(seg)
    for seg_grad in ("soft", "straight"):
        model = tiny(model_name, seg, advseg="both", seg_grad=seg_grad)
        terms = model.generator_losses(batch)
        norm = segmentation_gradient_norm(model, terms)
        seg_total = sum(terms[name] for name in SEG_TERMS["both"])
        grads = torch.autograd.grad(seg_total, list(model.photo_generator.parameters()), allow_unused=True,
                                    retain_graph=True)
        expected = torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None))
        torch.testing.assert_close(norm, expected)
        assert float(norm) > 0
        terms["total"].backward()  # the measurement kept the graph for the real step
    model = tiny(model_name, seg, advseg="both", seg_grad="compat")
    assert float(segmentation_gradient_norm(model, model.generator_losses(batch))) == 0.0
