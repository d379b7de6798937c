"""Public generator files load into our generators and compute what the public networks compute.

The public layouts are reproduced here by small test-local module trees that have the public code's
module names, indices and shapes (read from the public repositories' networks files), filled with
random weights and random batch-norm statistics, saved with ``torch.save`` like the public code saves
them. After loading a file into our generator, our forward is compared with a direct functional
computation (F.conv2d, F.batch_norm, ...) written from the public architecture with the file's own
tensors, looked up by their public names. Tolerance: 1e-5 absolute on tanh outputs (float32; the
two computations use the same kernels, in a different module structure).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advseg_cli.errors import WeightsMismatchError, WeightsNotFoundError
from advseg_cli.models.networks import GeneratorSpec, define_generator
from advseg_cli.models.public_checkpoints import (
    ADVSEGLOSS_RESNET,
    CYCLEGAN_RESNET,
    CYCLEGAN_UNET,
    generator_from_public,
    load_public_generator,
)

ATOL = 1e-5

# ----------------------------------------------------------------------------------------------------
# Test-local reproductions of the public LAYOUTS (names, indices, shapes), not of their code.


def _norm(kind: str, channels: int, old_instance_stats: bool = False) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    # Old PyTorch InstanceNorm kept running statistics; track_running_stats=True reproduces those keys.
    return nn.InstanceNorm2d(channels, track_running_stats=old_instance_stats)


class _Block(nn.Module):
    def __init__(self, dim: int, norm: str, dropout: bool, old_stats: bool) -> None:
        super().__init__()
        bias = norm != "batch"
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), _norm(norm, dim, old_stats), nn.ReLU()]
        layers += [nn.Dropout(0.5)] if dropout else []
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), _norm(norm, dim, old_stats)]
        self.conv_block = nn.Sequential(*layers)


def _encoder(in_ch: int, ngf: int, norm: str, dropout: bool, n_blocks: int, old_stats: bool) -> list[nn.Module]:
    bias = norm != "batch"
    layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7, bias=bias), _norm(norm, ngf, old_stats), nn.ReLU()]
    for mult in (1, 2):
        layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, 2, 1, bias=bias), _norm(norm, ngf * mult * 2, old_stats),
                   nn.ReLU()]
    return layers + [_Block(ngf * 4, norm, dropout, old_stats) for _ in range(n_blocks)]


def _decoder(ngf: int, norm: str, old_stats: bool) -> list[nn.Module]:
    bias = norm != "batch"
    layers: list[nn.Module] = []
    for mult in (4, 2):
        layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, 2, 1, output_padding=1, bias=bias),
                   _norm(norm, ngf * mult // 2, old_stats), nn.ReLU()]
    return layers


def advsegloss_resnet_layout(in_ch: int, out_ch: int, ngf: int, norm: str, dropout: bool, n_blocks: int) -> nn.Module:
    """model / model_decode / model_fc_prep / model_fc / model_out, as the AdvSegLoss ResnetGenerator."""
    root = nn.Module()
    bias = norm != "batch"
    root.model = nn.Sequential(*_encoder(in_ch, ngf, norm, dropout, n_blocks, False))
    root.model_decode = nn.Sequential(*_decoder(ngf, norm, False))
    root.model_fc_prep = nn.Sequential(
        nn.Conv2d(ngf * 4, ngf * 2, 3, 2, 1, bias=bias), _norm(norm, ngf * 2), nn.ReLU(),
        nn.Conv2d(ngf * 2, ngf, 3, 2, 1, bias=bias), _norm(norm, ngf), nn.ReLU(), nn.AdaptiveAvgPool2d((4, 4)))
    root.model_fc = nn.Sequential(nn.Linear(ngf * 16, 256), nn.ReLU(), nn.Linear(256, out_ch))
    root.model_out = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_ch, 7))
    return root


def cyclegan_resnet_layout(in_ch: int, out_ch: int, ngf: int, norm: str, dropout: bool, n_blocks: int,
                           old_instance_stats: bool = False) -> nn.Module:
    """One ``model`` Sequential, as the CycleGAN code base's ResnetGenerator."""
    root = nn.Module()
    root.model = nn.Sequential(*_encoder(in_ch, ngf, norm, dropout, n_blocks, old_instance_stats),
                               *_decoder(ngf, norm, old_instance_stats),
                               nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_ch, 7), nn.Tanh())
    return root


