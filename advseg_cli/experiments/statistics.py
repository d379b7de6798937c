"""Statistics that decide: paired differences between modes, bootstrap intervals, convergence.

Why paired: every mode of the experiment is trained with the same seeds, so the seed's luck (which
photos came first, the initial weights of the generator) is shared by ``none`` and ``soft`` of one
seed. The difference per seed removes it; the mean of those differences, with a 95 % percentile
bootstrap interval over the seeds, says whether a mode is better, worse or indistinguishable. The
verdict comes from the interval alone: "better" or "worse" only when it excludes 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """``mode - baseline`` of one metric at one step, over the seeds both have."""

    seeds: tuple[int, ...]
    differences: tuple[float, ...]  # per seed, in the order of ``seeds``
    mean: float
    low: float  # the bootstrap interval of the mean difference
    high: float
    verdict: str  # better | worse | no difference (from the interval and the metric's direction)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def bootstrap_interval(values: Sequence[float], confidence: float = CONFIDENCE,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement).

    Seeded, so the same rows always give the same table.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("bootstrap_interval: no values")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def verdict(low: float, high: float, higher_is_better: bool) -> str:
    """"better" / "worse" only when the interval of ``mode - baseline`` excludes 0."""
    if low > 0:
        return "better" if higher_is_better else "worse"
    if high < 0:
        return "worse" if higher_is_better else "better"
    return "no difference"


def paired_difference(mode_values: dict[int, float], baseline_values: dict[int, float],
                      higher_is_better: bool) -> PairedDifference | None:
    """Per-seed differences of the seeds both dicts have (None when they share none)."""
    seeds = tuple(sorted(set(mode_values) & set(baseline_values)))
    if not seeds:
        return None
    differences = tuple(float(mode_values[s]) - float(baseline_values[s]) for s in seeds)
    low, high = bootstrap_interval(differences)
    return PairedDifference(seeds, differences, float(np.mean(differences)), low, high,
                            verdict(low, high, higher_is_better))


def has_converged(curve: Sequence[float], last_spread: float) -> bool:
    """A learning curve (mean over seeds per evaluation) has converged when its last two points differ by
    less than the spread between seeds at the last one: more training would not change the comparison."""
    if len(curve) < 2:
        return False
    return abs(float(curve[-1]) - float(curve[-2])) < float(last_spread)
