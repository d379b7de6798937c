"""The experiment's statistics against independent computations: scipy's bootstrap, exact cases."""

from __future__ import annotations

import numpy as np
import pytest

from advseg_cli.experiments.statistics import bootstrap_interval, has_converged, paired_difference, verdict


def test_the_bootstrap_interval_is_scipys_percentile_interval() -> None:
    from scipy.stats import bootstrap

    values = [0.031, -0.012, 0.054, 0.020, 0.008, 0.044, -0.003]
    ours = bootstrap_interval(values, resamples=200_000)
    theirs = bootstrap((np.asarray(values),), np.mean, n_resamples=200_000, method="percentile",
                       confidence_level=0.95, random_state=1).confidence_interval
    # two Monte-Carlo estimates of the same quantiles: equal to well under the data's resolution
    assert ours == pytest.approx((theirs.low, theirs.high), abs=1.5e-3)


def test_identical_differences_give_a_point_interval() -> None:
    assert bootstrap_interval([0.25] * 5) == pytest.approx((0.25, 0.25))


def test_an_interval_excluding_zero_decides_by_the_metrics_direction() -> None:
    assert verdict(0.01, 0.05, higher_is_better=True) == "better"
    assert verdict(0.01, 0.05, higher_is_better=False) == "worse"  # e.g. MAE grew
    assert verdict(-0.05, -0.01, higher_is_better=True) == "worse"
    assert verdict(-0.05, -0.01, higher_is_better=False) == "better"
    assert verdict(-0.01, 0.05, higher_is_better=True) == "no difference"
    assert verdict(0.0, 0.05, higher_is_better=True) == "no difference"  # touching 0 is not excluding it


def test_paired_differences_use_only_shared_seeds_in_seed_order() -> None:
    mode = {0: 0.60, 1: 0.50, 2: 0.70, 7: 0.1}
    baseline = {2: 0.65, 0: 0.50, 1: 0.45, 3: 0.9}
    found = paired_difference(mode, baseline, higher_is_better=True)
    assert found is not None
    assert found.seeds == (0, 1, 2)
    assert found.differences == pytest.approx((0.10, 0.05, 0.05))
    assert found.mean == pytest.approx(0.2 / 3)
    assert found.verdict == "better"  # every seed improved: the bootstrap interval is [0.05, 0.10]
    assert (found.low, found.high) == pytest.approx((0.05, 0.10))
    assert paired_difference({0: 1.0}, {1: 1.0}, higher_is_better=True) is None


def test_a_shift_common_to_both_modes_cancels_in_the_pairing() -> None:
    """Seeds that differ a lot from each other but by the same amount between modes: no difference."""
    baseline = {seed: 0.2 + 0.1 * seed for seed in range(5)}
    same = {seed: value for seed, value in baseline.items()}
    found = paired_difference(same, baseline, higher_is_better=True)
    assert found is not None and found.verdict == "no difference" and found.low == found.high == 0.0


def test_convergence_compares_the_last_step_with_the_seed_spread() -> None:
    assert has_converged([0.2, 0.55, 0.60], last_spread=0.08)
    assert not has_converged([0.2, 0.45, 0.60], last_spread=0.08)
    assert not has_converged([0.6], last_spread=1.0)  # one point is no curve