class _UnetLevel(nn.Module):
    def __init__(self, outer: int, inner: int, sub: nn.Module | None, in_ch: int | None = None,
                 outermost: bool = False) -> None:
        super().__init__()
        in_ch = outer if in_ch is None else in_ch
        down = nn.Conv2d(in_ch, inner, 4, 2, 1, bias=False)
        if outermost:
            layers = [down, sub, nn.ReLU(), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh()]
        elif sub is None:
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=False),
                      nn.BatchNorm2d(outer)]
        else:
            layers = [nn.LeakyReLU(0.2), down, nn.BatchNorm2d(inner), sub, nn.ReLU(),
                      nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=False), nn.BatchNorm2d(outer), nn.Dropout(0.5)]
        self.model = nn.Sequential(*layers)


def cyclegan_unet_layout(in_ch: int, out_ch: int, num_downs: int, ngf: int) -> nn.Module:
    """Nested ``model.model.N`` blocks with batch norm and dropout, as the code base's UnetGenerator."""
    level = _UnetLevel(ngf * 8, ngf * 8, None)
    for _ in range(num_downs - 5):
        level = _UnetLevel(ngf * 8, ngf * 8, level)
    for outer, inner in ((ngf * 4, ngf * 8), (ngf * 2, ngf * 4), (ngf, ngf * 2)):
        level = _UnetLevel(outer, inner, level)
    root = nn.Module()
    root.model = _UnetLevel(out_ch, ngf, level, in_ch=in_ch, outermost=True)
    return root


