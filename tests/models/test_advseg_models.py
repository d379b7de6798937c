"""CycleGAN / Pix2Pix + AdvSegLoss: loss terms, the gradient of the segmentation term, determinism, resume.

Tiny widths (ngf = ndf = 4) on 32 px crops of real photos (scikit-image), with a small frozen
differentiable Seg (tests/models/conftest.py).
"""

from __future__ import annotations

import io
import itertools

import pytest
import torch
import torch.nn.functional as F

from advseg_cli.errors import AdvsegError
from advseg_cli.models.advseg import (
    CycleGANAdvSeg,
    CycleGANConfig,
    Pix2PixAdvSeg,
    Pix2PixConfig,
    binarized_straight_through,
    build_model,
    model_config,
)
from advseg_cli.segmentation.maps import binary_from_labels, binary_from_probs, one_hot
from tests.helpers import photo
from tests.models.conftest import PixelwiseSeg

SIZE = 32
SEG_MODES = ("multi", "binary", "both")
SEG_TERMS = {"multi": ("G_M",), "binary": ("G_Bin",), "both": ("G_M", "G_Bin")}


@pytest.fixture(scope="module")
def seg() -> PixelwiseSeg:
    return PixelwiseSeg()


def real_batch(seg: PixelwiseSeg, offset: int = 0) -> dict[str, torch.Tensor]:
    """Two 32 px crops of real photos (B), their gray version as a 3-channel 'sketch' (A), their labels."""
    crops = []
    for name in ("astronaut", "chelsea"):
        image = torch.from_numpy(photo(name, 48).copy()).permute(2, 0, 1).float() / 127.5 - 1
        crops.append(image[:, offset:offset + SIZE, offset:offset + SIZE])
    real_B = torch.stack(crops)
    real_A = real_B.mean(1, keepdim=True).expand(-1, 3, -1, -1).contiguous()
    return {"real_A": real_A, "real_B": real_B, "real_B_labels": seg.hard_labels(real_B)}


def tiny(model: str, seg: PixelwiseSeg | None, seed: int = 0, **options: object):
    torch.manual_seed(seed)
    options = {"arch": "resnet_6blocks", **options}  # 9 blocks are covered by the network tests
    return build_model(model, model_config(model, ngf=4, ndf=4, **options), seg)


def train_steps(model, batches, steps: int, optimizers=None) -> tuple[list[dict[str, float]], tuple]:
    """The loop's order: G step then D step, Adam as the public code (lr 2e-4, betas 0.5/0.999)."""
    if optimizers is None:
        optimizers = (torch.optim.Adam(model.generator_parameters(), lr=2e-4, betas=(0.5, 0.999)),
                      torch.optim.Adam(model.discriminator_parameters(), lr=2e-4, betas=(0.5, 0.999)))
    opt_g, opt_d = optimizers
    history = []
    for _, batch in zip(range(steps), batches):
        fakes = model.translate(batch)
        g = model.generator_losses(batch, fakes)
        opt_g.zero_grad()
        g["total"].backward()
        opt_g.step()
        d = model.discriminator_losses(batch, fakes)
        opt_d.zero_grad()
        d["total"].backward()
        opt_d.step()
        history.append({f"g/{k}": v.item() for k, v in g.items()} | {f"d/{k}": v.item() for k, v in d.items()})
    return history, optimizers


def batches(seg: PixelwiseSeg):
    return itertools.cycle([real_batch(seg, 0), real_batch(seg, 8), real_batch(seg, 16)])


EXPECTED_TERMS = {
    "cyclegan": ({"G_A", "G_B", "cycle_A", "cycle_B", "idt_A", "idt_B"}, {"D_A", "D_B"}),
    "pix2pix": ({"G_GAN", "G_L1"}, {"D"}),
}


