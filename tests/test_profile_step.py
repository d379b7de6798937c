"""bench/profile_step.py's attribution: every backward node is counted for the network its forward op ran in.

A two-network model whose parts are told apart by their ops (A holds the only convolution, B the only
ReLU): the profile must put ConvolutionBackward under A, ReluBackward under B and the loss's own backward
under "losses", from the sequence numbers the profiler records, not from names.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from bench.profile_step import BACKWARD_PREFIX, NetworkRanges, attribute, forward_networks


class TwoNetworks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.A = nn.Conv2d(3, 4, 3)
        self.B = nn.ReLU()


def profiled_step() -> tuple[list, TwoNetworks]:
    torch.manual_seed(0)
    model = TwoNetworks()
    ranges = NetworkRanges(model)
    images = torch.randn(1, 3, 16, 16)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        (model.B(model.A(images)) * 3).sum().backward()
    ranges.remove()
    return list(prof.events()), model


def backward_events(events: list, node: str) -> list:
    return [e for e in events if e.name == BACKWARD_PREFIX + node]


def test_each_backward_node_is_counted_for_the_network_of_its_forward_op() -> None:
    events, _ = profiled_step()
    origin = forward_networks(events)
    [conv_backward] = backward_events(events, "ConvolutionBackward0")
    [relu_backward] = backward_events(events, "ReluBackward0")
    [mul_backward] = backward_events(events, "MulBackward0")
    assert origin[(conv_backward.fwd_thread, conv_backward.sequence_nr)] == "A"
    assert origin[(relu_backward.fwd_thread, relu_backward.sequence_nr)] == "B"
    assert (mul_backward.fwd_thread, mul_backward.sequence_nr) not in origin  # the loss's own op


def test_the_totals_split_the_backward_by_network_and_the_forward_by_range() -> None:
    events, _ = profiled_step()
    result = attribute(events, steps=1)
    assert set(result["forward_ms"]) == {"A", "B"}
    assert set(result["backward_ms"]) == {"A", "B", "losses", "(gradient accumulation)"}
    [conv_backward] = backward_events(events, "ConvolutionBackward0")
    assert abs(result["backward_ms"]["A"] - conv_backward.cpu_time_total / 1000) < 1e-9
    assert result["op_kinds_ms"]["convolution"] > 0


def test_the_ranges_are_removed_with_the_hooks() -> None:
    _, model = profiled_step()
    assert not model.A._forward_pre_hooks and not model.A._forward_hooks
