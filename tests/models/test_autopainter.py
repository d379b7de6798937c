"""AutoPainter: the VGG16 feature network, total variation, and the model's generator loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from advseg_cli.errors import AdvsegError, WeightsMismatchError, WeightsNotFoundError
from advseg_cli.models.advseg import AutoPainterConfig, build_model, model_config
from advseg_cli.models.losses import total_variation
from advseg_cli.models.perceptual import PERCEPTUAL_LAYERS, VGG16_WEIGHTS, PerceptualFeatures, build_perceptual
from advseg_cli.weights import advseg_home, read_tensor_file, resolve_weights, torch_hub_checkpoints
from tests.helpers import write_vgg16_weights
from tests.models.conftest import PixelwiseSeg

CPU = torch.device("cpu")
TINY = {"ngf": 8, "ndf": 8, "arch": "unet_128"}


@pytest.fixture(scope="module")
def torchvision_vgg16() -> torch.nn.Module:
    """torchvision's own VGG16 with random weights: the reference for our partial network."""
    torch.manual_seed(0)
    network = torchvision.models.vgg16(weights=None).eval()
    for module in network.features:
        if isinstance(module, torch.nn.Conv2d):  # torchvision's init gives near-zero deep activations
            torch.nn.init.normal_(module.weight, std=(2.0 / module.weight[0].numel()) ** 0.5)
            torch.nn.init.normal_(module.bias, std=0.01)
    return network


@pytest.mark.parametrize("layer", ["relu1_2", "relu3_2", "relu4_3", "relu5_3"])
def test_features_equal_torchvisions_vgg16_on_imagenet_normalised_input(
        torchvision_vgg16: torch.nn.Module, layer: str) -> None:
    ours = PerceptualFeatures(layer)
    ours.load_torchvision_state(torchvision_vgg16.state_dict(), "torchvision")
    images = torch.rand(2, 3, 48, 40) * 2 - 1  # generator outputs live in [-1, 1]
    normalised = torchvision.transforms.functional.normalize((images + 1) / 2, (0.485, 0.456, 0.406),
                                                             (0.229, 0.224, 0.225))
    end = PERCEPTUAL_LAYERS[layer]
    with torch.no_grad():
        expected = torchvision_vgg16.features[:end](normalised)
        got = ours(images)
    assert isinstance(torchvision_vgg16.features[end - 1], torch.nn.ReLU)  # the named layer is a ReLU
    assert got.shape == expected.shape and expected.abs().mean() > 1e-3
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_only_the_layers_up_to_the_chosen_one_are_built() -> None:
    sizes = {layer: sum(p.numel() for p in PerceptualFeatures(layer).parameters())
             for layer in ("relu1_2", "relu3_2")}
    assert sizes == {"relu1_2": 38_720, "relu3_2": 1_145_408}  # torchvision's conv1_1..conv3_2, not 138 M


def test_weight_files_of_another_layout_are_one_line_errors(tmp_path: Path) -> None:
    network = PerceptualFeatures("relu3_2")
    resnet_like = {"conv1.weight": torch.zeros(64, 3, 7, 7)}
    with pytest.raises(WeightsMismatchError, match=r"no features\.0\.weight"):
        network.load_torchvision_state(resnet_like, "x.pth")
    vgg19_like = torch.load(write_vgg16_weights(tmp_path / "v.pth"), weights_only=True)
    vgg19_like["features.12.weight"] = torch.zeros(256, 128, 3, 3)  # wrong input width for conv3_2
    with pytest.raises(WeightsMismatchError, match=r"features\.12\.weight \(256, 128, 3, 3\)"):
        network.load_torchvision_state(vgg19_like, "x.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(WeightsMismatchError, match="not a PyTorch state dict"):
        read_tensor_file(text, "VGG16 weights")


def test_weights_are_found_in_torch_hubs_cache_and_checked_by_their_hash_prefix(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match=r"vgg16-397923af\.pth not found: .*--perceptual-weights"):
        resolve_weights(VGG16_WEIGHTS.name)
    hub_file = write_vgg16_weights(torch_hub_checkpoints() / VGG16_WEIGHTS.filename)
    with pytest.raises(WeightsMismatchError, match="not the official vgg16-397923af.pth"):
        resolve_weights(VGG16_WEIGHTS.name)  # random weights cannot have torchvision's hash
    explicit = resolve_weights(VGG16_WEIGHTS.name, hub_file)  # a file the user names is trusted
    assert explicit.source == "explicit"
    hub_file.unlink()
    write_vgg16_weights(advseg_home() / VGG16_WEIGHTS.filename)
    with pytest.raises(WeightsMismatchError, match="397923af"):
        resolve_weights(VGG16_WEIGHTS.name)


def test_total_variation_is_the_summed_squared_neighbour_difference_per_image() -> None:
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(2, 3, 5, 8) * 0.25  # x steps of 0.25, no y change
    assert total_variation(ramp).item() == pytest.approx(3 * 5 * 7 * 0.25 ** 2)  # per image; batch mean
    checker = (torch.arange(4).view(4, 1) + torch.arange(4).view(1, 4)) % 2
    assert total_variation(checker.float().view(1, 1, 4, 4)).item() == pytest.approx(2 * 4 * 3)


@pytest.fixture
def vgg(tmp_path: Path) -> PerceptualFeatures:
    return build_perceptual("relu3_2", write_vgg16_weights(tmp_path / "vgg.pth"), CPU)


def _batch(seed: int = 0, size: int = 128) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"real_A": torch.rand(1, 3, size, size, generator=generator) * 2 - 1,
            "real_B": torch.rand(1, 3, size, size, generator=generator) * 2 - 1}


