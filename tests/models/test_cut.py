"""CUT / FastCUT + AdvSegLoss: PatchNCE against its definition, the lazy projection head, the model's terms.

PatchNCE is checked on hand-made features (closed form), on permuted patches and on real photos through
the tiny real generator; the segmentation terms with the small frozen differentiable Seg of conftest.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from advseg_cli.errors import AdvsegError
from advseg_cli.models.advseg import CUTConfig, FastCUTConfig, build_model, model_config
from advseg_cli.models.patchnce import (
    PatchProjection,
    encoder_features,
    parse_layers,
    patch_nce_loss,
)
from tests.models.conftest import PixelwiseSeg
from tests.models.test_advseg_models import SEG_MODES, SEG_TERMS, real_batch, tiny

T = 0.07
PUBLIC_SELF_LOGIT = -10.0  # patchnce.py of the public code: the own position among the negatives


@pytest.fixture(scope="module")
def seg() -> PixelwiseSeg:
    return PixelwiseSeg()


def closed_form(patches: int, temperature: float) -> float:
    """-log softmax of the positive when q.k+ = 1, q.k- = 0 for the P-1 negatives, and the own slot is -10."""
    logits = torch.tensor([1.0] + [0.0] * (patches - 1) + [PUBLIC_SELF_LOGIT], dtype=torch.float64) / temperature
    return float(torch.logsumexp(logits, 0) - logits[0])


# ----------------------------------------------------------------------------- PatchNCE, by definition
@pytest.mark.parametrize(("batch", "patches", "temperature", "rtol"),
                         [(1, 5, 5.0, 1e-5), (1, 5, 1.0, 1e-5), (2, 16, 0.5, 1e-5), (2, 16, T, 0.1)])
def test_patch_nce_equals_its_closed_form_on_orthonormal_patches(batch: int, patches: int, temperature: float,
                                                                 rtol: float) -> None:
    """Each query equals its positive and is orthogonal to every negative: loss = log(1 + (P-1)e^{-1/T} + e^{-11/T}).

    At T = 0.07 the loss is about 1e-5, near float32's resolution of the logits (hence the looser tolerance).
    """
    basis = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(0)))[0][:patches]
    features = basis.repeat(batch, 1)  # [N*P, 32]: every image has the same P orthonormal patches
    losses = patch_nce_loss(features, features.clone(), batch, temperature)
    assert losses.shape == (batch * patches,)
    expected = math.log(1 + (patches - 1) * math.exp(-1 / temperature)
                        + math.exp((PUBLIC_SELF_LOGIT - 1) / temperature))
    assert expected == pytest.approx(closed_form(patches, temperature), rel=1e-12)
    torch.testing.assert_close(losses, torch.full_like(losses, expected), rtol=rtol, atol=0)


def test_breaking_the_correspondence_raises_the_loss() -> None:
    generator = torch.Generator().manual_seed(1)
    keys = F.normalize(torch.randn(2 * 64, 16, generator=generator), dim=1)
    queries = F.normalize(keys + 0.1 * torch.randn(keys.shape, generator=generator), dim=1)
    matched = patch_nce_loss(queries, keys, 2, T).mean()
    order = torch.cat([torch.randperm(64, generator=generator), 64 + torch.randperm(64, generator=generator)])
    shuffled = patch_nce_loss(queries[order], keys, 2, T).mean()  # permuted within each image
    assert float(shuffled) > float(matched) + 5  # measured: 0.02 vs 13.6
    # the cross-entropy's definition, written out for one row
    row = torch.cat([(queries[3] * keys[3]).sum()[None], queries[3] @ keys[:64].T]) / T
    row[1 + 3] = PUBLIC_SELF_LOGIT / T
    assert float(patch_nce_loss(queries, keys, 2, T)[3]) == pytest.approx(float(-torch.log_softmax(row, 0)[0]),
                                                                          rel=1e-5)


def test_negatives_come_from_the_same_image_only() -> None:
    """Image 1's patches do not change image 0's losses (the public nce_includes_all_negatives_from_minibatch False)."""
    generator = torch.Generator().manual_seed(2)
    keys = F.normalize(torch.randn(2 * 8, 4, generator=generator), dim=1)
    queries = F.normalize(torch.randn(2 * 8, 4, generator=generator), dim=1)
    before = patch_nce_loss(queries, keys, 2, T)
    other_keys, other_queries = keys.clone(), queries.clone()
    other_keys[8:] = queries[:8]  # image 1's keys now equal image 0's queries: strong negatives if they counted
    other_queries[8:] = -other_queries[8:]
    after = patch_nce_loss(other_queries, other_keys, 2, T)
    torch.testing.assert_close(after[:8], before[:8], rtol=0, atol=0)
    assert not torch.allclose(after[8:], before[8:])
    one_batch = patch_nce_loss(other_queries, other_keys, 1, T)  # all 16 as one image: now they would matter
    assert not torch.allclose(one_batch[:8], before[:8])


def test_keys_are_detached() -> None:
    keys = F.normalize(torch.randn(8, 4), dim=1).requires_grad_(True)
    queries = F.normalize(torch.randn(8, 4), dim=1).requires_grad_(True)
    patch_nce_loss(queries, keys, 1, T).sum().backward()
    assert keys.grad is None and queries.grad is not None and float(queries.grad.abs().sum()) > 0


# ----------------------------------------------------------------------------- the projection head
def test_projection_head_is_created_on_the_first_batch_from_the_encoder_widths(seg: PixelwiseSeg) -> None:
    model = tiny("cut", None)
    assert not model.F.initialised and list(model.F.parameters()) == []
    assert not any(key.startswith("F.") for key in model.state_dict()) and model.late_parameter_groups() == {}
    model.data_dependent_initialize(real_batch(seg))
    ngf = 4  # layers 0 (padded pixels), 4 (first downsampling conv), 7 (second), 10 and 14 (residual blocks 1, 5)
    assert [mlp[0].in_features for mlp in model.F.mlps] == [3, 2 * ngf, 4 * ngf, 4 * ngf, 4 * ngf]
    assert all(mlp[0].out_features == 256 and mlp[2].out_features == 256 for mlp in model.F.mlps)
    assert set(model.late_parameter_groups()) == {"F"}
    assert len(model.late_parameter_groups()["F"]) == 4 * 5
    features = encoder_features(model.G, real_batch(seg)["real_A"], (0, 4, 7, 10, 14))
    assert [tuple(f.shape[1:]) for f in features] == [(3, 38, 38), (8, 16, 16), (16, 8, 8), (16, 8, 8), (16, 8, 8)]
    positions = PatchProjection.sample_positions(features, 256)
    projected = model.F(features, positions)
    assert [tuple(p.shape) for p in projected] == [(2 * 256, 256), (2 * 256, 256), (2 * 64, 256), (2 * 64, 256),
                                                   (2 * 64, 256)]  # min(256, H*W) patches per image
    for feature, where, mlp, rows in zip(features, positions, model.F.mlps, projected):
        assert len(set(where.tolist())) == len(where)  # distinct positions
        # image 1's rows are image 1's patches at the same positions as image 0's, projected, then x / (|x| + 1e-7)
        patches = feature[1].flatten(1)[:, where].T
        raw = mlp(patches)
        torch.testing.assert_close(rows[len(where):], raw / (raw.norm(dim=1, keepdim=True) + 1e-7))
        assert rows.detach().norm(dim=1).max().item() <= 1 + 1e-6


def test_no_projection_head_without_the_nce_loss(seg: PixelwiseSeg) -> None:
    model = tiny("cut", None, lambda_nce=0.0)
    model.data_dependent_initialize(real_batch(seg))
    assert not model.F.initialised and model.late_parameter_groups() == {}
    assert set(model.generator_losses(real_batch(seg))) == {"G_GAN", "total"}


def test_a_state_dict_rebuilds_the_projection_head(seg: PixelwiseSeg) -> None:
    model = tiny("cut", None)
    model.data_dependent_initialize(real_batch(seg))
    twin = tiny("cut", None, seed=5)
    twin.load_state_dict(model.state_dict())  # twin has no F yet: it is built from the weights' shapes
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))


# ----------------------------------------------------------------------------- the model's terms
def test_nce_reaches_the_generator_and_the_projection_head(seg: PixelwiseSeg) -> None:
    model = tiny("cut", None)
    batch = real_batch(seg)
    model.data_dependent_initialize(batch)
    losses = model.generator_losses(batch)
    losses["NCE"].backward()
    encoder = [p for layer in list(model.G.model)[:15] for p in layer.parameters()]
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in encoder)
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.F.parameters())
    assert all(p.grad is None for p in model.D.parameters())


def test_output_patches_out_of_place_raise_the_models_nce(seg: PixelwiseSeg) -> None:
    """Through the real G and F: PatchNCE(x, x) is low; rolling the output image breaks correspondence."""
    model = tiny("cut", None)
    real_A = real_batch(seg)["real_A"]
    model.data_dependent_initialize({"real_A": real_A})
    torch.manual_seed(3)
    aligned = model.patch_nce(real_A, real_A, flipped=False).item()
    torch.manual_seed(3)  # the same sampled positions
    rolled = model.patch_nce(real_A, torch.roll(real_A, (11, 13), (2, 3)), flipped=False).item()
    assert rolled > aligned + 2  # measured: 1.5 vs 7.4 with random weights


def test_cut_terms_equal_their_definition(seg: PixelwiseSeg) -> None:
    model = tiny("cut", None)
    batch = real_batch(seg)
    model.data_dependent_initialize(batch)
    fakes = model.translate(batch)
    torch.testing.assert_close(fakes.fake_B, model.G(batch["real_A"]))
    torch.testing.assert_close(fakes.idt_B, model.G(batch["real_B"]))
    torch.manual_seed(9)
    losses = model.generator_losses(batch, fakes)
    torch.manual_seed(9)
    nce_x = model.patch_nce(batch["real_A"], fakes.fake_B, False)
    nce_y = model.patch_nce(batch["real_B"], fakes.idt_B, False)
    gan = F.mse_loss(model.D(fakes.fake_B), torch.ones_like(model.D(fakes.fake_B)))
    torch.testing.assert_close(losses["NCE"], 0.5 * nce_x)
    torch.testing.assert_close(losses["NCE_Y"], 0.5 * nce_y)
    torch.testing.assert_close(losses["G_GAN"], gan)
    torch.testing.assert_close(losses["total"], gan + 0.5 * (nce_x + nce_y))


def test_fastcut_flips_half_of_the_steps_and_flips_the_features_back(seg: PixelwiseSeg) -> None:
    model = tiny("fastcut", None)
    batch = real_batch(seg)
    torch.manual_seed(0)
    flips = [model.translate(batch).flipped for _ in range(40)]
    assert 10 < sum(flips) < 30
    torch.manual_seed(flips.index(True))
    for _ in range(flips.index(True)):
        model.translate(batch)
    fakes = model.translate(batch)
    assert fakes.flipped and fakes.idt_B is None
    torch.testing.assert_close(fakes.fake_B, model.G(torch.flip(batch["real_A"], [3])))
    # with the features flipped back, PatchNCE(x, G-input flipped) compares the same positions:
    model.data_dependent_initialize(batch)
    torch.manual_seed(4)
    same = model.patch_nce(batch["real_A"], torch.flip(batch["real_A"], [3]), flipped=True).item()
    torch.manual_seed(4)
    not_back = model.patch_nce(batch["real_A"], torch.flip(batch["real_A"], [3]), flipped=False).item()
    assert same < not_back  # measured: 5.7 vs 6.9
    model.eval()
    assert not any(model.translate(batch).flipped for _ in range(10))  # no flips outside training


@pytest.mark.parametrize("model_name", ["cut", "fastcut"])
@pytest.mark.parametrize("advseg", SEG_MODES)
def test_soft_maps_push_g_and_compat_maps_do_not(seg: PixelwiseSeg, model_name: str, advseg: str) -> None:
    batch = real_batch(seg)
    model = tiny(model_name, seg, advseg=advseg, seg_grad="soft")
    losses = model.generator_losses(batch)
    assert {"G_GAN", "NCE", *SEG_TERMS[advseg]} <= set(losses)
    sum(losses[name] for name in SEG_TERMS[advseg]).backward()
    grads = [p.grad for p in model.G.parameters()]
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    assert sum(g is not None and float(g.abs().sum()) > 0 for g in grads) > len(grads) // 2
    assert all(p.grad is None for p in model.discriminator_parameters())
    d_names = {"multi": {"D_M"}, "binary": {"D_Bin"}, "both": {"D_M", "D_Bin"}}[advseg]
    assert set(model.discriminator_losses(batch)) == {"D", "total", *d_names}

    model = tiny(model_name, seg, advseg=advseg, seg_grad="compat")
    losses = model.generator_losses(batch)
    seg_term = sum(losses[name] for name in SEG_TERMS[advseg])
    assert float(seg_term) > 0 and not seg_term.requires_grad  # exactly no gradient path to G


def test_defaults_are_the_public_cut_codes() -> None:
    cut, fast = CUTConfig(), FastCUTConfig()
    assert (cut.lambda_gan, cut.lambda_nce, cut.nce_idt, cut.flip_equivariance) == (1.0, 1.0, True, False)
    assert (fast.lambda_gan, fast.lambda_nce, fast.nce_idt, fast.flip_equivariance) == (1.0, 10.0, False, True)
    for config in (cut, fast):
        assert (config.num_patches, config.nce_t, config.netf_nc, config.gan_mode, config.pool_size) == \
            (256, 0.07, 256, "lsgan", 0)
        assert (config.arch, config.ngf, config.ndf, config.n_layers_d, config.norm, config.dropout) == \
            ("resnet_9blocks", 64, 64, 3, "instance", False)
        assert (config.init_type, config.init_gain) == ("xavier", 0.02)
        assert parse_layers(config.nce_layers) == (0, 4, 7, 10, 14)
    model = build_model("cut", CUTConfig())
    names = [type(model.G.model[i]).__name__ for i in (0, 4, 7, 10, 14)]
    assert names == ["ReflectionPad2d", "Conv2d", "Conv2d", "ResnetBlock", "ResnetBlock"]
    assert model.G.model[4].stride == (2, 2) and model.G.model[7].stride == (2, 2)  # the downsampling convs
    assert build_model("fastcut").default_schedule == (150, 50) and model.default_schedule == (200, 200)


def test_bad_cut_options_are_refused_with_the_option_name() -> None:
    for options, flag in [({"arch": "unet_256"}, "--arch"), ({"nce_layers": "0,4,x"}, "--nce-layers"),
                          ({"nce_layers": "0,30"}, "--nce-layers"), ({"nce_layers": "4,0"}, "--nce-layers"),
                          ({"nce_t": 0.0}, "--nce-t"), ({"num_patches": 0}, "--num-patches"),
                          ({"lambda_nce": -1.0}, "--lambda-nce"), ({"lambda_a": 1.0}, "--lambda-a")]:
        with pytest.raises(AdvsegError, match=flag):
            model_config("cut", **options)