@pytest.mark.parametrize("model_name", ["cyclegan", "pix2pix"])
@pytest.mark.parametrize("advseg", ["none", *SEG_MODES])
def test_every_model_and_advseg_mode_trains_with_finite_losses(seg: PixelwiseSeg, model_name: str,
                                                               advseg: str) -> None:
    model = tiny(model_name, seg, advseg=advseg, pool_size=2)
    history, _ = train_steps(model, batches(seg), 2)
    g_terms, d_terms = EXPECTED_TERMS[model_name]
    seg_names = {"none": set(), "multi": {"M"}, "binary": {"Bin"}, "both": {"M", "Bin"}}[advseg]
    expected = {f"g/{t}" for t in g_terms | {f"G_{s}" for s in seg_names} | {"total"}}
    expected |= {f"d/{t}" for t in d_terms | {f"D_{s}" for s in seg_names} | {"total"}}
    for losses in history:
        assert set(losses) == expected
        assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
        for side in ("g", "d"):
            parts = [v for k, v in losses.items() if k.startswith(side + "/") and k != f"{side}/total"]
            assert losses[f"{side}/total"] == pytest.approx(sum(parts), rel=1e-5)
    assert all(v > 0 for k, v in history[0].items())  # every term is active, none silently zero


@pytest.mark.parametrize("model_name", ["cyclegan", "pix2pix"])
@pytest.mark.parametrize("advseg", SEG_MODES)
def test_soft_maps_push_the_generator_and_compat_maps_do_not(seg: PixelwiseSeg, model_name: str,
                                                             advseg: str) -> None:
    """The fix of the public code's defect: only the soft map's segmentation term reaches the generator."""
    batch = real_batch(seg)
    # soft: backprop the segmentation terms alone
    model = tiny(model_name, seg, advseg=advseg, seg_grad="soft")
    losses = model.generator_losses(batch)
    seg_term = sum(losses[name] for name in SEG_TERMS[advseg])
    seg_term.backward()
    photo_generator = list(model.photo_generator.parameters())
    grad_norm = sum(float(p.grad.abs().sum()) for p in photo_generator if p.grad is not None)
    assert grad_norm > 0
    reached = sum(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in photo_generator)
    assert reached > len(photo_generator) // 2  # most of the generator's tensors, not only its last layer
    assert all(p.grad is None for p in model.discriminator_parameters())  # frozen in the generator step
    assert all(p.grad is None for p in seg.parameters())  # Seg stays frozen

    # compat: the same term is a constant for the generator
    model = tiny(model_name, seg, advseg=advseg, seg_grad="compat")
    losses = model.generator_losses(batch)
    seg_term = sum(losses[name] for name in SEG_TERMS[advseg])
    assert float(seg_term) > 0
    assert not seg_term.requires_grad  # no path from the generators to it at all
    params = model.generator_parameters()
    with_seg = torch.autograd.grad(losses["total"], params, retain_graph=True, allow_unused=True)
    without = sum(v for k, v in losses.items() if k != "total" and k not in SEG_TERMS[advseg])
    without_seg = torch.autograd.grad(without, params, allow_unused=True)
    for a, b in zip(with_seg, without_seg):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


@pytest.mark.parametrize("seg_grad", ["soft", "compat"])
def test_fake_maps_are_the_segmenters_maps(seg: PixelwiseSeg, seg_grad: str) -> None:
    model = tiny("cyclegan", seg, advseg="both", seg_grad=seg_grad)
    fakes = model.translate(real_batch(seg))
    fake_B = fakes.fake_B.detach()
    if seg_grad == "soft":
        probs = seg.soft_probs(fake_B)
        torch.testing.assert_close(fakes.fake_B_maps["multi"], probs)
        torch.testing.assert_close(fakes.fake_B_maps["binary"], binary_from_probs(probs))
        assert fakes.fake_B_maps["multi"].requires_grad
    else:
        labels = seg.hard_labels(fake_B)
        assert torch.equal(fakes.fake_B_maps["multi"], one_hot(labels))
        assert torch.equal(fakes.fake_B_maps["binary"], binary_from_labels(labels))
        assert not fakes.fake_B_maps["multi"].requires_grad


