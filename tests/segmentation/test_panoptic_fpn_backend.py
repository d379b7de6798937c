"""The panoptic-fpn backend: conversion of detectron2's panoptic output to the 135 layout, soft maps.

The pure parts (the conversion, mask pasting, the checkpoint reader, the error without detectron2, which
hides it from the import system where it is installed) always run. The parts that need detectron2 run when
it is importable, on the real model-zoo architecture (Panoptic FPN R50-FPN 3x config) with random weights.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.segmentation.conftest import HAS_DETECTRON2

from advseg_cli.errors import AdvsegError, WeightsMismatchError, WeightsNotFoundError
from advseg_cli.segmentation import build_segmenter
from advseg_cli.segmentation.base import check_segmenter_weights
from advseg_cli.segmentation.panoptic_fpn import (
    INSTALL_GUIDE,
    WEIGHTS_URL,
    paste_soft_masks,
    panoptic_to_labels,
    read_state_dict,
)

needs_detectron2 = pytest.mark.skipif(not HAS_DETECTRON2, reason="detectron2 is not importable")


def test_panoptic_to_labels_on_hand_made_output() -> None:
    panoptic_seg = torch.tensor([[0, 1, 1, 2], [3, 3, 4, 4], [5, 9, 0, 2]], dtype=torch.int32)
    segments_info = [
        {"id": 1, "isthing": True, "category_id": 0, "score": 0.9, "instance_id": 0},  # person
        {"id": 2, "isthing": True, "category_id": 79, "score": 0.5, "instance_id": 3},  # toothbrush
        {"id": 3, "isthing": False, "category_id": 1, "area": 2},  # banner, first COCO stuff
        {"id": 4, "isthing": False, "category_id": 53, "area": 2},  # rug-merged, last
        {"id": 5, "isthing": False, "category_id": 21, "area": 1},  # detectron2 stuff 21 = road
    ]
    labels = panoptic_to_labels(panoptic_seg, segments_info)
    assert labels.dtype == torch.uint8
    # void stays 0; an id without an entry (9) is void too
    assert labels.tolist() == [[0, 1, 1, 80], [82, 82, 134, 134], [102, 0, 0, 80]]
    from advseg_cli.segmentation import CLASS_NAMES

    assert CLASS_NAMES[102] == "road"


@pytest.mark.parametrize(
    "info",
    [
        {"id": 1, "isthing": True, "category_id": 80},
        {"id": 1, "isthing": False, "category_id": 0},  # the merged "things" class is never a segment
        {"id": 1, "isthing": False, "category_id": 54},
    ],
)
def test_panoptic_to_labels_rejects_categories_outside_the_layout(info: dict) -> None:
    with pytest.raises(ValueError):
        panoptic_to_labels(torch.ones(2, 2, dtype=torch.int32), [info])


def test_pasting_a_mask_into_its_own_box_is_exact() -> None:
    mask = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(0))
    pasted = paste_soft_masks(mask, torch.tensor([[2.0, 1.0, 8.0, 7.0]]), 10, 12)
    assert pasted.shape == (1, 10, 12)
    assert torch.allclose(pasted[0, 1:7, 2:8], mask[0], atol=1e-6)
    outside = pasted.clone()
    outside[0, 1:7, 2:8] = 0
    assert torch.all(outside.abs() < 1e-6)
    assert paste_soft_masks(torch.zeros(0, 6, 6), torch.zeros(0, 4), 10, 12).shape == (0, 10, 12)


def test_checkpoint_reader_takes_arrays_and_refuses_code(tmp_path: Path) -> None:
    good = tmp_path / "model.pkl"
    weights = {"backbone.w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    good.write_bytes(pickle.dumps({"model": weights, "__author__": "test"}))
    state = read_state_dict(good)
    assert list(state) == ["backbone.w"] and torch.equal(state["backbone.w"], torch.arange(6.0).view(2, 3))

    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"w": Payload()}}))
    with pytest.raises(WeightsMismatchError):
        read_state_dict(evil)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.usefixtures("without_detectron2")
def test_without_detectron2_the_error_points_to_its_guide_and_the_other_backend(tmp_path: Path) -> None:
    with pytest.raises(AdvsegError) as error:
        build_segmenter("panoptic-fpn", tmp_path / "model_final_c10459.pkl", torch.device("cpu"))
    message = str(error.value)
    assert "\n" not in message and INSTALL_GUIDE in message and "mask2former" in message


@needs_detectron2
def test_missing_weights_error_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADVSEG_HOME", str(tmp_path))
    monkeypatch.setenv("ADVSEG_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as error:
        build_segmenter("panoptic-fpn", None, torch.device("cpu"))
    message = str(error.value)
    assert "\n" not in message and WEIGHTS_URL in message and "--weights" in message
    (tmp_path / "model_final_c10459.pkl").write_bytes(b"unverified")
    with pytest.raises(WeightsNotFoundError) as error:  # found in the cache, but never unpickled unnamed
        build_segmenter("panoptic-fpn", None, torch.device("cpu"))
    assert "--weights" in str(error.value) and "\n" not in str(error.value)
    # the preflight (advseg weights --need seg:panoptic-fpn) says the same without building anything
    with pytest.raises(WeightsNotFoundError, match="unpickles only a .pkl you name"):
        check_segmenter_weights("panoptic-fpn", None)
    named = tmp_path / "model_final_c10459.pkl"
    assert check_segmenter_weights("panoptic-fpn", named) == f"{named.resolve()} (explicit)"


@pytest.mark.usefixtures("without_detectron2")
def test_the_preflight_without_detectron2_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(AdvsegError, match="needs detectron2"):
        check_segmenter_weights("panoptic-fpn", tmp_path / "model_final_c10459.pkl")


# ---- with detectron2: the real architecture, random weights ----------------------------------------


def _confident_random_network(cfg):
    """The model-zoo architecture with random weights, made decisive enough to detect something.

    Random heads predict the background class, regress boxes far outside the image and give masks of
    0.5 everywhere; so the background logit is disabled, box deltas zeroed (boxes = proposals) and the
    mask logits scaled up. Everything else stays as initialised.
    """
    from advseg_cli.segmentation.panoptic_fpn import build_network

    torch.manual_seed(0)
    network = build_network(cfg)
    predictor = network.roi_heads.box_predictor
    with torch.no_grad():
        predictor.cls_score.weight[-1] = 0
        predictor.cls_score.bias[-1] = -1000
        predictor.bbox_pred.weight.zero_()
        predictor.bbox_pred.bias.zero_()
        network.roi_heads.mask_head.predictor.weight.mul_(100)
    return network


@pytest.fixture(scope="module")
def panoptic_fpn():
    pytest.importorskip("detectron2", reason="detectron2 is not importable")
    from advseg_cli.segmentation.panoptic_fpn import PanopticFPNSegmenter, panoptic_fpn_config

    cfg = panoptic_fpn_config(torch.device("cpu"))
    cfg.defrost()
    cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 64  # 4096 would hide all stuff of 96x96 images
    cfg.freeze()
    return PanopticFPNSegmenter(_confident_random_network(cfg), cfg, torch.device("cpu")).freeze()


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    batch = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(4)) * 2 - 1
    batch[1, :, 48:] = torch.tensor([0.2, 0.6, -0.8]).view(3, 1, 1)
    return batch


@needs_detectron2
def test_real_detectron2_output_converts_to_the_layout(panoptic_fpn, photos) -> None:
    assert panoptic_fpn.thresholds["roi_heads_score"] == 0.4
    assert panoptic_fpn.thresholds["instances_confidence"] == 0.4
    outputs = panoptic_fpn.detectron2_outputs(photos)
    kinds = set()
    for output in outputs:
        panoptic_seg, segments_info = output["panoptic_seg"]
        labels = panoptic_to_labels(panoptic_seg, segments_info)
        semantic = output["sem_seg"].argmax(dim=0)
        for info in segments_info:
            pixels = panoptic_seg == info["id"]
            if info["isthing"]:
                expected = 1 + int(output["instances"].pred_classes[info["instance_id"]])
                assert torch.all(labels[pixels] == expected)
            else:
                assert torch.equal(labels[pixels].long(), 81 + semantic[pixels])
            kinds.add(info["isthing"])
        assert torch.all(labels[panoptic_seg == 0] == 0)
        values = set(labels.unique().tolist())
        assert 81 not in values and values <= set(range(0, 81)) | set(range(82, 135))
    assert kinds == {True, False}  # the random model produced both things and stuff
    assert torch.equal(
        panoptic_fpn.hard_labels(photos),
        torch.stack([panoptic_to_labels(*o["panoptic_seg"]) for o in outputs]),
    )


@needs_detectron2
def test_soft_maps_match_detectron2_heads_and_pass_gradients(panoptic_fpn, photos) -> None:
    outputs = panoptic_fpn.detectron2_outputs(photos)
    pixels = photos.clone().requires_grad_(True)
    probs = panoptic_fpn.soft_probs(pixels)
    assert probs.shape == (2, 135, 96, 96)
    assert probs.min() >= 0 and probs.sum(1).max() <= 1 + 1e-5
    assert torch.all(probs[:, 0] == 0) and torch.all(probs[:, 81] == 0)
    # stuff channels are the semantic head's softmax, as detectron2 computes it
    semantic = torch.stack([o["sem_seg"] for o in outputs]).softmax(dim=1)
    assert torch.allclose(probs[:, 82:].detach(), semantic[:, 1:], atol=1e-5)
    # thing channels: S_0 * T_c / max(1, sum_c T_c), with the masks pasted by detectron2's own paster
    from detectron2.layers.mask_ops import _do_paste_mask

    with torch.no_grad():
        _, instances, _ = panoptic_fpn._raw_outputs(photos)
    for index, found in enumerate(instances):
        pasted, _ = _do_paste_mask(found.pred_masks, found.pred_boxes.tensor, 96, 96, skip_empty=False)
        evidence = torch.zeros(80, 96, 96)
        for mask, score, cls in zip(pasted, found.scores, found.pred_classes, strict=True):
            evidence[cls] += score * mask
        expected = semantic[index, 0] * evidence / evidence.sum(0).clamp_min(1)
        assert torch.allclose(probs[index, 1:81].detach(), expected, atol=1e-5)
    things = probs[:, 1:81].detach().sum(1)
    assert torch.all(things <= semantic[:, 0] + 1e-5) and things.sum() > 0

    (probs[:, 1:81].sum() + probs[:, 82:].pow(2).sum()).backward()
    assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0
    assert all(p.grad is None for p in panoptic_fpn.parameters())


@needs_detectron2
def test_soft_masks_threshold_to_detectron2_masks(panoptic_fpn, photos) -> None:
    with torch.no_grad():
        _, instances, (height, width) = panoptic_fpn._raw_outputs(photos)
    outputs = panoptic_fpn.detectron2_outputs(photos)
    compared = 0
    for found, output in zip(instances, outputs, strict=True):
        pasted = paste_soft_masks(found.pred_masks[:, 0], found.pred_boxes.tensor, height, width)
        assert torch.equal(pasted >= 0.5, output["instances"].pred_masks)
        compared += len(found)
    assert compared >= 1


@needs_detectron2
def test_weights_load_from_a_model_zoo_pickle(panoptic_fpn, tmp_path: Path) -> None:
    state = {k: v.numpy() for k, v in panoptic_fpn.network.state_dict().items()}
    path = tmp_path / "model_final_c10459.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"model": state, "__author__": "test"}, handle)
    loaded = build_segmenter("panoptic-fpn", path, torch.device("cpu"))
    assert loaded.weights_record["source"] == "explicit" and len(loaded.weights_record["sha256"]) == 64
    name = "roi_heads.mask_head.predictor.weight"
    assert torch.equal(loaded.network.state_dict()[name], panoptic_fpn.network.state_dict()[name])
    assert all(not p.requires_grad for p in loaded.parameters())

    del state[name]
    with open(path, "wb") as handle:
        pickle.dump({"model": state, "__author__": "test"}, handle)
    with pytest.raises(WeightsMismatchError) as error:
        build_segmenter("panoptic-fpn", path, torch.device("cpu"))
    assert name in str(error.value)