def randomised_state(module: nn.Module, seed: int) -> dict[str, Tensor]:
    """Random weights and random (valid) batch-norm statistics, so that every tensor matters."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=generator) + 0.5
        elif key.endswith("weight") and value.dim() == 1:  # norm scale
            state[key] = 1 + 0.2 * torch.randn(value.shape, generator=generator)
        else:
            fan_in = value[0].numel() if value.dim() > 1 else 10
            state[key] = torch.randn(value.shape, generator=generator) * (0.8 / fan_in ** 0.5)
    return state


# ----------------------------------------------------------------------------------------------------
# Direct functional computation of the public ResNet generator with the file's tensors.


def functional_resnet(sd: dict[str, Tensor], x: Tensor, *, n_blocks: int, norm: str, dropout: bool,
                      decode: Callable[[int], str], out_conv: str) -> Tensor:
    def normalise(h: Tensor, key: str) -> Tensor:
        if norm == "batch":
            return F.batch_norm(h, sd[f"{key}.running_mean"], sd[f"{key}.running_var"], sd[f"{key}.weight"],
                                sd[f"{key}.bias"], training=False, eps=1e-5)
        return F.instance_norm(h, eps=1e-5)

    def conv(h: Tensor, key: str, stride: int = 1, padding: int = 0) -> Tensor:
        return F.conv2d(h, sd[f"{key}.weight"], sd.get(f"{key}.bias"), stride, padding)

    def up(h: Tensor, key: str) -> Tensor:
        return F.conv_transpose2d(h, sd[f"{key}.weight"], sd.get(f"{key}.bias"), 2, 1, output_padding=1)

    h = F.relu(normalise(conv(F.pad(x, (3, 3, 3, 3), mode="reflect"), "model.1"), "model.2"))
    h = F.relu(normalise(conv(h, "model.4", 2, 1), "model.5"))
    h = F.relu(normalise(conv(h, "model.7", 2, 1), "model.8"))
    second = 6 if dropout else 5  # eval mode: dropout is the identity
    for block in range(n_blocks):
        key = f"model.{10 + block}.conv_block"
        r = F.relu(normalise(conv(F.pad(h, (1, 1, 1, 1), mode="reflect"), f"{key}.1"), f"{key}.2"))
        r = normalise(conv(F.pad(r, (1, 1, 1, 1), mode="reflect"), f"{key}.{second}"), f"{key}.{second + 1}")
        h = h + r
    h = F.relu(normalise(up(h, decode(0)), decode(1)))
    h = F.relu(normalise(up(h, decode(3)), decode(4)))
    return torch.tanh(conv(F.pad(h, (3, 3, 3, 3), mode="reflect"), out_conv))


def functional_unet(sd: dict[str, Tensor], x: Tensor, depth: int) -> Tensor:
    """The pix2pix U-Net: x -> cat(x, up(inner(down(LeakyReLU(x))))) per level, tanh(up(ReLU(...))) outermost."""
    def bn(h: Tensor, key: str) -> Tensor:
        return F.batch_norm(h, sd[f"{key}.running_mean"], sd[f"{key}.running_var"], sd[f"{key}.weight"],
                            sd[f"{key}.bias"], training=False, eps=1e-5)

    def down(h: Tensor, key: str) -> Tensor:
        return F.conv2d(h, sd[f"{key}.weight"], sd.get(f"{key}.bias"), 2, 1)

    def up(h: Tensor, key: str) -> Tensor:
        return F.conv_transpose2d(h, sd[f"{key}.weight"], sd.get(f"{key}.bias"), 2, 1)

    def level(h: Tensor, key: str, index: int) -> Tensor:
        activated = F.leaky_relu(h, 0.2)
        if index == depth - 1:
            inner = bn(up(F.relu(down(activated, f"{key}.1")), f"{key}.3"), f"{key}.4")
        else:
            inner = bn(down(activated, f"{key}.1"), f"{key}.2")
            inner = level(inner, f"{key}.3.model", index + 1)
            inner = bn(up(F.relu(inner), f"{key}.5"), f"{key}.6")
        return torch.cat([h, inner], 1)

    h = down(x, "model.model.0")
    h = level(h, "model.model.1.model", 1)
    return torch.tanh(up(F.relu(h), "model.model.3"))


def assert_informative(output: Tensor) -> None:
    """The comparison means something only where tanh is not saturated and the output varies."""
    assert float((output.abs() > 0.95).float().mean()) < 0.05 and float(output.std()) > 0.05


def save(state: dict[str, Tensor], path: Path, prefix: str = "") -> Path:
    torch.save({prefix + key: value for key, value in state.items()}, path)
    return path


# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm,dropout", [("instance", False), ("batch", True)])
def test_advsegloss_resnet_file_loads_and_matches_the_functional_network(tmp_path: Path, norm: str,
                                                                         dropout: bool) -> None:
    state = randomised_state(advsegloss_resnet_layout(3, 3, 4, norm, dropout, 9), seed=1)
    path = save(state, tmp_path / "latest_net_G_A.pth")
    ours = define_generator("resnet_9blocks", 3, 3, ngf=4, norm=norm, dropout=dropout)
    info = load_public_generator(path, ours)
    assert info.layout == ADVSEGLOSS_RESNET
    assert info.spec == GeneratorSpec("resnet_9blocks", 3, 3, 4, norm, dropout)
    assert set(info.ignored_keys) == {key for key in state if key.startswith(("model_fc_prep.", "model_fc."))}
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    expected = functional_resnet(state, x, n_blocks=9, norm=norm, dropout=dropout,
                                 decode=lambda j: f"model_decode.{j}", out_conv="model_out.1")
    with torch.no_grad():
        got = ours.eval()(x)
    assert_informative(expected)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_cyclegan_resnet_file_with_dataparallel_prefix_and_old_instance_stats(tmp_path: Path) -> None:
    layout = cyclegan_resnet_layout(3, 3, 4, "instance", False, 6, old_instance_stats=True)
    state = randomised_state(layout, seed=2)
    assert any(key.endswith("running_mean") for key in state)  # the stale statistics are in the file
    path = save(state, tmp_path / "200_net_G.pth", prefix="module.")
    ours = define_generator("resnet_6blocks", 3, 3, ngf=4, norm="instance")
    info = load_public_generator(path, ours)
    assert info.layout == CYCLEGAN_RESNET
    assert info.ignored_keys and all(key.endswith(("running_mean", "running_var", "num_batches_tracked"))
                                     for key in info.ignored_keys)
    x = torch.rand(1, 3, 24, 24) * 2 - 1
    expected = functional_resnet(state, x, n_blocks=6, norm="instance", dropout=False,
                                 decode=lambda j: f"model.{16 + j}", out_conv="model.23")
    assert_informative(expected)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), expected, atol=ATOL, rtol=0)


def test_cyclegan_unet_file_matches_the_functional_network(tmp_path: Path) -> None:
    state = randomised_state(cyclegan_unet_layout(3, 3, 7, ngf=2), seed=3)
    path = save(state, tmp_path / "latest_net_G.pth")
    ours, info = generator_from_public(path, dropout=True)
    assert info.layout == CYCLEGAN_UNET
    assert ours.spec == GeneratorSpec("unet_128", 3, 3, 2, "batch", True)
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    expected = functional_unet(state, x, depth=7)
    assert_informative(expected)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), expected, atol=ATOL, rtol=0)


def test_generator_from_public_builds_what_the_file_describes(tmp_path: Path) -> None:
    state = randomised_state(advsegloss_resnet_layout(1, 3, 4, "batch", True, 6), seed=4)
    ours, info = generator_from_public(save(state, tmp_path / "g.pth"))
    assert ours.spec == GeneratorSpec("resnet_6blocks", 1, 3, 4, "batch", True)
    x = torch.rand(1, 1, 16, 16) * 2 - 1
    expected = functional_resnet(state, x, n_blocks=6, norm="batch", dropout=True,
                                 decode=lambda j: f"model_decode.{j}", out_conv="model_out.1")
    assert_informative(expected)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), expected, atol=ATOL, rtol=0)


def test_mismatched_architecture_names_the_file_layout_and_options(tmp_path: Path) -> None:
    path = save(randomised_state(advsegloss_resnet_layout(3, 3, 4, "batch", True, 9), seed=5), tmp_path / "g.pth")
    with pytest.raises(WeightsMismatchError) as error:
        load_public_generator(path, define_generator("resnet_6blocks", 3, 3, ngf=4, norm="instance"))
    message = str(error.value)
    assert str(path) in message and ADVSEGLOSS_RESNET in message
    assert "--arch resnet_9blocks --norm batch --ngf 4 --dropout" in message
    assert "--arch resnet_6blocks --norm instance" in message  # what the refused generator was built with


def test_mismatched_width_and_channels_are_refused(tmp_path: Path) -> None:
    path = save(randomised_state(cyclegan_resnet_layout(1, 3, 4, "instance", False, 9), seed=6), tmp_path / "g.pth")
    with pytest.raises(WeightsMismatchError, match="1 -> 3 channels"):
        load_public_generator(path, define_generator("resnet_9blocks", 3, 3, ngf=4))
    with pytest.raises(WeightsMismatchError, match="another shape"):
        load_public_generator(path, define_generator("resnet_9blocks", 1, 3, ngf=8))


def test_unknown_files_are_refused_clearly(tmp_path: Path) -> None:
    generator = define_generator("resnet_6blocks", 3, 3, ngf=4)
    with pytest.raises(WeightsNotFoundError, match="no such"):
        load_public_generator(tmp_path / "missing.pth", generator)
    other = save({"features.0.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(WeightsMismatchError, match="not a generator of a known public layout"):
        load_public_generator(other, generator)
    nested = tmp_path / "checkpoint.pt"
    torch.save({"step": 3, "G": {"model.1.weight": torch.zeros(1)}}, nested)
    with pytest.raises(WeightsMismatchError, match="not tensors"):
        load_public_generator(nested, generator)


class _Payload:
    """Unpickling this would create a file: a file that runs code when loaded unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def test_a_file_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil_net_G.pth"
    with path.open("wb") as handle:
        pickle.dump({"model.1.weight": _Payload(marker)}, handle, protocol=2)
    with pytest.raises(WeightsMismatchError, match="weights_only"):
        load_public_generator(path, define_generator("resnet_6blocks", 3, 3, ngf=4))
    assert not marker.exists()