def test_cyclegan_terms_equal_their_definitions(seg: PixelwiseSeg) -> None:
    model = tiny("cyclegan", seg, advseg="both", pool_size=0)
    batch = real_batch(seg)
    real_A, real_B = batch["real_A"], batch["real_B"]
    fakes = model.translate(batch)
    g = model.generator_losses(batch, fakes)
    mse_to = lambda pred, value: F.mse_loss(pred, torch.full_like(pred, value))  # noqa: E731
    with torch.no_grad():
        fake_B, fake_A = model.G_A(real_A), model.G_B(real_B)
        probs = seg.soft_probs(fake_B)
        expected = {
            "G_A": mse_to(model.D_A(fake_B), 1.0),
            "G_B": mse_to(model.D_B(fake_A), 1.0),
            "cycle_A": 10 * (model.G_B(fake_B) - real_A).abs().mean(),
            "cycle_B": 10 * (model.G_A(fake_A) - real_B).abs().mean(),
            "idt_A": 0.5 * 10 * (model.G_A(real_B) - real_B).abs().mean(),
            "idt_B": 0.5 * 10 * (model.G_B(real_A) - real_A).abs().mean(),
            "G_M": 10 * mse_to(model.D_M(probs), 1.0),
            "G_Bin": 10 * mse_to(model.D_Bin(binary_from_probs(probs)), 1.0),
        }
    for name, value in expected.items():
        assert g[name].item() == pytest.approx(value.item(), rel=1e-5), name
    d = model.discriminator_losses(batch, fakes)  # pool 0: the discriminators see this step's fakes
    with torch.no_grad():
        labels = batch["real_B_labels"]
        real_map, fake_map = one_hot(labels), probs
        assert d["D_A"].item() == pytest.approx(
            0.5 * (mse_to(model.D_A(real_B), 1) + mse_to(model.D_A(fake_B), 0)).item(), rel=1e-5)
        assert d["D_M"].item() == pytest.approx(
            0.5 * (mse_to(model.D_M(real_map), 1) + mse_to(model.D_M(fake_map), 0)).item(), rel=1e-5)
        assert d["D_Bin"].item() == pytest.approx(
            0.5 * (mse_to(model.D_Bin(binary_from_labels(labels)), 1)
                   + mse_to(model.D_Bin(binary_from_probs(fake_map)), 0)).item(), rel=1e-5)


def test_cycle_noise_reaches_only_the_photo_cycle_and_only_in_training(seg: PixelwiseSeg) -> None:
    """--cycle-noise: G_A reconstructs the photo from G_B's sketch plus sigma * N(0, 1) drawn from the global
    RNG (so a resumed run draws the same); the sketch D_B judges, the other cycle and eval mode are clean."""
    model = tiny("cyclegan", seg, cycle_noise=0.3, pool_size=0)
    batch = real_batch(seg)
    torch.manual_seed(7)
    fakes = model.translate(batch)
    with torch.no_grad():
        fake_B, fake_A = model.G_A(batch["real_A"]), model.G_B(batch["real_B"])
        torch.manual_seed(7)
        noise = torch.randn_like(fake_A)
        expected_rec_B = model.G_A(fake_A + 0.3 * noise)
    torch.testing.assert_close(fakes.fake_A, fake_A, rtol=0, atol=0)
    torch.testing.assert_close(fakes.rec_A, model.G_B(fake_B), rtol=0, atol=0)
    torch.testing.assert_close(fakes.rec_B, expected_rec_B, rtol=1e-6, atol=1e-6)
    assert (fakes.rec_B - model.G_A(fake_A)).abs().max() > 1e-3  # the noise changed what G_A read
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.translate(batch).rec_B, model.G_A(model.G_B(batch["real_B"])), rtol=0, atol=0)
    with pytest.raises(AdvsegError, match="--cycle-noise"):
        model_config("cyclegan", cycle_noise=-0.1)


