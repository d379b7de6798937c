"""colorize computes exactly the generator's forward pass on the training-time preprocessing, for every
kind of CHECKPOINT (public-code files of both layouts, our checkpoint files, run folders)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import pytest
from PIL import Image

from advseg_cli.colorize import ColorizeConfig, colorize_folder, load_generator
from advseg_cli.files import sha256_file
from advseg_cli.models.networks import ResnetGenerator, UnetGenerator
from tests.colorize.kit import (CPU, NAMES, assert_equal_up_to_summation_order, png, result_of, rounded, save_public,
                                tiny_generator, trained_generator, training_input, write_sketches)
from tests.models.test_public_checkpoints import advsegloss_resnet_layout, functional_resnet, randomised_state


@torch.no_grad()
def test_outputs_equal_the_generators_forward_exactly(sketches: Path, public_resnet: Path, tmp_path: Path) -> None:
    generator = tiny_generator("resnet_6blocks", "instance", seed=3)  # the network saved in public_resnet
    out = tmp_path / "out"
    summary = colorize_folder(public_resnet, sketches, out, ColorizeConfig(size=32, batch_size=3, **CPU))
    assert (summary.done, summary.skipped, summary.failed) == (3, 0, 0)
    assert result_of(out, NAMES[0]).std() > 10  # a picture, not a flat grey
    for name in NAMES:
        expected = rounded(generator(training_input(sketches / name, 32)))
        assert_equal_up_to_summation_order(result_of(out, name), expected, name)
    record = json.loads((out / "advseg-run.json").read_text())
    assert record["stage"] == "colorize" and record["status"] == "complete"
    assert record["options"]["checkpoint_sha256"] == sha256_file(public_resnet)
    assert record["weights"][0]["sha256"] == sha256_file(public_resnet)
    assert record["options"]["checkpoint_kind"] == "public-generator"
    assert record["options"]["test_mode"] == "deterministic" and record["options"]["eval_mode"] is True
    assert record["options"]["generator"]["arch"] == "resnet_6blocks" and record["options"]["size"] == 32


def test_batching_does_not_change_a_result(sketches: Path, public_resnet: Path, tmp_path: Path) -> None:
    colorize_folder(public_resnet, sketches, tmp_path / "one", ColorizeConfig(size=32, batch_size=1, **CPU))
    colorize_folder(public_resnet, sketches, tmp_path / "three", ColorizeConfig(size=32, batch_size=3, **CPU))
    for name in NAMES:
        assert np.array_equal(result_of(tmp_path / "one", name), result_of(tmp_path / "three", name))


def test_sketches_in_any_image_mode_are_read_as_gray(tmp_path: Path, public_resnet: Path) -> None:
    """The same sketch as gray PNG, RGB PNG, RGBA PNG, palette PNG and 16-bit PNG gives one result."""
    folder = write_sketches(tmp_path / "modes", {"gray.png": ("rocket", 32, 32)})
    gray = png(folder / "gray.png")
    Image.fromarray(gray).convert("RGB").save(folder / "rgb.png")
    Image.fromarray(gray).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(gray).convert("P").save(folder / "palette.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "sixteen.png")
    out = tmp_path / "out"
    summary = colorize_folder(public_resnet, folder, out, ColorizeConfig(size=32, **CPU))
    assert summary.done == 5 and summary.failed == 0
    reference = result_of(out, "gray.png")
    assert reference.shape == (32, 32, 3)
    for name in ("rgb.png", "rgba.png", "palette.png", "sixteen.png"):
        assert np.array_equal(result_of(out, name), reference), name


@torch.no_grad()
def test_public_advsegloss_layout_matches_the_public_architecture(sketches: Path, tmp_path: Path) -> None:
    """The AdvSegLoss repository's layout (model / model_decode / model_out + unused fc branch), computed
    directly from the file's tensors by the public architecture (tests/models' functional reference)."""
    torch.manual_seed(0)
    state = randomised_state(advsegloss_resnet_layout(3, 3, 4, "instance", False, 6), seed=11)
    checkpoint = tmp_path / "latest_net_G_A.pth"
    torch.save(state, checkpoint)
    out = tmp_path / "out"
    colorize_folder(checkpoint, sketches, out, ColorizeConfig(size=32, batch_size=2, **CPU))
    record = json.loads((out / "advseg-run.json").read_text())
    assert record["extra"]["checkpoint"]["layout"] == "advsegloss-resnet"
    for name in NAMES:
        direct = functional_resnet(state, training_input(sketches / name, 32), n_blocks=6, norm="instance",
                                   dropout=False, decode=lambda j: f"model_decode.{j}", out_conv="model_out.1")
        difference = np.abs(result_of(out, name).astype(int) - rounded(direct).astype(int))
        # Two float32 computations of one function (1e-5 apart) may round a few values differently.
        assert difference.max() <= 1 and (difference == 0).mean() > 0.99, name


def test_explicit_arch_and_norm_for_a_public_file(sketches: Path, public_resnet: Path, tmp_path: Path) -> None:
    loaded = load_generator(public_resnet, arch="resnet_6blocks", norm="instance", dropout=False)
    assert loaded.spec.arch == "resnet_6blocks" and loaded.spec.ngf == 4 and loaded.layout == "cyclegan-resnet"
    colorize_folder(public_resnet, sketches, tmp_path / "a", ColorizeConfig(size=32, **CPU))
    colorize_folder(public_resnet, sketches, tmp_path / "b",
                    ColorizeConfig(size=32, arch="resnet_6blocks", norm="instance", **CPU))
    assert np.array_equal(result_of(tmp_path / "a", NAMES[0]), result_of(tmp_path / "b", NAMES[0]))


@torch.no_grad()
def test_a_run_folder_colorizes_at_its_trained_size(pix2pix_run: Path, sketches: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = colorize_folder(pix2pix_run, sketches, out, ColorizeConfig(batch_size=2, **CPU))
    assert summary.size == 32  # tiny_config trains at crop 32 (load 36)
    latest = pix2pix_run / "checkpoints" / "latest.pt"
    generator = trained_generator(latest)  # batch norm with running statistics, dropout off: eval mode
    assert result_of(out, NAMES[0]).std() > 10  # a picture, not the flat grey of an untrained network
    for name in NAMES:
        expected = rounded(generator(training_input(sketches / name, 32)))
        assert_equal_up_to_summation_order(result_of(out, name), expected, name)
    record = json.loads((out / "advseg-run.json").read_text())
    assert record["options"]["checkpoint"] == str(latest.resolve())
    assert record["options"]["checkpoint_kind"] == "run-folder"
    assert record["extra"]["checkpoint"]["model"] == "pix2pix" and record["extra"]["checkpoint"]["step"] == 2
    assert record["options"]["generator"]["norm"] == "batch" and record["options"]["generator"]["dropout"] is True


@torch.no_grad()
def test_epoch_and_checkpoint_file(pix2pix_run: Path, sketches: Path, tmp_path: Path) -> None:
    snapshot = pix2pix_run / "checkpoints" / "epoch_001.pt"
    colorize_folder(pix2pix_run, sketches, tmp_path / "epoch1", ColorizeConfig(epoch=1, **CPU))
    colorize_folder(snapshot, sketches, tmp_path / "file", ColorizeConfig(**CPU))
    colorize_folder(pix2pix_run, sketches, tmp_path / "latest", ColorizeConfig(**CPU))
    expected = rounded(trained_generator(snapshot)(training_input(sketches / NAMES[0], 32)))
    assert_equal_up_to_summation_order(result_of(tmp_path / "epoch1", NAMES[0]), expected, "epoch 1")
    assert_equal_up_to_summation_order(result_of(tmp_path / "file", NAMES[0]), expected, "file")
    assert not np.array_equal(result_of(tmp_path / "latest", NAMES[0]), expected)  # step 2 differs from step 1
    record = json.loads((tmp_path / "file" / "advseg-run.json").read_text())
    assert record["options"]["checkpoint_kind"] == "advseg-checkpoint"


@torch.no_grad()
def test_size_zero_keeps_odd_input_sizes(tmp_path: Path, public_resnet: Path) -> None:
    """37x45 is fed at 36x44 (nearest multiples of 4) and the result is resized back to 37x45."""
    folder = write_sketches(tmp_path / "odd", {"tall.png": ("astronaut", 37, 45), "wide.png": ("coffee", 50, 30),
                                               "ok.png": ("chelsea", 40, 32), "sub/other.png": ("rocket", 37, 45)})
    out = tmp_path / "out"
    summary = colorize_folder(public_resnet, folder, out, ColorizeConfig(size=0, batch_size=4, **CPU))
    assert summary.done == 4 and summary.size == 0
    for name, (width, height) in {"tall.png": (37, 45), "wide.png": (50, 30), "ok.png": (40, 32),
                                  "sub/other.png": (37, 45)}.items():
        assert result_of(out, name).shape == (height, width, 3), name
    generator = tiny_generator("resnet_6blocks", "instance", seed=3)
    gray = png(folder / "tall.png")
    fed = np.array(Image.fromarray(gray).resize((36, 44), Image.BICUBIC))
    network = generator(torch.from_numpy(fed).float().div(127.5).sub(1)[None, None].expand(1, 3, -1, -1))
    expected = np.asarray(Image.fromarray(rounded(network)).resize((37, 45), Image.BICUBIC))
    assert_equal_up_to_summation_order(result_of(out, "tall.png"), expected, "tall.png")
    # A size the network takes as it is goes through untouched: no resize either way.
    exact = rounded(generator(torch.from_numpy(np.array(png(folder / "ok.png"))).float().div(127.5).sub(1)[None, None]
                              .expand(1, 3, -1, -1)))
    assert np.array_equal(result_of(out, "ok.png"), exact)


# arch -> (sketch width, height), the (height, width) colorize --size 0 must feed: the nearest multiples of 4
# (ResNet: two stride-2 levels) or of the U-Net's nominal side, halves up. Written out, not computed.
FEED_SIZES = {"resnet_6blocks": ((37, 45), (44, 36)), "resnet_9blocks": ((50, 30), (32, 52)),
              "unet_128": ((200, 100), (128, 256)), "unet_256": ((300, 500), (512, 256))}


@contextlib.contextmanager
def generator_inputs() -> Iterator[list[tuple[int, ...]]]:
    """The shapes of the inputs every generator's forward receives in the block: what colorize really feeds,
    which the final (resized back) output cannot show."""
    shapes: list[tuple[int, ...]] = []

    def record(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if isinstance(module, (ResnetGenerator, UnetGenerator)):
            shapes.append(tuple(args[0].shape))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        yield shapes
    finally:
        handle.remove()


@torch.no_grad()
@pytest.mark.parametrize("arch", sorted(FEED_SIZES))
def test_size_zero_feeds_each_architecture_its_nearest_accepted_size(tmp_path: Path, arch: str) -> None:
    (width, height), (fed_h, fed_w) = FEED_SIZES[arch]
    generator = tiny_generator(arch, "instance" if arch.startswith("resnet") else "batch", ngf=2, seed=5)
    checkpoint = save_public(generator, tmp_path / f"{arch}_net_G.pth")
    folder = write_sketches(tmp_path / "odd", {"a.png": ("astronaut", width, height)})
    out = tmp_path / "out"
    with generator_inputs() as shapes:
        colorize_folder(checkpoint, folder, out, ColorizeConfig(size=0, **CPU))
    assert shapes == [(1, 3, fed_h, fed_w)], f"{arch}: fed {shapes}"
    fed = np.array(Image.fromarray(png(folder / "a.png")).resize((fed_w, fed_h), Image.BICUBIC))
    network = generator(torch.from_numpy(fed).float().div(127.5).sub(1)[None, None].expand(1, 3, -1, -1))
    expected = np.asarray(Image.fromarray(rounded(network)).resize((width, height), Image.BICUBIC))
    assert_equal_up_to_summation_order(result_of(out, "a.png"), expected, arch)
    record = json.loads((out / "advseg-run.json").read_text())
    assert record["options"]["generator"]["arch"] == arch
