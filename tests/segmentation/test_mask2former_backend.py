"""The mask2former backend with the real transformers classes (tiny config, random weights).

Compares the batched panoptic post-processing against transformers' own
``post_process_panoptic_segmentation`` on the same network outputs, and checks the soft maps'
formula, bounds and gradients.
"""

from __future__ import annotations

import math
import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.segmentation.conftest import HAS_TRANSFORMERS

from advseg_cli.errors import WeightsMismatchError, WeightsNotFoundError
from advseg_cli.segmentation import binary_from_probs, build_segmenter
from advseg_cli.segmentation.panoptic_queries import (QueryThresholds, kept_queries_first, mask_probabilities,
                                                     panoptic_segments)

pytestmark = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers is not installed")

LABELS_ALLOWED = set(range(0, 81)) | set(range(82, 135))


class _Outputs:
    """What transformers' post-processing reads from a model output."""

    def __init__(self, class_logits: torch.Tensor, mask_logits: torch.Tensor) -> None:
        self.class_queries_logits = class_logits
        self.masks_queries_logits = mask_logits


def _reference(class_logits, mask_logits, size, thresholds: QueryThresholds, fuse: set[int]) -> list[dict]:
    from transformers import Mask2FormerImageProcessor

    return Mask2FormerImageProcessor().post_process_panoptic_segmentation(
        _Outputs(class_logits.clone(), mask_logits.clone()),
        threshold=thresholds.score,
        mask_threshold=thresholds.mask,
        overlap_mask_area_threshold=thresholds.overlap,
        label_ids_to_fuse=fuse,
        target_sizes=[size] * class_logits.shape[0],
    )


def _ids_collide(segments_info: list[dict]) -> bool:
    """transformers#23461: after a fused class repeats, a later segment may reuse an existing id."""
    owners: dict[int, tuple[int, bool]] = {}
    for info in segments_info:
        owner = (info["label_id"], info["was_fused"])
        if info["id"] in owners and (owners[info["id"]] != owner or not info["was_fused"]):
            return True
        owners[info["id"]] = owner
    return False


def _compare_with_transformers(class_logits, mask_logits, lut, thresholds, fuse_mask) -> dict[str, int]:
    """Assert our segments equal transformers' on every image; return what the cases exercised."""
    size = (int(mask_logits.shape[-2]) * 4, int(mask_logits.shape[-1]) * 4)  # the input size
    fuse = {int(i) for i in torch.nonzero(fuse_mask).flatten()}
    ours = panoptic_segments(
        class_logits, mask_probabilities(mask_logits, size, size), lut, thresholds, fuse_mask
    )
    reference = _reference(class_logits, mask_logits, size, thresholds, fuse)
    seen = {"segments": 0, "fused_repeats": 0, "rejected_by_overlap": 0, "exact": 0, "collisions": 0}
    for index, expected in enumerate(reference):
        info = ours.segments_info(index)
        # per-pixel labels never depend on segment ids: always identical
        expected_labels = torch.zeros(size, dtype=torch.long)
        for segment in expected["segments_info"]:
            expected_labels[expected["segmentation"] == segment["id"]] = int(lut[segment["label_id"]])
        if _ids_collide(expected["segments_info"]):
            # same segments in the same order; only transformers' ids are ambiguous, ours stay unique
            seen["collisions"] += 1
            assert [(s["label_id"], s["score"]) for s in info] == [
                (s["label_id"], s["score"]) for s in expected["segments_info"]
            ]
            assert not _ids_collide(info)
            continue
        assert torch.equal(ours.labels[index].long(), expected_labels)
        # transformers marks "no query kept" with -1 everywhere; we use 0 (void) like any void pixel
        assert torch.equal(ours.segment_ids[index], expected["segmentation"].long().clamp_min(0))
        assert info == expected["segments_info"]
        seen["exact"] += 1
        seen["segments"] += len({s["id"] for s in info})
        seen["fused_repeats"] += len(info) - len({s["id"] for s in info})
        kept = (ours.query_class[index] != class_logits.shape[-1] - 1) & (
            ours.query_score[index] > thresholds.score
        )
        seen["rejected_by_overlap"] += int(kept.sum()) - len(info)
    return seen


def test_loads_like_real_weights_and_is_frozen(tiny_mask2former, tiny_mask2former_dir: Path) -> None:
    seg = tiny_mask2former
    assert seg.backend == "mask2former"
    digest = hashlib.sha256((tiny_mask2former_dir / "model.safetensors").read_bytes()).hexdigest()
    assert seg.weights_record["sha256"] == digest and seg.weights_record["source"] == "explicit"
    assert seg.thresholds == {"score": 0.5, "mask": 0.5, "overlap": 0.8}
    assert all(not p.requires_grad for p in seg.parameters())
    seg.train()
    assert not seg.training and not seg.network.training