def test_cycle_binarize_feeds_g_a_a_black_and_white_sketch_and_trains_g_b_through_it(seg: PixelwiseSeg) -> None:
    """--cycle-binarize: G_A reconstructs the photo from sign(G_B's sketch) (0 counts as black), in training
    and eval alike, while the gradient of the photo cycle reaches G_B as if nothing were thresholded."""
    model = tiny("cyclegan", seg, cycle_binarize=True, pool_size=0)
    batch = real_batch(seg)
    fakes = model.translate(batch)
    with torch.no_grad():
        fake_A = model.G_B(batch["real_B"])
        black_and_white = torch.where(fake_A > 0, torch.ones_like(fake_A), -torch.ones_like(fake_A))
        torch.testing.assert_close(fakes.rec_B, model.G_A(black_and_white), rtol=0, atol=0)
    torch.testing.assert_close(fakes.fake_A, fake_A, rtol=0, atol=0)  # D_B still judges the grey sketch
    torch.testing.assert_close(fakes.rec_A, model.G_B(fakes.fake_B), rtol=0, atol=0)

    sketch = torch.tensor([-0.7, -0.0, 0.0, 0.2, 0.9], requires_grad=True)
    upstream = torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0])
    (binarized_straight_through(sketch) * upstream).sum().backward()
    torch.testing.assert_close(binarized_straight_through(sketch.detach()), torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0]))
    torch.testing.assert_close(sketch.grad, upstream)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.translate(batch).rec_B, model.G_A(black_and_white), rtol=0, atol=0)


def test_pix2pix_terms_equal_their_definitions(seg: PixelwiseSeg) -> None:
    model = tiny("pix2pix", seg, advseg="both", dropout=False)  # no dropout: recomputation is exact
    batch = real_batch(seg)
    real_A, real_B, labels = batch["real_A"], batch["real_B"], batch["real_B_labels"]
    fakes = model.translate(batch)
    g = model.generator_losses(batch, fakes)
    bce_to = lambda pred, value: F.binary_cross_entropy_with_logits(pred, torch.full_like(pred, value))  # noqa: E731
    with torch.no_grad():
        fake_B = fakes.fake_B
        probs = seg.soft_probs(fake_B)
        assert model.D_M.model[0].in_channels == 3 + 135 and model.D_Bin.model[0].in_channels == 3 + 3
        assert g["G_GAN"].item() == pytest.approx(bce_to(model.D(torch.cat([real_A, fake_B], 1)), 1).item(), rel=1e-5)
        assert g["G_L1"].item() == pytest.approx(100 * (fake_B - real_B).abs().mean().item(), rel=1e-5)
        assert g["G_M"].item() == pytest.approx(
            100 * bce_to(model.D_M(torch.cat([real_B, probs], 1)), 1).item(), rel=1e-5)
        assert g["G_Bin"].item() == pytest.approx(
            100 * bce_to(model.D_Bin(torch.cat([real_B, binary_from_probs(probs)], 1)), 1).item(), rel=1e-5)
    d = model.discriminator_losses(batch, fakes)
    with torch.no_grad():
        expected_d_m = 0.5 * (bce_to(model.D_M(torch.cat([real_B, one_hot(labels)], 1)), 1)
                              + bce_to(model.D_M(torch.cat([real_B, probs], 1)), 0))
        assert d["D_M"].item() == pytest.approx(expected_d_m.item(), rel=1e-5)


def test_discriminator_losses_train_only_the_discriminators(seg: PixelwiseSeg) -> None:
    model = tiny("cyclegan", seg, advseg="both", pool_size=2)
    batch = real_batch(seg)
    fakes = model.translate(batch)
    model.generator_losses(batch, fakes)  # freezes the discriminators ...
    assert not any(p.requires_grad for p in model.discriminator_parameters())
    d = model.discriminator_losses(batch, fakes)  # ... and this unfreezes them
    d["total"].backward()
    assert all(p.grad is None for p in model.generator_parameters())
    assert all(p.grad is not None for p in model.discriminator_parameters())


