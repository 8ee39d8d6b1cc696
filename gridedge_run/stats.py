"""Statistics over seeds for `gridedge compare`, all from scipy:

- `median_ci`: the median over seeds and its 95 % percentile-bootstrap confidence interval
  (`scipy.stats.bootstrap`);
- `probability_of_improvement`: P(X < Y) for lower-is-better scores, as rliable (Agarwal et al., 2021) and
  marl-eval define the probability of improvement on one task: the Mann-Whitney U statistic over the number of
  pairs (ties count one half, `scipy.stats.mannwhitneyu`), with a 95 % bootstrap interval that resamples each
  method's runs independently.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

__all__ = ["CONFIDENCE", "median_ci", "probability_of_improvement", "seed_list"]

CONFIDENCE = 0.95
N_RESAMPLES = 2000


def seed_list(text: str | list) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3,7"`` or a list -> those seeds (sorted, no repeats)."""
    items = text if isinstance(text, list) else str(text).split(",")
    seeds: list[int] = []
    for item in items:
        item = str(item).strip()
        try:
            if "-" in item:
                lo, hi = item.split("-", 1)
                first, last = int(lo), int(hi)
                if last < first:
                    raise ValueError
                seeds.extend(range(first, last + 1))
            else:
                seeds.append(int(item))
        except ValueError:
            raise ValueError(
                f"--seeds expects a range like 0-4 or a list like 0,1,2 of non-negative integers, got {text!r}"
            ) from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds expects non-negative integers, got {text!r}")
    return sorted(set(seeds))


def median_ci(values, seed: int = 0) -> tuple[float, float | None, float | None]:
    """(median, lower, upper) of ``values`` (one per seed); the bounds are None with fewer than two values and
    equal to the median when every value is the same (a degenerate bootstrap)."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return math.nan, None, None
    mid = float(np.median(x))
    if x.size < 2:
        return mid, None, None
    if np.ptp(x) == 0:
        return mid, mid, mid
    res = stats.bootstrap(
        (x,),
        np.median,
        confidence_level=CONFIDENCE,
        n_resamples=N_RESAMPLES,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return mid, float(res.confidence_interval.low), float(res.confidence_interval.high)


def _poi(x, y, axis=-1):
    """P(X < Y): the share of pairs where x is below y, ties counting one half (vectorised over ``axis``)."""
    x = np.moveaxis(np.asarray(x, dtype=float), axis, -1)
    y = np.moveaxis(np.asarray(y, dtype=float), axis, -1)
    u = stats.mannwhitneyu(y, x, axis=-1, method="asymptotic").statistic  # pairs with y > x, ties 1/2
    return u / (x.shape[-1] * y.shape[-1])


def probability_of_improvement(x, y, seed: int = 0) -> tuple[float, float | None, float | None]:
    """P(a run of X scores lower than a run of Y) for lower-is-better scores ``x`` and ``y`` (one per seed),
    with its 95 % bootstrap interval (None with fewer than two runs of either)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size == 0 or y.size == 0:
        raise ValueError("probability_of_improvement needs at least one run of each method")
    point = float(_poi(x, y))
    if x.size < 2 or y.size < 2 or (np.ptp(np.concatenate([x, y])) == 0):
        return point, None, None
    res = stats.bootstrap(
        (x, y),
        _poi,
        confidence_level=CONFIDENCE,
        n_resamples=N_RESAMPLES,
        method="percentile",
        vectorized=True,
        random_state=np.random.default_rng(seed),
    )
    return point, float(res.confidence_interval.low), float(res.confidence_interval.high)
