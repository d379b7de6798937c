"""The shapes world's trained Seg as a backend: real weights the project trains, checked like any weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from advseg_cli.cli import main
from advseg_cli.errors import WeightsMismatchError
from advseg_cli.segmentation import build_segmenter
from advseg_cli.segmentation.base import uint8_to_model_range
from advseg_cli.segmentation.maps import one_hot
from advseg_cli.segmentation.metrics import confusion_matrix, mean_iou
from advseg_cli.world.render import WORLD_CLASS_IDS, render_scene, scene_for
from advseg_cli.world.seg import build_role_segmenter, load_network
from advseg_cli.world.seg_training import predict_world, render_split, to_world_index

SEG_FILE = "shapes-seg.safetensors"


def _photos(count: int = 4, size: int = 64) -> torch.Tensor:
    return uint8_to_model_range(np.stack([render_scene(scene_for(9, "test", i, size))[0] for i in range(count)]))


def test_the_record_holds_the_validation_miou_which_is_well_above_chance(shapes_segmenters: Path) -> None:
    record = json.loads((shapes_segmenters / f"{SEG_FILE}.run.json").read_text())
    validation = record["extra"]["validation"]
    network, _ = load_network(shapes_segmenters / SEG_FILE)
    photos, truth = render_split("seg-val", 32, 64)
    recomputed = mean_iou(confusion_matrix(predict_world(network, photos), truth, len(WORLD_CLASS_IDS)))
    assert validation["miou"] == pytest.approx(recomputed, abs=1e-9)  # the record says what the file does
    assert validation["photos"] == 32 and validation["miou"] > 0.3  # chance is ~0.03 (tests/experiments)


def test_soft_probs_are_differentiable_in_the_pixels_and_seg_takes_no_gradient(shapes_segmenters: Path) -> None:
    seg = build_segmenter("shapes", shapes_segmenters / SEG_FILE, torch.device("cpu"))
    images = _photos().requires_grad_(True)
    probs = seg.soft_probs(images)
    assert probs.shape == (4, 135, 64, 64)
    assert torch.allclose(probs.sum(1), torch.ones(4, 64, 64), atol=1e-5)
    others = [c for c in range(135) if c not in WORLD_CLASS_IDS]
    assert probs[:, others].abs().max() == 0  # only the world's classes have mass
    (probs[:, WORLD_CLASS_IDS[0]] * torch.linspace(0, 1, 64)).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in seg.parameters())


def test_hard_labels_are_the_argmax_of_the_soft_map_in_the_135_layout(shapes_segmenters: Path) -> None:
    seg = build_segmenter("shapes", shapes_segmenters / SEG_FILE, torch.device("cpu"))
    images = _photos()
    labels = seg.hard_labels(images)
    assert labels.dtype == torch.uint8 and set(labels.unique().tolist()) <= set(WORLD_CLASS_IDS)
    assert torch.equal(labels.long(), seg.soft_probs(images).argmax(1))
    hard, soft = seg.hard_and_soft(images)
    assert torch.equal(hard, labels) and torch.allclose(soft, seg.soft_probs(images))
    odd = _photos(2, 60)  # not a multiple of the network's stride: padded, then cropped back
    assert seg.hard_labels(odd).shape == (2, 60, 60)


def test_a_weights_file_that_differs_from_its_record_is_refused(shapes_segmenters: Path, tmp_path: Path) -> None:
    copy = tmp_path / SEG_FILE
    shutil.copy(shapes_segmenters / SEG_FILE, copy)
    shutil.copy(shapes_segmenters / f"{SEG_FILE}.run.json", tmp_path / f"{SEG_FILE}.run.json")
    build_role_segmenter("seg", copy, torch.device("cpu"))  # the intact copy loads
    data = bytearray(copy.read_bytes())
    data[-7] ^= 0x55  # one weight changed
    copy.write_bytes(bytes(data))
    with pytest.raises(WeightsMismatchError, match="differs from its record"):
        build_role_segmenter("seg", copy, torch.device("cpu"))
    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image

    Image.fromarray(render_scene(scene_for(0, "train", 0, 64))[0]).save(photos / "a.png")
    result = CliRunner().invoke(main, ["segcache", str(photos), str(tmp_path / "maps.h5"), "--backend", "shapes",
                                       "--weights", str(copy), "--device", "cpu"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "differs from its record" in result.output and not (tmp_path / "maps.h5").exists()


def test_without_its_record_the_weights_are_refused(shapes_segmenters: Path, tmp_path: Path) -> None:
    shutil.copy(shapes_segmenters / SEG_FILE, tmp_path / SEG_FILE)
    with pytest.raises(WeightsMismatchError, match="no record"):
        build_role_segmenter("seg", tmp_path / SEG_FILE, torch.device("cpu"))


def test_missing_weights_name_the_command_that_trains_them() -> None:
    result = CliRunner().invoke(main, ["weights", "--need", "seg:shapes"])
    assert result.exit_code == 2 and "advseg data prepare shapes" in result.output


def test_found_in_advseg_home_like_every_weights_file(shapes_segmenters: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADVSEG_HOME", str(shapes_segmenters))
    seg = build_segmenter("shapes", None, torch.device("cpu"))
    assert seg.weights_record["source"] == "cache"
    listing = CliRunner().invoke(main, ["weights"])
    assert listing.exit_code == 0 and "shapes-seg" in listing.output


def test_segcache_with_the_shapes_backend_agrees_with_the_truth_at_the_validation_miou(
        shapes_segmenters: Path, tmp_path: Path) -> None:
    args = ["data", "prepare", "shapes", str(tmp_path), "--steps", "fetch,segcache", "--world-train", "24",
            "--world-test", "2", "--world-size", "64", "--seg-out", str(shapes_segmenters), "--device", "cpu",
            "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    from advseg_cli.segcache import SegmentationCache

    world = tmp_path / "shapes"
    network, record = load_network(shapes_segmenters / SEG_FILE)
    with SegmentationCache(world / "segmaps.h5") as maps, SegmentationCache(world / "truth" / "trainB.h5") as truth:
        keys = maps.keys()
        cached = np.stack([to_world_index(maps.labels(k)) for k in keys])
        true = np.stack([to_world_index(truth.labels(k)) for k in keys])
        assert maps.metadata.backend == "shapes"
    from advseg_cli.images import read_rgb

    direct = predict_world(network, np.stack([read_rgb(world / "trainB" / k) for k in keys]))
    assert np.array_equal(cached, direct)  # the cache holds exactly Seg's maps
    cache_miou = mean_iou(confusion_matrix(cached, true, len(WORLD_CLASS_IDS)))
    assert cache_miou == pytest.approx(record["extra"]["validation"]["miou"], abs=0.12)


def test_one_hot_of_the_hard_labels_is_what_a_compat_map_is(shapes_segmenters: Path) -> None:
    seg = build_segmenter("shapes", shapes_segmenters / SEG_FILE, torch.device("cpu"))
    images = _photos(2)
    hard = one_hot(seg.hard_labels(images))
    assert torch.equal(hard.argmax(1), seg.soft_probs(images).argmax(1))


@pytest.mark.parametrize("arch", ["fcn", "unet"])
def test_features_are_what_the_classifier_reads_over_the_image_and_pass_gradients(arch: str) -> None:
    """``--seg-features`` reads the network's last activations: its 1x1 classifier applied to them, upsampled,
    gives the logits over the padded photo, and the part returned is the part over the image."""
    from advseg_cli.world.seg import ShapesSegmenter, build_network, pad_to_multiple

    torch.manual_seed(0)
    seg = ShapesSegmenter(build_network(arch), torch.device("cpu")).freeze()
    photos = (_photos(2, 64)[..., :60, :52]).clone().requires_grad_(True)  # not a multiple of 8
    features = seg.features(photos)
    padded, _ = pad_to_multiple(photos.detach())
    stride = 4 if arch == "fcn" else 2
    assert features.shape[-2:] == (-(-60 // stride), -(-52 // stride))
    with torch.no_grad():
        full = seg.network.feature_map(padded)
        logits = torch.nn.functional.interpolate(seg.network.head(full), size=padded.shape[-2:], mode="bilinear",
                                                 align_corners=False)
    torch.testing.assert_close(logits[..., :60, :52], seg.logits(photos.detach()))
    torch.testing.assert_close(features.detach(), full[..., :features.shape[-2], :features.shape[-1]])
    features.square().mean().backward()
    assert photos.grad is not None and photos.grad.abs().sum() > 0
    assert all(p.grad is None for p in seg.parameters())