@pytest.mark.parametrize("model_name", ["cyclegan", "pix2pix"])
def test_identical_seeds_give_identical_losses(seg: PixelwiseSeg, model_name: str) -> None:
    runs = [train_steps(tiny(model_name, seg, seed=seed, advseg="both", pool_size=2), batches(seg), 3)[0]
            for seed in (5, 5, 6)]
    assert runs[0] == runs[1]  # bit-identical floats
    assert runs[0] != runs[2]  # and the comparison is sensitive to the seed


def snapshot(model, optimizers) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "pools": model.pools_state_dict(),
                "opt": [o.state_dict() for o in optimizers]}, buffer)
    return buffer.getvalue()


def test_model_pools_and_weights_resume_exactly(seg: PixelwiseSeg) -> None:
    """What a checkpoint needs from this module: network weights and the pools' state."""
    model = tiny("cyclegan", seg, advseg="both", pool_size=3)
    stream = batches(seg)
    _, optimizers = train_steps(model, stream, 2)  # pools full (2 images a step): older ones come back
    saved = snapshot(model, optimizers)
    uninterrupted, _ = train_steps(model, stream, 3, optimizers)

    resumed = tiny("cyclegan", seg, seed=99, advseg="both", pool_size=3)  # other init, other pool seeds
    state = torch.load(io.BytesIO(saved), weights_only=True)
    resumed.load_state_dict(state["model"])
    resumed.load_pools_state_dict(state["pools"])
    _, fresh_optimizers = train_steps(resumed, [], 0)
    for optimizer, optimizer_state in zip(fresh_optimizers, state["opt"]):
        optimizer.load_state_dict(optimizer_state)
    stream = batches(seg)
    for _ in range(2):
        next(stream)
    after_resume, _ = train_steps(resumed, stream, 3, fresh_optimizers)
    assert after_resume == uninterrupted


def test_state_dict_holds_the_networks_not_seg(seg: PixelwiseSeg) -> None:
    model = tiny("cyclegan", seg, advseg="both")
    prefixes = {key.split(".")[0] for key in model.state_dict()}
    assert prefixes == {"G_A", "G_B", "D_A", "D_B", "D_M", "D_Bin"}
    assert model.D_M.model[0].in_channels == 135 and model.D_Bin.model[0].in_channels == 3
    assert not any(p is q for p in model.parameters() for q in seg.parameters())
    assert model.photo_generator is model.G_A
    plain = tiny("pix2pix", None)
    assert {key.split(".")[0] for key in plain.state_dict()} == {"G", "D"} and plain.D_M is None


def test_defaults_are_the_public_codes() -> None:
    cyclegan, pix2pix = CycleGANConfig(), Pix2PixConfig()
    assert (cyclegan.arch, cyclegan.ngf, cyclegan.ndf, cyclegan.n_layers_d, cyclegan.norm, cyclegan.dropout) == \
        ("resnet_9blocks", 64, 64, 3, "instance", False)
    assert (cyclegan.gan_mode, cyclegan.lambda_a, cyclegan.lambda_b, cyclegan.lambda_identity) == ("lsgan", 10, 10, 0.5)
    assert (cyclegan.pool_size, cyclegan.lambda_seg, cyclegan.seg_grad, cyclegan.init_gain) == (50, 10, "soft", 0.02)
    assert (pix2pix.arch, pix2pix.norm, pix2pix.dropout) == ("resnet_9blocks", "batch", True)
    assert pix2pix.gan_mode == "vanilla"
    assert (pix2pix.lambda_l1, pix2pix.lambda_seg, pix2pix.pool_size) == (100, 100, 0)
    assert model_config("pix2pix", advseg="multi").lambda_seg == 100
    assert model_config("cyclegan", advseg="multi").lambda_seg == 10


