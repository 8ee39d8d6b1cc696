"""The scenario calendar and the fixed train/validation/test split of its days and household profiles.

Calendar: 365 days of a non-leap reference year in local standard time. Typical-year weather files mix
months from different years; gridedge coerces every timestamp to the reference year 2019 (non-leap, so day
numbers 1..365 map to the same dates as in any non-leap year). Day index `d` (0..364) is day of year
`d + 1`, from 00:00 to 24:00 local standard time (no daylight saving).

Days are split in whole weeks, so no test day has a neighbouring training day in the same week: week
`w = d // 7` (0..51) is a validation week when `w % 5 == 2` and a test week when `w % 5 == 4` (10 weeks,
70 days, each, spread over all seasons); every other week, and day 364 (the 53rd week's only day), is for
training (225 days). Household profiles are split too: profile `k` (0..99) is a validation profile when
`k % 5 == 2`, a test profile when `k % 5 == 4` (20 each), a training profile otherwise (60), so test
households are profiles that training never sees. The rule is fixed so that every out-of-sample number is
on days and households no learner saw, and every tuning decision can be made on the validation split.
"""

from __future__ import annotations

import numpy as np

REFERENCE_YEAR = 2019
N_DAYS = 365
DAYS_PER_WEEK = 7
#: Week ``w`` (and profile ``k``) with ``w % SPLIT_CYCLE == VALIDATION_SLOT`` is validation,
#: ``== TEST_SLOT`` test, anything else training.
SPLIT_CYCLE = 5
VALIDATION_SLOT = 2
TEST_SLOT = 4
_MONTH_STARTS = np.cumsum([1, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30])


def _slot_split(slots: np.ndarray, whole: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "train": whole[(slots != VALIDATION_SLOT) & (slots != TEST_SLOT)],
        "validation": whole[slots == VALIDATION_SLOT],
        "test": whole[slots == TEST_SLOT],
        "all": whole,
    }


_ALL_DAYS = np.arange(N_DAYS, dtype=np.int64)
# the 53rd week (day 364 alone) is not a whole week: slot -1 puts it into training
_WEEK_SLOT = np.where(_ALL_DAYS // DAYS_PER_WEEK < 52, (_ALL_DAYS // DAYS_PER_WEEK) % SPLIT_CYCLE, -1)
_SPLITS: dict[str, np.ndarray] = _slot_split(_WEEK_SLOT, _ALL_DAYS)
SPLITS = tuple(_SPLITS)


def month_of_day(day_of_year: np.ndarray) -> np.ndarray:
    """Month (1-12) of each day of year (1..365) in the non-leap reference year."""
    return np.searchsorted(_MONTH_STARTS, np.asarray(day_of_year), side="right")


def _check_split(split: str) -> None:
    if not isinstance(split, str) or split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")


def split_days(split: str) -> np.ndarray:
    """Day indices (0..364, day of year minus one) of a split.

    Args:
        split: "train" (225 days), "validation" (70 days: weeks with `w % 5 == 2`), "test" (70 days: weeks
            with `w % 5 == 4`) or "all" (365 days).

    Returns:
        Sorted int64 array of day indices (a new array; safe to modify).

    Raises:
        ValueError: unknown split.
    """
    _check_split(split)
    return _SPLITS[split].copy()


def split_profiles(split: str, n_profiles: int) -> np.ndarray:
    """Household profile indices (0..n_profiles-1) a split draws from.

    Args:
        split: "train" (`k % 5` not 2 or 4), "validation" (`k % 5 == 2`), "test" (`k % 5 == 4`) or "all".
        n_profiles: Number of profiles (>= 5, so every split has at least one).

    Returns:
        Sorted int64 array of profile indices.

    Raises:
        ValueError: unknown split, or too few profiles.
    """
    _check_split(split)
    if n_profiles < SPLIT_CYCLE:
        raise ValueError(f"need at least {SPLIT_CYCLE} household profiles to split them, got {n_profiles}")
    whole = np.arange(n_profiles, dtype=np.int64)
    return _slot_split(whole % SPLIT_CYCLE, whole)[split]