def test_batched_postprocessing_equals_transformers_on_the_model(tiny_mask2former, images) -> None:
    seg = tiny_mask2former
    batch = torch.cat([images, torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(7)) * 2 - 1])
    with torch.no_grad():
        class_logits, mask_logits, padded = seg.query_logits(batch)
    assert padded == (64, 64)
    totals: dict[str, int] = {}
    for thresholds in (QueryThresholds(), QueryThresholds(score=0.3, mask=0.4, overlap=0.6)):
        for fuse in (seg.fuse, torch.zeros_like(seg.fuse)):
            for key, value in _compare_with_transformers(
                class_logits, mask_logits, seg.lut, thresholds, fuse
            ).items():
                totals[key] = totals.get(key, 0) + value
    # every image compared exactly, with real segments and queries dropped by the overlap check
    # (fused repeats of one stuff class are exercised by the crowded synthetic case below)
    assert totals["exact"] == 32 and totals["segments"] >= 20 and totals["rejected_by_overlap"] >= 1


def test_batched_postprocessing_equals_transformers_on_crowded_queries() -> None:
    """Synthetic outputs with many confident queries of few classes: many fused repeats and overlaps."""
    generator = torch.Generator().manual_seed(11)
    num_images, num_queries, num_classes = 12, 24, 133
    class_logits = torch.randn(num_images, num_queries, num_classes + 1, generator=generator)
    chosen = torch.tensor([0, 5, 90, 100, 120, num_classes])  # 2 things, 3 stuff, the null class
    picks = chosen[torch.randint(0, len(chosen), (num_images, num_queries), generator=generator)]
    class_logits.scatter_(
        2, picks.unsqueeze(-1), 8.0 + 4 * torch.rand(num_images, num_queries, 1, generator=generator)
    )
    # each query's mask is one cell of a 4x4 grid (3x3 mask pixels); queries sharing a cell compete
    cells = torch.randint(0, 16, (num_images, num_queries), generator=generator)
    grid = F.one_hot(cells, 16).float().view(num_images, num_queries, 4, 4)
    grid = grid.repeat_interleave(3, dim=2).repeat_interleave(3, dim=3)  # [N,Q,12,12]
    mask_logits = 12 * grid - 6 + 0.5 * torch.randn(num_images, num_queries, 12, 12, generator=generator)
    lut = torch.tensor(list(range(1, 81)) + list(range(82, 135)))
    fuse = lut >= 82
    seen = _compare_with_transformers(class_logits, mask_logits, lut, QueryThresholds(), fuse)
    assert seen["exact"] >= 3 and seen["fused_repeats"] >= 4 and seen["rejected_by_overlap"] >= 4
    assert seen["collisions"] >= 1  # transformers#23461 occurs here; labels and scores still matched
    # without fusion transformers' ids never collide, so every image compares exactly
    assert (
        _compare_with_transformers(class_logits, mask_logits, lut, QueryThresholds(), torch.zeros_like(fuse))[
            "exact"
        ]
        == num_images
    )


def test_hard_labels_obey_the_135_layout(tiny_mask2former, images) -> None:
    images = torch.cat([images, torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(7)) * 2 - 1])
    labels = tiny_mask2former.hard_labels(images)
    assert labels.shape == (8, 64, 64) and labels.dtype == torch.uint8
    values = set(labels.unique().tolist())
    assert values <= LABELS_ALLOWED and 81 not in values
    assert values & set(range(1, 81)) and values & set(range(82, 135))  # things and stuff both occur
    assert torch.equal(labels, torch.cat([r.labels for r in tiny_mask2former.panoptic(images)]))


def test_odd_sizes_are_padded_and_cropped_back(tiny_mask2former) -> None:
    odd = torch.rand(2, 3, 50, 70, generator=torch.Generator().manual_seed(2)) * 2 - 1
    labels = tiny_mask2former.hard_labels(odd)
    probs = tiny_mask2former.soft_probs(odd)
    assert labels.shape == (2, 50, 70) and probs.shape == (2, 135, 50, 70)
    assert set(labels.unique().tolist()) <= LABELS_ALLOWED


def test_soft_probs_follow_the_documented_formula(tiny_mask2former, images) -> None:
    seg = tiny_mask2former
    with torch.no_grad():
        probs = seg.soft_probs(images)
        class_logits, mask_logits, _ = seg.query_logits(images)
    # the formula written out query by query (upsampling is linear, so it may come first)
    expected = torch.zeros(3, 133, 64, 64)
    for query in range(class_logits.shape[1]):
        class_probs = class_logits[:, query].softmax(-1)[:, :-1]  # [N,133]
        mask = F.interpolate(mask_logits[:, query : query + 1].sigmoid(), size=(64, 64), mode="bilinear")
        expected += class_probs[:, :, None, None] * mask
    expected = expected / torch.maximum(expected.sum(1, keepdim=True), torch.ones(1))
    assert torch.allclose(probs[:, seg.lut], expected, atol=1e-5)
    assert torch.all(probs[:, 0] == 0) and torch.all(probs[:, 81] == 0)
    assert probs.min() >= 0 and probs.sum(1).max() <= 1 + 1e-5