def test_bad_options_are_refused_with_the_option_name(seg: PixelwiseSeg) -> None:
    with pytest.raises(AdvsegError, match="--advseg.*none, multi, binary, both"):
        model_config("cyclegan", advseg="all")
    with pytest.raises(AdvsegError, match="--seg-grad"):
        model_config("pix2pix", seg_grad="hard")
    with pytest.raises(AdvsegError, match="--lambda-identity"):
        model_config("cyclegan", sketch_channels=1)
    with pytest.raises(AdvsegError, match="--lambda-l1"):
        model_config("cyclegan", lambda_l1=5.0)
    with pytest.raises(AdvsegError, match="--model.*cyclegan, pix2pix"):
        model_config("munit")
    with pytest.raises(ValueError, match="segmentation network"):
        CycleGANAdvSeg(model_config("cyclegan", advseg="binary", ngf=4, ndf=4), seg=None)
    model = Pix2PixAdvSeg(model_config("pix2pix", advseg="binary", ngf=4, ndf=4), seg)
    batch = real_batch(seg)
    with pytest.raises(ValueError, match="real_B_labels"):
        model.discriminator_losses({"real_A": batch["real_A"], "real_B": batch["real_B"]})


def test_one_channel_sketches_without_identity(seg: PixelwiseSeg) -> None:
    model = tiny("cyclegan", seg, sketch_channels=1, lambda_identity=0.0, advseg="binary")
    batch = real_batch(seg)
    batch["real_A"] = batch["real_A"][:, :1]
    losses = model.generator_losses(batch)
    assert "idt_A" not in losses and torch.isfinite(losses["total"])
    assert model.G_A.spec.in_ch == 1 and model.G_B.spec.out_ch == 1


def test_a_twin_loaded_with_the_state_dict_computes_the_same_losses(seg: PixelwiseSeg) -> None:
    """The state dict holds every weight the losses depend on (D_M included; Seg is shared, not copied): a
    twin built with other random weights computes other losses, and after load_state_dict exactly these."""
    batch = real_batch(seg)

    def losses(model: Pix2PixAdvSeg) -> dict[str, float]:
        torch.manual_seed(5)  # the same dropout masks for both
        fakes = model.translate(batch)
        terms = {f"G/{k}": v.item() for k, v in model.generator_losses(batch, fakes).items()}
        return terms | {f"D/{k}": v.item() for k, v in model.discriminator_losses(batch, fakes).items()}

    model, twin = tiny("pix2pix", seg, seed=0, advseg="multi"), tiny("pix2pix", seg, seed=1, advseg="multi")
    reference = losses(model)
    other = losses(twin)
    assert all(other[name] != value for name, value in reference.items()), (other, reference)
    twin.load_state_dict(model.state_dict())
    assert losses(twin) == reference
    assert twin.seg is model.seg


@pytest.mark.parametrize("model_name", ["cyclegan", "pix2pix"])
def test_bf16_autocast_step_stays_close_to_fp32(seg: PixelwiseSeg, model_name: str) -> None:
    """The loop's --precision bf16 wraps these calls in autocast: maps, pools and losses must cope."""
    model = tiny(model_name, seg, advseg="both", pool_size=2, dropout=False)
    batch = real_batch(seg)
    reference = {k: v.item() for k, v in model.generator_losses(batch).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fakes = model.translate(batch)
        g = model.generator_losses(batch, fakes)
    g["total"].backward()
    assert fakes.fake_B.dtype == torch.bfloat16 and g["total"].dtype == torch.float32
    for name, value in g.items():
        assert value.item() == pytest.approx(reference[name], rel=0.05), name
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = model.discriminator_losses(batch, fakes)
    d["total"].backward()
    assert torch.isfinite(d["total"]) and model.pools["seg_multi"].images[0].dtype == torch.float16
