"""Household load profiles: read the shipped half-hourly file, change the step length, normalise.

The shipped file `data/household_profiles_30min.csv` (see `build_profiles`) holds 100 one-day profiles of
half-hour mean kW. Other step lengths are derived from it:

- 30 min: the file as is;
- 60 min: mean of each pair of half hours (exact hourly means of the source);
- 15 min: each half-hour value repeated twice (no sub-half-hour detail is invented).

The normalised shape of a profile divides it by its own daily peak *at the chosen step length*, so every
shape lies in (0, 1] with a maximum of exactly 1; a feeder load's spot kW is then the peak of the load it
follows. Single households are spiky: the mean of a normalised shape is about 0.20 (0.09 to 0.45 over the
100 profiles at 30 min).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

N_PROFILES = 100
SHIPPED_STEP_MINUTES = 30
HALF_HOURS_PER_DAY = 48
PROFILES_FILENAME = "household_profiles_30min.csv"


@lru_cache(maxsize=1)
def _read_shipped() -> np.ndarray:
    text = resources.files("gridedge_env.scenarios").joinpath("data", PROFILES_FILENAME).read_text("utf-8")
    rows = [line for line in text.splitlines() if line and not line.startswith("#")]
    header, body = rows[0].split(","), rows[1:]
    if len(header) != HALF_HOURS_PER_DAY + 1 or len(body) != N_PROFILES:
        raise ValueError(
            f"{PROFILES_FILENAME}: expected {N_PROFILES} rows x {HALF_HOURS_PER_DAY} steps, "
            f"found {len(body)} rows x {len(header) - 1} columns"
        )
    kw = np.array([[float(v) for v in row.split(",")[1:]] for row in body], dtype=np.float64)
    if kw.shape != (N_PROFILES, HALF_HOURS_PER_DAY) or not np.all(np.isfinite(kw)) or np.any(kw < 0):
        raise ValueError(f"{PROFILES_FILENAME}: malformed values")
    kw.setflags(write=False)
    return kw


def household_kw(step_minutes: int) -> np.ndarray:
    """Raw household profiles at the given step length.

    Args:
        step_minutes: 15, 30 or 60 (validated by the caller).

    Returns:
        [100, 1440 // step_minutes] kW (a new array).
    """
    kw30 = _read_shipped()
    if step_minutes >= SHIPPED_STEP_MINUTES:
        factor = step_minutes // SHIPPED_STEP_MINUTES
        return kw30.reshape(N_PROFILES, HALF_HOURS_PER_DAY // factor, factor).mean(axis=-1)
    return np.repeat(kw30, SHIPPED_STEP_MINUTES // step_minutes, axis=1)


def normalise_to_peak(kw: np.ndarray) -> np.ndarray:
    """Divide each profile [P, T] by its own daily peak, so every row has maximum 1."""
    return kw / kw.max(axis=1, keepdims=True)