def test_generator_loss_has_autopainters_terms_with_their_weights(vgg: PerceptualFeatures) -> None:
    config = model_config("autopainter", **TINY, lambda_tv=0.01, lambda_feat=0.5)
    torch.manual_seed(0)
    model = build_model("autopainter", config, perceptual=vgg).train()
    batch = _batch()
    fakes = model.translate(batch)
    terms = model.generator_losses(batch, fakes)
    assert list(terms) == ["G_GAN", "G_L1", "G_TV", "G_feat", "total"]
    fake, real = fakes.fake_B.detach(), batch["real_B"]
    assert terms["G_L1"].item() == pytest.approx(50 * (fake - real).abs().mean().item(), rel=1e-5)
    assert terms["G_TV"].item() == pytest.approx(0.01 * total_variation(fake).item(), rel=1e-5)
    with torch.no_grad():
        distance = (vgg(fake) - vgg(real)).abs().mean().item()
    assert distance > 0 and terms["G_feat"].item() == pytest.approx(0.5 * distance, rel=1e-5)
    assert terms["total"].item() == pytest.approx(sum(v.item() for k, v in terms.items() if k != "total"), rel=1e-5)


def test_the_feature_network_trains_nothing_and_is_not_in_checkpoints(vgg: PerceptualFeatures) -> None:
    model = build_model("autopainter", model_config("autopainter", **TINY), perceptual=vgg).train()
    batch = _batch()
    model.generator_losses(batch)["G_feat"].backward()
    assert all(p.grad is None for p in vgg.parameters())
    assert sum(p.grad.abs().sum().item() for p in model.G.parameters() if p.grad is not None) > 0
    assert not any(key.startswith(("perceptual", "_perceptual", "features")) for key in model.state_dict())


@pytest.mark.parametrize("term", ["G_TV", "G_feat"])
def test_a_step_on_each_new_term_lowers_it(vgg: PerceptualFeatures, term: str) -> None:
    """The gradient of each term points the right way: a small step on it alone makes it smaller."""
    torch.manual_seed(0)
    config = model_config("autopainter", **TINY, dropout=False, lambda_tv=1.0, lambda_feat=1.0)
    model = build_model("autopainter", config, perceptual=vgg).eval()
    batch = _batch(seed=1)
    optimizer = torch.optim.Adam(model.G.parameters(), lr=1e-2)
    before = model.generator_losses(batch)[term]
    for _ in range(5):
        optimizer.zero_grad()
        model.generator_losses(batch)[term].backward()
        optimizer.step()
    assert model.generator_losses(batch)[term].item() < 0.9 * before.item()


def test_segmentation_terms_come_with_autopainter_as_with_pix2pix(vgg: PerceptualFeatures) -> None:
    config = model_config("autopainter", **TINY, advseg="both")
    model = build_model("autopainter", config, seg=PixelwiseSeg(), perceptual=vgg)
    batch = {**_batch(), "real_B_labels": torch.randint(0, 135, (1, 128, 128), dtype=torch.uint8)}
    terms = model.generator_losses(batch)
    assert {"G_M", "G_Bin", "G_TV", "G_feat"} <= set(terms)
    assert {"D", "D_M", "D_Bin"} <= set(model.discriminator_losses(batch))


def test_defaults_are_the_public_codes_and_bad_options_are_refused() -> None:
    config = AutoPainterConfig()
    assert (config.arch, config.ngf, config.ndf, config.lambda_l1, config.lambda_tv, config.gan_mode,
            config.perceptual_layer) == ("unet_256", 48, 48, 50.0, 1e-3, "vanilla", "relu3_2")
    with pytest.raises(AdvsegError, match="--perceptual-layer"):
        model_config("autopainter", perceptual_layer="conv3_2")
    with pytest.raises(AdvsegError, match="--lambda-tv"):
        model_config("autopainter", lambda_tv=-1.0)
    with pytest.raises(AdvsegError, match="do not apply"):
        model_config("pix2pix", lambda_tv=1.0)
    with pytest.raises(ValueError, match="needs the VGG feature network"):
        build_model("autopainter", model_config("autopainter", **TINY))
    no_features = build_model("autopainter", model_config("autopainter", **TINY, lambda_feat=0.0))
    assert "G_feat" not in no_features.generator_losses(_batch())
