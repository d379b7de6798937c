"""D_M skips the map channels that are zero: the same outputs and gradients as the full convolution.

The reference is the same network with skipping turned off (``skip_zero_channels = False``: the plain
``nn.Sequential``); outputs and gradients must agree to float rounding (the sums over the kept channels
run in another order), and the weight gradient of a skipped channel must be exactly zero, as it is there.
"""

from __future__ import annotations

import copy

import pytest
import torch

from advseg_cli.models.advseg import build_model, model_config
from advseg_cli.models.networks import define_discriminator
from advseg_cli.segmentation.classes import NUM_CLASSES
from advseg_cli.segmentation.maps import one_hot
from advseg_cli.world.seg import ShapesSegmenter, build_network

TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def map_discriminator(conditioning: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = define_discriminator(conditioning + NUM_CLASSES, 8, 3, "instance")
    net.skip_zero_channels = True
    return net


def dense_copy(net: torch.nn.Module) -> torch.nn.Module:
    reference = copy.deepcopy(net)
    reference.skip_zero_channels = False
    return reference


def conditioned_one_hot(labels: torch.Tensor, seed: int = 1) -> torch.Tensor:
    photo = torch.randn(labels.shape[0], 3, *labels.shape[1:], generator=torch.Generator().manual_seed(seed))
    return torch.cat([photo, one_hot(labels)], 1)


def labels_of(classes: list[int], size: int = 32, batch: int = 2) -> torch.Tensor:
    picks = torch.randint(0, len(classes), (batch, size, size), generator=torch.Generator().manual_seed(2))
    return torch.tensor(classes, dtype=torch.uint8)[picks]


def test_without_an_input_gradient_the_kept_channels_are_exactly_those_holding_a_value() -> None:
    net = map_discriminator()
    images = conditioned_one_hot(labels_of([0, 7, 40, 133]))
    images[1, 3 + 90, 5, 5] = 0.25  # one pixel of one image is enough to keep its channel
    expected = [c for c in range(images.shape[1]) if bool(images[:, c].ne(0).any())]
    keep = net.channels_to_keep(images)
    assert keep is not None and keep.tolist() == expected
    assert expected == [0, 1, 2, 3 + 0, 3 + 7, 3 + 40, 3 + 90, 3 + 133]


def test_a_discriminator_step_on_sparse_maps_matches_the_full_convolution() -> None:
    net = map_discriminator()
    reference = dense_copy(net)
    images = conditioned_one_hot(labels_of([1, 12, 60, 100]))
    out, expected = net(images), reference(images)
    torch.testing.assert_close(out, expected, **TOLERANCE)
    out.square().mean().backward()
    expected.square().mean().backward()
    for (name, param), (_, ref) in zip(net.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(param.grad, ref.grad, **TOLERANCE, msg=name)
    first = net.model[0].weight.grad
    skipped = [c for c in range(images.shape[1]) if not bool(images[:, c].ne(0).any())]
    assert torch.count_nonzero(first[:, skipped]) == 0 and torch.count_nonzero(first[:, :3]) > 0


def test_a_nan_in_a_map_is_not_skipped_away() -> None:
    net = map_discriminator()
    images = conditioned_one_hot(labels_of([2, 3]))
    images[0, 3 + 50, 0, 0] = float("nan")
    assert 3 + 50 in net.channels_to_keep(images).tolist()
    assert torch.isnan(net(images)).any()


def test_with_an_input_gradient_and_no_known_channels_nothing_is_skipped() -> None:
    """A straight-through map is one-hot forward but passes a gradient to every channel: none may go."""
    net = map_discriminator()
    reference = dense_copy(net)
    images = conditioned_one_hot(labels_of([4, 9])).requires_grad_()
    assert net.channels_to_keep(images) is None
    net(images).sum().backward()
    grad = images.grad.clone()
    images.grad = None
    reference(images).sum().backward()
    assert torch.equal(grad, images.grad)
    assert torch.count_nonzero(grad[:, 3 + 20]) > 0  # a zero channel whose gradient matters


def shapes_seg() -> ShapesSegmenter:
    torch.manual_seed(3)
    return ShapesSegmenter(build_network("fcn"), torch.device("cpu")).freeze()


@pytest.mark.parametrize("model_name", ["pix2pix", "cyclegan"])
@pytest.mark.parametrize("seg_grad", ["soft", "straight"])
def test_the_generator_gradient_through_d_m_is_that_of_the_full_convolution(model_name: str, seg_grad: str) -> None:
    """With the shapes world's Seg, D_M's input in G's step is zero outside its nine classes and the
    gradient there goes nowhere: skipping them leaves G's gradient as it was."""
    seg = shapes_seg()
    torch.manual_seed(0)
    config = model_config(model_name, advseg="multi", seg_grad=seg_grad, ngf=4, ndf=4, norm="instance")
    model = build_model(model_name, config, seg, pool_seed=0)
    expected_channels = torch.cat([torch.arange(3 if model_name == "pix2pix" else 0),
                                   (3 if model_name == "pix2pix" else 0) + seg.lut.sort().values])
    assert torch.equal(model.D_M.static_channels, expected_channels)
    dense = copy.deepcopy(model)
    dense.D_M.skip_zero_channels = False
    photo = torch.rand(1, 3, 32, 32) * 2 - 1
    batch = {"real_A": torch.rand(1, model.config.sketch_channels, 32, 32) * 2 - 1, "real_B": photo,
             "real_B_labels": seg.hard_labels(photo)}
    grads = []  # per model: G's gradients of G_M, then D_M's gradients of its loss
    for m in (model, dense):
        torch.manual_seed(4)  # the same dropout draws in both
        fakes = m.translate(batch)
        m.zero_grad(set_to_none=True)
        m.generator_losses(batch, fakes)["G_M"].backward()
        grads.append([p.grad for p in m.generator_parameters()])
        d = m.discriminator_losses(batch, fakes)["D_M"]
        m.zero_grad(set_to_none=True)
        d.backward()
        grads.append([p.grad for p in m.D_M.parameters()])
    for ours, reference in ((grads[0], grads[2]), (grads[1], grads[3])):
        assert any(g is not None and torch.count_nonzero(g) > 0 for g in ours)
        # all parameters at once: a bias before an instance norm has a zero gradient up to rounding noise
        assert [g is None for g in ours] == [r is None for r in reference]  # (CycleGAN's G_B takes none from G_M)
        flat, flat_reference = (torch.cat([g.flatten() for g in grads_ if g is not None]) for grads_ in (ours, reference))
        assert (flat - flat_reference).norm() <= 1e-5 * flat_reference.norm()
