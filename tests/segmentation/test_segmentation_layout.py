"""The 135-class layout, the name mapping of 133-class models, and the derived maps."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from advseg_cli.errors import IncompatibleInputError
from advseg_cli.segmentation import (
    CLASS_NAMES,
    IS_THING,
    NUM_CLASSES,
    STUFF_IDS,
    THING_IDS,
    binary_from_labels,
    binary_from_probs,
    coco_panoptic_133_to_135,
    one_hot,
    palette,
    uint8_to_model_range,
)
from advseg_cli.segmentation.classes import COCO_STUFF_NAMES, COCO_THING_NAMES, IS_STUFF


def test_layout_matches_detectron2_metadata_positions() -> None:
    assert NUM_CLASSES == len(CLASS_NAMES) == len(IS_THING) == 135
    assert CLASS_NAMES[0] == "unlabeled"
    assert CLASS_NAMES[1] == "person" and CLASS_NAMES[80] == "toothbrush"
    assert CLASS_NAMES[81] == "things"
    assert CLASS_NAMES[82] == "banner" and CLASS_NAMES[134] == "rug-merged"
    assert [i for i, thing in enumerate(IS_THING) if thing] == list(THING_IDS) == list(range(1, 81))
    assert [i for i, stuff in enumerate(IS_STUFF) if stuff] == list(STUFF_IDS) == list(range(82, 135))


def test_model_classes_map_by_name_not_position() -> None:
    names = [*COCO_THING_NAMES, *COCO_STUFF_NAMES]
    canonical = coco_panoptic_133_to_135(names)
    assert canonical.tolist() == list(range(1, 81)) + list(range(82, 135))
    shuffled = names[:]
    random.Random(3).shuffle(shuffled)
    lut = coco_panoptic_133_to_135(shuffled)
    assert [CLASS_NAMES[label] for label in lut.tolist()] == shuffled
    # spelling differences of configs (case, underscores) still match
    assert (
        coco_panoptic_133_to_135([n.upper().replace(" ", "_") for n in names]).tolist() == canonical.tolist()
    )


@pytest.mark.parametrize(
    "names",
    [
        [*COCO_THING_NAMES, *COCO_STUFF_NAMES][:-1],  # 132 classes
        [*COCO_THING_NAMES, *COCO_STUFF_NAMES[:-1], "zebra crossing"],  # an unknown class
        [*COCO_THING_NAMES, *COCO_STUFF_NAMES[:-1], "person"],  # a duplicate
        [*COCO_THING_NAMES, *COCO_STUFF_NAMES[:-1], "things"],  # the merged class is no model class
    ],
)
def test_non_coco_panoptic_models_are_refused(names: list[str]) -> None:
    with pytest.raises(IncompatibleInputError):
        coco_panoptic_133_to_135(names)


def test_one_hot_and_binary_maps_agree() -> None:
    labels = torch.randint(0, NUM_CLASSES, (2, 7, 9), generator=torch.Generator().manual_seed(0))
    labels[0, 0, :4] = torch.tensor([0, 81, 5, 100])
    onehot = one_hot(labels)
    assert onehot.shape == (2, 135, 7, 9) and onehot.dtype == torch.float32
    assert torch.equal(onehot.argmax(1), labels) and torch.all(onehot.sum(1) == 1)

    binary = binary_from_labels(labels.to(torch.uint8))
    assert binary.shape == (2, 3, 7, 9)
    assert torch.equal(binary_from_probs(onehot), binary)
    assert binary[0, :, 0, 0].tolist() == [0, 0, 0]  # unlabeled: channel 0 stays 0 (public code)
    assert binary[0, :, 0, 1].tolist() == [0, 0, 0]  # 81 "things" is neither thing nor stuff
    assert binary[0, :, 0, 2].tolist() == [0, 1, 0]  # a thing
    assert binary[0, :, 0, 3].tolist() == [0, 0, 1]  # a stuff class
    expected_thing = (labels >= 1) & (labels <= 80)
    assert torch.equal(binary[:, 1].bool(), expected_thing)
    assert torch.equal(binary[:, 2].bool(), labels >= 82)


def test_binary_from_probs_sums_groups_and_passes_gradients() -> None:
    probs = torch.rand(1, 135, 4, 4, requires_grad=True)
    binary = binary_from_probs(probs)
    assert torch.allclose(binary[0, 1], probs[0, 1:81].sum(0))
    assert torch.allclose(binary[0, 2], probs[0, 82:].sum(0))
    assert torch.all(binary[:, 0] == 0)
    binary[:, 1].sum().backward()
    per_channel = probs.grad[0, :, 0, 0]
    assert torch.equal(per_channel, torch.tensor(IS_THING, dtype=torch.float32))


def test_one_hot_rejects_out_of_range_labels() -> None:
    with pytest.raises(ValueError, match=r"^labels must lie in 0\.\.134$"):
        one_hot(torch.full((1, 2, 2), 135))
    with pytest.raises(ValueError, match=r"^labels must be an integer tensor, got torch\.float32$"):
        one_hot(torch.zeros(1, 2, 2))  # float is not a label map
    with pytest.raises(ValueError, match=r"^labels must be \[N,H,W\], got shape \(2, 2\)$"):
        binary_from_labels(torch.zeros(2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"^probs must be \[N,135,H,W\], got shape \(1, 3, 2, 2\)$"):
        binary_from_probs(torch.zeros(1, 3, 2, 2))  # four dimensions, but not 135 classes
    with pytest.raises(ValueError, match=r"^probs must be \[N,135,H,W\], got shape \(135, 2, 2\)$"):
        binary_from_probs(torch.zeros(135, 2, 2))


def test_palette_is_fixed_and_distinct() -> None:
    """Black for unlabeled and the always-empty class 81, a colour of its own for every other class: things at
    HSV value 0.95 and saturation 0.85, stuff at 0.70 / 0.55 (up to 8-bit rounding); colorize looks it up."""
    from advseg_cli.segmentation.maps import colorize

    colors = palette()
    assert colors.shape == (135, 3) and colors.dtype == np.uint8
    assert np.array_equal(colors, palette())
    assert colors[0].tolist() == [0, 0, 0] and colors[81].tolist() == [0, 0, 0]
    labeled = [tuple(colors[i]) for i in (*THING_IDS, *STUFF_IDS)]
    assert len(set(labeled)) == len(labeled) and (0, 0, 0) not in labeled
    high, low = colors.max(axis=1).astype(float), colors.min(axis=1).astype(float)
    for index in (*THING_IDS, *STUFF_IDS):
        value, saturation = (0.95, 0.85) if IS_THING[index] else (0.70, 0.55)
        assert abs(high[index] - 255 * value) <= 0.5, index
        assert abs((high[index] - low[index]) / high[index] - saturation) < 0.01, index
    labels = np.array([[0, 1], [81, 134]])
    np.testing.assert_array_equal(colorize(labels), colors[labels])


def test_uint8_photos_become_model_range_in_either_layout() -> None:
    photos = np.random.default_rng(0).integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    photos[0, 0, 0] = [0, 128, 255]
    from_nhwc = uint8_to_model_range(photos)
    from_nchw = uint8_to_model_range(torch.from_numpy(photos).permute(0, 3, 1, 2))
    assert from_nhwc.shape == (2, 3, 5, 6) and torch.equal(from_nhwc, from_nchw)
    assert torch.allclose(from_nhwc[0, :, 0, 0], torch.tensor([-1.0, 128 / 127.5 - 1, 1.0]), atol=1e-6)
    with pytest.raises(ValueError):
        uint8_to_model_range(photos.astype(np.float32))



@pytest.mark.gpu
def test_binary_maps_of_cuda_tensors_equal_the_cpu_ones_and_stay_on_the_gpu() -> None:
    """The thing / stuff masks must be made on the maps' device (a CPU mask cannot index a CUDA tensor)."""
    from advseg_cli.segmentation.maps import binary_from_labels, binary_from_probs

    labels = torch.randint(0, 135, (2, 8, 8), dtype=torch.uint8)
    probs = torch.softmax(torch.randn(2, 135, 8, 8), dim=1)
    for function, value in ((binary_from_labels, labels), (binary_from_probs, probs)):
        on_gpu = function(value.cuda())
        assert on_gpu.device.type == "cuda"
        assert torch.allclose(on_gpu.cpu(), function(value))
