"""The variants of the segmentation terms (advseg_cli.models.seg_variants), each against a reference
computation: DiffAugment's translation and cut-out, one shared draw for real and generated inputs, the
warm-up ramp, Taming's adaptive balance, soft real maps, the semantic-consistency cross-entropy, the
refusals, and the per-term gradient norms of the training loop.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advseg_cli.errors import AdvsegError
from advseg_cli.models.advseg import model_config
from advseg_cli.models.seg_variants import (
    SegAugment,
    balanced_weight,
    last_layer_weight,
    semantic_consistency,
    translate,
    warmup_scale,
)
from advseg_cli.segmentation.classes import NUM_CLASSES, UNLABELED
from advseg_cli.segmentation.base import Segmenter
from advseg_cli.segmentation.maps import binary_from_labels, binary_from_probs, one_hot
from advseg_cli.training.loop import term_gradient_norms
from tests.models.conftest import PixelwiseSeg
from tests.models.test_advseg_models import real_batch, tiny


@pytest.fixture(scope="module")
def seg() -> PixelwiseSeg:
    return PixelwiseSeg()


# ------------------------------------------------------------------------------------ augmentation
def test_translation_moves_each_image_by_its_own_shift_with_zeros_shifted_in() -> None:
    x = torch.randn(3, 2, 7, 9)
    shifts = torch.tensor([[2, -3], [0, 0], [-1, 4]])
    moved = translate(x, shifts).numpy()
    expected = np.zeros_like(moved)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        for r in range(7):
            for c in range(9):
                if 0 <= r - dy < 7 and 0 <= c - dx < 9:
                    expected[i, :, r, c] = x[i, :, r - dy, c - dx]
    np.testing.assert_array_equal(moved, expected)


def test_translation_is_differentiable_and_passes_gradient_only_to_the_pixels_it_keeps() -> None:
    x = torch.randn(1, 1, 6, 6, requires_grad=True)
    translate(x, torch.tensor([[1, -2]])).sum().backward()
    kept = np.zeros((6, 6))
    kept[:5, 2:] = 1  # rows 0..4 land on 1..5, columns 2..5 land on 0..3
    np.testing.assert_array_equal(x.grad[0, 0].numpy(), kept)


def test_translation_stays_within_an_eighth_of_the_side_and_reaches_it() -> None:
    torch.manual_seed(0)
    augment = SegAugment("translation")
    shifts = torch.cat([augment.draw(torch.zeros(64, 1, 32, 48)).shifts for _ in range(20)])
    assert shifts[:, 0].abs().max() == 4 and shifts[:, 1].abs().max() == 6  # 32/8, 48/8
    assert set(shifts[:, 0].tolist()) == set(range(-4, 5))


def test_cutout_zeroes_one_axis_aligned_square_of_half_the_side_clipped_at_the_border() -> None:
    torch.manual_seed(1)
    masks = SegAugment("cutout").draw(torch.zeros(200, 1, 16, 16)).cutout[:, 0]
    full = 0
    for mask in masks:
        rows, cols = np.nonzero(mask.numpy() == 0)
        assert rows.size, "every image loses a patch"
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert height <= 8 and width <= 8 and rows.size == height * width  # one rectangle, at most 8 x 8
        full += rows.size == 64
    assert full > 20  # most patches lie wholly inside a 16 px image


def test_a_discriminator_step_applies_one_draw_to_real_and_generated_inputs() -> None:
    augment = SegAugment("translation,cutout,color", color_channels=3)
    x = torch.randn(4, 5, 16, 16)
    torch.manual_seed(3)
    real, fake = augment.pair(x, x.clone())
    assert torch.equal(real, fake)  # the same input augmented the same way
    torch.manual_seed(3)
    draw = augment.draw(x)
    assert torch.equal(augment.apply(x, draw), real)
    assert not torch.equal(real, x)


def test_colour_changes_the_conditioning_photo_and_never_the_map() -> None:
    torch.manual_seed(4)
    photo, seg_map = torch.rand(2, 3, 8, 8) * 2 - 1, torch.rand(2, 6, 8, 8)
    out = SegAugment("color", color_channels=3)(torch.cat([photo, seg_map], 1))
    assert torch.equal(out[:, 3:], seg_map)
    assert (out[:, :3] - photo).abs().max() > 0.05


def test_an_unknown_or_repeated_augmentation_is_refused_in_one_line() -> None:
    with pytest.raises(AdvsegError, match="unknown rotate.*translation, cutout, color"):
        SegAugment("translation,rotate")
    with pytest.raises(AdvsegError, match="twice"):
        SegAugment("cutout,cutout")


def test_the_segmentation_discriminators_of_a_model_see_augmented_maps(seg: PixelwiseSeg) -> None:
    """Seeded the same, a model with --seg-augment scores its map discriminator differently from one without,
    and its image discriminator the same."""
    batch = real_batch(seg)
    plain, augmented = (tiny("pix2pix", seg, advseg="multi", **extra) for extra in ({}, {"seg_augment": "cutout"}))
    augmented.load_state_dict(plain.state_dict())
    torch.manual_seed(5)
    d_plain = plain.discriminator_losses(batch, plain.translate(batch))
    torch.manual_seed(5)
    d_aug = augmented.discriminator_losses(batch, augmented.translate(batch))
    assert torch.equal(d_plain["D"], d_aug["D"])  # the image discriminator is untouched
    assert not torch.equal(d_plain["D_M"], d_aug["D_M"])


# ------------------------------------------------------------------------------------ warm-up and balance
def test_warmup_ramps_linearly_from_zero() -> None:
    assert [warmup_scale(step, 4) for step in (0, 1, 2, 4, 9)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert warmup_scale(0, 0) == 1.0


def test_warmup_scales_the_segmentation_terms_of_a_model_by_its_step(seg: PixelwiseSeg) -> None:
    batch = real_batch(seg)
    plain, warm = tiny("cyclegan", seg, advseg="both"), tiny("cyclegan", seg, advseg="both", seg_warmup=8)
    warm.load_state_dict(plain.state_dict())
    fakes = plain.translate(batch)
    g_plain = plain.generator_losses(batch, fakes)
    for step, scale in ((0, 0.0), (2, 0.25), (8, 1.0)):
        warm.set_step(step)
        g_warm = warm.generator_losses(batch, fakes)
        for name in ("G_M", "G_Bin"):
            torch.testing.assert_close(g_warm[name], scale * g_plain[name])
        torch.testing.assert_close(g_warm["G_A"], g_plain["G_A"])
    assert set(warm.step_statistics()) == {"weight/seg"} and not plain.step_statistics()


def test_balanced_weight_matches_the_ratio_of_the_two_gradient_norms() -> None:
    parameter = torch.randn(4, 3, requires_grad=True)
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    gan, seg_term = (a * parameter).sum(), (b * parameter).sum() ** 2
    seg_grad = 2 * (b * parameter).sum().detach() * b
    expected = 0.3 * a.norm() / seg_grad.norm()
    torch.testing.assert_close(balanced_weight(seg_term, gan, parameter, 0.3), expected)
    assert not balanced_weight(seg_term, gan, parameter, 0.3).requires_grad


@pytest.mark.parametrize("model", ["pix2pix", "cyclegan"])
def test_balance_makes_the_segmentation_gradient_a_fixed_fraction_of_the_gan_terms(seg: PixelwiseSeg,
                                                                                   model: str) -> None:
    balanced = tiny(model, seg, advseg="both", seg_balance=0.5)
    batch = real_batch(seg)
    g = balanced.generator_losses(batch, balanced.translate(batch))
    last = last_layer_weight(balanced.photo_generator)
    gan_name = "G_GAN" if model == "pix2pix" else "G_A"
    (seg_grad,) = torch.autograd.grad(g["G_M"] + g["G_Bin"], [last], retain_graph=True)
    (gan_grad,) = torch.autograd.grad(g[gan_name], [last], retain_graph=True)
    torch.testing.assert_close(seg_grad.norm(), 0.5 * gan_grad.norm(), rtol=1e-4, atol=0)


def test_the_last_layer_is_the_generators_output_convolution(seg: PixelwiseSeg) -> None:
    """The balance is measured where the generator makes its output: tanh of that layer's output is G's."""
    for arch, side in (("resnet_6blocks", 32), ("unet_128", 128)):
        generator = tiny("pix2pix", seg, arch=arch).G.eval()
        layer = next(m for m in generator.modules() if getattr(m, "weight", None) is last_layer_weight(generator))
        seen = []
        handle = layer.register_forward_hook(lambda module, args, output: seen.append(output))
        out = generator(torch.randn(1, 3, side, side))
        handle.remove()
        torch.testing.assert_close(torch.tanh(seen[-1]), out)


# ------------------------------------------------------------------------------------ soft real maps
def test_soft_real_maps_are_segs_probabilities_of_the_real_photo(seg: PixelwiseSeg) -> None:
    batch = real_batch(seg)
    soft = tiny("pix2pix", seg, advseg="both", seg_real="soft").real_maps(batch, batch["real_B"])
    probs = seg.soft_probs(batch["real_B"])
    torch.testing.assert_close(soft["multi"], probs)
    torch.testing.assert_close(soft["binary"], binary_from_probs(probs))
    hard = tiny("pix2pix", seg, advseg="both").real_maps(batch, batch["real_B"])
    assert torch.equal(hard["multi"], one_hot(batch["real_B_labels"]))
    assert not torch.allclose(hard["multi"], soft["multi"])


# ------------------------------------------------------------------------------------ consistency
def test_semantic_consistency_is_the_cross_entropy_of_the_labelled_pixels() -> None:
    torch.manual_seed(6)
    probs = torch.softmax(torch.randn(2, NUM_CLASSES, 4, 4), 1)
    labels = torch.randint(1, NUM_CLASSES, (2, 4, 4), dtype=torch.uint8)
    labels[0, 0, :] = UNLABELED
    p, lab = probs.numpy(), labels.numpy().astype(int)
    picked = [-np.log(p[n, lab[n, r, c], r, c]) for n in range(2) for r in range(4) for c in range(4)
              if lab[n, r, c] != UNLABELED]
    torch.testing.assert_close(semantic_consistency(probs, labels), torch.tensor(np.mean(picked), dtype=torch.float32))


def test_the_consistency_term_is_added_without_segmentation_discriminators_and_reaches_g(seg: PixelwiseSeg) -> None:
    model = tiny("pix2pix", seg, seg_consistency=2.0)
    batch = real_batch(seg)
    fakes = model.translate(batch)
    g = model.generator_losses(batch, fakes)
    expected = 2.0 * semantic_consistency(seg.soft_probs(fakes.fake_B), batch["real_B_labels"])
    torch.testing.assert_close(g["G_SegCE"], expected)
    assert not model.seg_kinds and "D_M" not in model.discriminator_losses(batch, fakes)
    grads = torch.autograd.grad(g["G_SegCE"], list(model.G.parameters()), allow_unused=True)
    assert sum(float(grad.abs().sum()) for grad in grads if grad is not None) > 0


# ------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize(("model", "options", "message"), [
    ("pix2pix", {"seg_augment": "cutout"}, "--seg-augment: change the segmentation.*--advseg multi"),
    ("pix2pix", {"seg_real": "soft"}, "--seg-real soft"),
    ("cyclegan", {"seg_warmup": 10}, "--seg-warmup"),
    ("pix2pix", {"advseg": "both", "seg_grad": "compat", "seg_balance": 1.0}, "no gradient to balance"),
    ("cyclegan", {"advseg": "both", "seg_augment": "translation,color"}, "see maps alone"),
    ("cyclegan", {"seg_consistency": 1.0}, "--seg-consistency do not apply"),
    ("pix2pix", {"advseg": "both", "seg_real": "probabilities"}, "--seg-real"),
    ("pix2pix", {"advseg": "binary", "seg_features": 8}, "--seg-features: changes what D_M judges"),
    ("cyclegan", {"advseg": "both", "seg_grad": "straight", "seg_features": 8}, "--seg-features: features have no"),
    ("pix2pix", {"advseg": "both", "seg_features": -1}, "--seg-features: a number of channels"),
])
def test_variants_that_cannot_act_are_refused_naming_the_option(model: str, options: dict, message: str) -> None:
    with pytest.raises(AdvsegError, match=message):
        model_config(model, **options)


# ------------------------------------------------------------------------------------ gradient norms
def test_each_terms_gradient_norm_is_that_of_its_own_backward(seg: PixelwiseSeg) -> None:
    model = tiny("pix2pix", seg, advseg="both", seg_grad="compat")
    batch = real_batch(seg)
    g = model.generator_losses(batch, model.translate(batch))
    norms = term_gradient_norms(model, g)
    assert set(norms) == {f"grad/G_{name}_norm" for name in ("G_GAN", "G_L1", "G_M", "G_Bin")}
    for name in ("G_GAN", "G_L1"):
        grads = torch.autograd.grad(g[name], list(model.G.parameters()), retain_graph=True, allow_unused=True)
        expected = torch.sqrt(sum((grad ** 2).sum() for grad in grads if grad is not None))
        torch.testing.assert_close(norms[f"grad/G_{name}_norm"], expected)
    assert norms["grad/G_G_M_norm"] == 0 and norms["grad/G_G_L1_norm"] > 0  # compat: hard maps carry nothing


# ------------------------------------------------------------------------------------ feature-level D_M
def projected_by_hand(model, seg: PixelwiseSeg, photos: torch.Tensor) -> torch.Tensor:
    """The fixed random 1x1 projection of Seg's features, as a matrix product per pixel, upsampled bilinearly."""
    features = seg.features(photos)  # [N,C,h,w]
    weight = model.feature_projection.weight[:, :, 0, 0]  # [K,C]
    mixed = torch.einsum("kc,nchw->nkhw", weight, features)
    return torch.nn.functional.interpolate(mixed, size=photos.shape[-2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize("model_name", ["pix2pix", "cyclegan"])
def test_with_seg_features_d_m_judges_the_projected_features_of_real_and_generated_photos(
        seg: PixelwiseSeg, model_name: str) -> None:
    model = tiny(model_name, seg, advseg="both", seg_features=5)
    batch = real_batch(seg)
    fake = model.photo_generator(batch["real_A"])
    fake_maps, real_maps = model.fake_maps(fake), model.real_maps(batch, fake)
    torch.testing.assert_close(fake_maps["multi"], projected_by_hand(model, seg, fake))
    torch.testing.assert_close(real_maps["multi"], projected_by_hand(model, seg, batch["real_B"]))
    assert torch.equal(real_maps["binary"], binary_from_labels(batch["real_B_labels"]))  # D_Bin: as without
    torch.testing.assert_close(fake_maps["binary"], binary_from_probs(seg.soft_probs(fake)))
    conditioning = 3 if model_name == "pix2pix" else 0
    assert model.D_M.model[0].in_channels == conditioning + 5
    assert model.feature_projection.weight.shape == (5, 6, 1, 1)


def test_the_feature_projection_is_fixed_drawn_from_the_seed_and_kept_in_checkpoints(seg: PixelwiseSeg) -> None:
    model = tiny("pix2pix", seg, advseg="multi", seg_features=5)
    weight = model.feature_projection.weight
    assert not any(weight is p for p in model.parameters()) and not weight.requires_grad
    assert torch.equal(model.state_dict()["feature_projection.weight"], weight)
    assert torch.equal(tiny("pix2pix", seg, advseg="multi", seg_features=5).feature_projection.weight, weight)
    assert not torch.equal(tiny("pix2pix", seg, seed=1, advseg="multi", seg_features=5).feature_projection.weight,
                           weight)
    bound = (6.0 / 6) ** 0.5  # Kaiming uniform over Seg's 6 feature channels
    assert float(weight.abs().max()) <= bound and float(weight.std()) > 0.3 * bound


@pytest.mark.parametrize(("seg_grad", "reaches"), [("soft", True), ("compat", False)])
def test_the_feature_terms_gradient_reaches_the_generator_only_in_soft_mode(seg: PixelwiseSeg, seg_grad: str,
                                                                             reaches: bool) -> None:
    model = tiny("pix2pix", seg, advseg="multi", seg_features=5, seg_grad=seg_grad)
    batch = real_batch(seg)
    g = model.generator_losses(batch, model.translate(batch))
    if reaches:
        grads = torch.autograd.grad(g["G_M"], list(model.G.parameters()), allow_unused=True)
        assert sum(float(grad.abs().sum()) for grad in grads if grad is not None) > 0
    else:  # compat: the features of the generated photo are made without a graph (D_M frozen in G's step)
        assert not g["G_M"].requires_grad
    d = model.discriminator_losses(batch)
    d_grads = torch.autograd.grad(d["D_M"], list(model.D_M.parameters()))
    assert sum(float(grad.abs().sum()) for grad in d_grads) > 0


def test_a_backend_without_features_is_refused_in_one_line() -> None:
    class MapsOnly(PixelwiseSeg):
        backend = "maps-only"
        features = Segmenter.features

    with pytest.raises(AdvsegError, match="--seg-features: the maps-only segmentation backend does not expose"):
        tiny("pix2pix", MapsOnly(), advseg="multi", seg_features=5)
