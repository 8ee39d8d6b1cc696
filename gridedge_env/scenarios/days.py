"""The scenario calendar and the fixed train/test split of its days.

Calendar: 365 days of a non-leap reference year in local standard time. Typical-year weather files mix
months from different years; gridedge coerces every timestamp to the reference year 2019 (non-leap, so day
numbers 1..365 map to the same dates as in any non-leap year). Day index `d` (0..364) is day of year
`d + 1`, from 00:00 to 24:00 local standard time (no daylight saving).

Split: every 5th day of the year is a test day, `d % 5 == 4` (days of year 5, 10, ..., 365: 73 days, spread
evenly over all seasons); the other 292 days are training days. The rule is fixed so that every
out-of-sample number is on days no learner saw.
"""

from __future__ import annotations

import numpy as np

REFERENCE_YEAR = 2019
N_DAYS = 365
TEST_EVERY = 5
_MONTH_STARTS = np.cumsum([1, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30])

_ALL_DAYS = np.arange(N_DAYS, dtype=np.int64)
_SPLITS: dict[str, np.ndarray] = {
    "train": _ALL_DAYS[_ALL_DAYS % TEST_EVERY != TEST_EVERY - 1],
    "test": _ALL_DAYS[_ALL_DAYS % TEST_EVERY == TEST_EVERY - 1],
    "all": _ALL_DAYS,
}
SPLITS = tuple(_SPLITS)


def month_of_day(day_of_year: np.ndarray) -> np.ndarray:
    """Month (1-12) of each day of year (1..365) in the non-leap reference year."""
    return np.searchsorted(_MONTH_STARTS, np.asarray(day_of_year), side="right")


def split_days(split: str) -> np.ndarray:
    """Day indices (0..364, day of year minus one) of a split.

    Args:
        split: "train" (292 days), "test" (73 days: `d % 5 == 4`) or "all" (365 days).

    Returns:
        Sorted int64 array of day indices (a new array; safe to modify).

    Raises:
        ValueError: unknown split.
    """
    try:
        return _SPLITS[split].copy()
    except (KeyError, TypeError):
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}") from None