def test_soft_probs_pass_gradients_to_pixels_not_to_weights(tiny_mask2former, images) -> None:
    seg = tiny_mask2former
    pixels = images.clone().requires_grad_(True)
    probs = seg.soft_probs(pixels)
    target = torch.zeros_like(probs)
    target[:, 82] = 1
    loss = F.mse_loss(probs, target) + F.mse_loss(binary_from_probs(probs)[:, 1], torch.ones(3, 64, 64))
    loss.backward()
    assert pixels.grad is not None and torch.isfinite(pixels.grad).all()
    assert pixels.grad.abs().sum() > 0 and (pixels.grad[1].abs().sum() > 0)
    assert all(p.grad is None for p in seg.parameters())


def test_missing_weights_error_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("ADVSEG_OFFLINE", "1")
    monkeypatch.setenv("ADVSEG_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFoundError) as error:
        build_segmenter("mask2former", None, torch.device("cpu"))
    message = str(error.value)
    assert "\n" not in message
    assert "save_pretrained" in message and "--weights" in message
    assert "facebook/mask2former-swin-tiny-coco-panoptic" in message

    with pytest.raises(WeightsNotFoundError) as error:
        build_segmenter("mask2former", tmp_path / "nowhere", torch.device("cpu"))
    assert "\n" not in str(error.value) and "nowhere" in str(error.value)


def test_pickled_weights_are_refused(tmp_path: Path, tiny_mask2former_dir: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny_mask2former_dir / "config.json").read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    with pytest.raises(WeightsMismatchError) as error:
        build_segmenter("mask2former", folder, torch.device("cpu"))
    assert "safetensors" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("damage", ["drop a tensor", "change a shape"])
def test_weights_that_do_not_fit_are_refused(tmp_path: Path, tiny_mask2former_dir: Path, damage: str) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "damaged"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny_mask2former_dir / "config.json").read_bytes())
    tensors = load_file(tiny_mask2former_dir / "model.safetensors")
    if damage == "drop a tensor":
        del tensors[sorted(tensors)[0]]
    else:
        tensors["class_predictor.weight"] = torch.zeros(134, 16)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsMismatchError) as error:
        build_segmenter("mask2former", folder, torch.device("cpu"))
    assert "\n" not in str(error.value)


@pytest.mark.gpu
def test_cuda_results_match_cpu(tiny_mask2former_dir: Path, images) -> None:
    cpu = build_segmenter("mask2former", tiny_mask2former_dir, torch.device("cpu"))
    cuda = build_segmenter("mask2former", tiny_mask2former_dir, torch.device("cuda"))
    labels = cuda.hard_labels(images.cuda())
    assert labels.device.type == "cuda"
    agreement = (labels.cpu() == cpu.hard_labels(images)).float().mean()
    assert agreement > 0.99  # the same rules; only float rounding at ties may differ
    probs = cuda.soft_probs(images.cuda())
    assert torch.allclose(probs.cpu(), cpu.soft_probs(images), atol=1e-4)


def test_dropping_unkept_queries_first_changes_no_result(tiny_mask2former, images) -> None:
    """panoptic() post-processes only the queries that can win; labels, ids and segment lists must be
    those of the post-processing over all queries, also on a batch whose images keep different counts."""
    seg = tiny_mask2former
    batch = torch.cat([images, torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(7)) * 2 - 1])
    with torch.no_grad():
        class_logits, mask_logits, padded = seg.query_logits(batch)
        full = panoptic_segments(class_logits, mask_probabilities(mask_logits, (64, 64), padded), seg.lut,
                                 seg.query_thresholds, seg.fuse)
        fast = seg.panoptic(batch)[0]
    chosen, _ = kept_queries_first(class_logits, mask_logits, seg.query_thresholds.score)
    assert chosen.shape[1] < class_logits.shape[1]  # the shortcut was taken
    assert torch.equal(fast.labels, full.labels) and torch.equal(fast.segment_ids, full.segment_ids)
    assert [fast.segments_info(i) for i in range(len(batch))] == [full.segments_info(i) for i in range(len(batch))]


def test_features_are_the_pixel_decoders_mask_features_of_the_image_and_pass_gradients(tiny_mask2former) -> None:
    """``--seg-features`` reads what transformers' full forward reports as ``pixel_decoder_last_hidden_state``
    (the stride-4 map every query's mask is a product with), cropped to the part over an odd-sized image."""
    seg = tiny_mask2former
    odd = (torch.rand(2, 3, 50, 70, generator=torch.Generator().manual_seed(3)) * 2 - 1).requires_grad_(True)
    features = seg.features(odd)
    with torch.no_grad():
        pixels, padded = seg._network_input(odd)
        reference = seg.network(pixel_values=pixels).pixel_decoder_last_hidden_state
    stride = padded[1] // reference.shape[-1]
    assert stride == 4 and features.shape[-2:] == (math.ceil(50 / 4), math.ceil(70 / 4))
    torch.testing.assert_close(features.detach(), reference[..., :13, :18])
    features.square().mean().backward()
    assert odd.grad is not None and odd.grad.abs().sum() > 0
    assert all(p.grad is None for p in seg.parameters())
