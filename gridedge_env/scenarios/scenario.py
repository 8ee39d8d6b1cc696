"""All exogenous time series of the year at one step length, and the per-episode load draw."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from gridedge_env.scenarios.days import N_DAYS
from gridedge_env.scenarios.households import household_kw, normalise_to_peak
from gridedge_env.scenarios.pv import pv_kw_per_kwp
from gridedge_env.scenarios.tariff import DEFAULT_TARIFF
from gridedge_env.scenarios.weather import load_weather

SCENARIO_STEP_MINUTES = 30
STEPS_PER_DAY = 1440 // SCENARIO_STEP_MINUTES
SUPPORTED_STEP_MINUTES = (15, 30, 60)
LOAD_SCALE_SIGMA = 0.15
"""Log-standard deviation of the per-day, per-load multiplicative scale of household load."""
_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


@dataclass(frozen=True)
class ScenarioData:
    """Exogenous series for the 365 days of the scenario year at one step length.

    D = 365 days (index d is day of year d + 1), T = 1440 / step_minutes steps per day (step t covers
    [t, t + 1) * step_minutes from 00:00 local standard time), P = 100 household profiles. The tensors are
    shared by every caller of `load_scenario_data` (it is cached): treat them as read-only.
    """

    step_minutes: int
    """Step length (minutes)."""
    temperature_c: torch.Tensor
    """[D, T] outdoor air temperature at the step midpoint (C)."""
    ghi_w_per_m2: torch.Tensor
    """[D, T] global horizontal irradiance, mean over the step (W/m^2)."""
    pv_kw_per_kwp: torch.Tensor
    """[D, T] rooftop PV AC output per kWp of DC nameplate (kW/kWp)."""
    price_per_kwh: torch.Tensor
    """[D, T] import price, time-of-use ($/kWh)."""
    export_price_per_kwh: torch.Tensor
    """[D, T] export (feed-in) price ($/kWh)."""
    household_kw: torch.Tensor
    """[P, T] raw household load profiles, mean over the step (kW)."""
    household_shape: torch.Tensor
    """[P, T] household profiles divided by their own daily peak (max 1 per profile)."""
    day_of_year: torch.Tensor
    """[D] day of year 1..365 (int64)."""

    @property
    def n_days(self) -> int:
        """Number of days D."""
        return int(self.day_of_year.shape[0])

    @property
    def steps_per_day(self) -> int:
        """Number of steps per day T."""
        return int(self.temperature_c.shape[1])

    @property
    def n_profiles(self) -> int:
        """Number of household profiles P."""
        return int(self.household_kw.shape[0])

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> ScenarioData:
        """A copy with the float tensors cast to `dtype` and all tensors moved to `device`.

        The integer `day_of_year` keeps its dtype. Either argument may be None (keep as is).
        """
        changes = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                cast = dtype if value.is_floating_point() else None
                changes[f.name] = value.to(device=device, dtype=cast)
        return dataclasses.replace(self, **changes)


def _check_step_minutes(step_minutes: int) -> None:
    if isinstance(step_minutes, bool) or step_minutes not in SUPPORTED_STEP_MINUTES:
        raise ValueError(f"unsupported step_minutes={step_minutes!r}; expected one of {list(SUPPORTED_STEP_MINUTES)}")


def load_scenario_data(step_minutes: int = SCENARIO_STEP_MINUTES) -> ScenarioData:
    """Load (once; cached per step length) the scenario year at `step_minutes`.

    Weather from pvlib's Greensboro TMY3 file, PV from pvlib, households from the shipped profile file,
    prices from the default TOU tariff; see `docs/data.md`. All float tensors are float64 on the CPU;
    use `.to(dtype, device)` for other precisions or devices.

    Args:
        step_minutes: 15, 30 (default) or 60. Household profiles at 60 min are means of the shipped
            half hours, at 15 min the half-hour values repeated; weather is interpolated at step midpoints.

    Raises:
        ValueError: unsupported `step_minutes`.
    """
    _check_step_minutes(step_minutes)
    return _load_scenario_data(int(step_minutes))


@lru_cache(maxsize=len(SUPPORTED_STEP_MINUTES))
def _load_scenario_data(step_minutes: int) -> ScenarioData:
    weather = load_weather(step_minutes)
    day_of_year = np.arange(1, N_DAYS + 1, dtype=np.int64)
    kw = household_kw(step_minutes)

    def f64(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64)

    return ScenarioData(
        step_minutes=step_minutes,
        temperature_c=f64(weather.temperature_c),
        ghi_w_per_m2=f64(weather.ghi_w_per_m2),
        pv_kw_per_kwp=f64(pv_kw_per_kwp(step_minutes)),
        price_per_kwh=f64(DEFAULT_TARIFF.import_price(day_of_year, step_minutes)),
        export_price_per_kwh=f64(DEFAULT_TARIFF.export_price(day_of_year, step_minutes)),
        household_kw=f64(kw),
        household_shape=f64(normalise_to_peak(kw)),
        day_of_year=torch.tensor(day_of_year, dtype=torch.int64),
    )


def draw_load_shapes(
    data: ScenarioData,
    day_idx: torch.Tensor,
    n_loads: int,
    generator: torch.Generator,
    sigma: float = LOAD_SCALE_SIGMA,
    profiles: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Draw a normalised one-day load shape for every load of every batch row.

    For each batch row b and load l, independently: a household profile index uniform over the P
    profiles (or over ``profiles``, e.g. a split's from `split_profiles`), and a multiplicative scale
    `exp(sigma * z - sigma^2 / 2)` with z ~ N(0, 1) (lognormal with mean 1 and median `exp(-sigma^2 / 2)`).
    The result is that profile's peak-normalised shape times the scale; multiply by a feeder load's spot kW
    to get its consumption. The draws consume `generator` in a fixed order (profile indices, then scales), so
    the same generator state gives the same shapes.
    The shapes do not (yet) depend on the day beyond its validation: day-to-day variation comes from the
    random draws.

    Args:
        data: the scenario data (any dtype/device; the result follows `data.household_shape`).
        day_idx: [B] integer day indices in 0..D-1 (as from `split_days`).
        n_loads: number of loads L >= 1.
        generator: source of randomness; draws happen on its device and are moved to the data's device.
        sigma: log-standard deviation of the scale (>= 0).
        profiles: optional indices of the profiles to draw from (default: all P).

    Returns:
        [B, T, L] normalised load (dimensionless, peak of each unscaled shape = 1).

    Raises:
        ValueError: `n_loads` < 1 or not an integer, `day_idx` not a 1-D integer tensor, a day index out
            of range, or a negative `sigma`.
    """
    if isinstance(n_loads, bool) or not isinstance(n_loads, int | np.integer) or n_loads < 1:
        raise ValueError(f"n_loads must be an integer >= 1, got {n_loads!r}")
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be finite and >= 0, got {sigma!r}")
    day_idx = torch.as_tensor(day_idx)
    if day_idx.ndim != 1 or day_idx.dtype not in _INTEGER_DTYPES:
        raise ValueError(
            f"day_idx must be a 1-D integer tensor [B], got dtype {day_idx.dtype} and shape {tuple(day_idx.shape)}"
        )
    if day_idx.numel() and (int(day_idx.min()) < 0 or int(day_idx.max()) >= data.n_days):
        bad = day_idx[(day_idx < 0) | (day_idx >= data.n_days)]
        raise ValueError(f"day index {int(bad[0])} out of range 0..{data.n_days - 1}")
    n_rows = int(day_idx.shape[0])
    shapes = data.household_shape
    gen_device = generator.device
    pool = torch.arange(data.n_profiles) if profiles is None else torch.as_tensor(profiles, dtype=torch.int64)
    if pool.ndim != 1 or pool.numel() < 1 or int(pool.min()) < 0 or int(pool.max()) >= data.n_profiles:
        raise ValueError(f"profiles must be a non-empty list of indices in 0..{data.n_profiles - 1}")
    pick = torch.randint(pool.numel(), (n_rows, n_loads), generator=generator, device=gen_device)
    profile = pool.to(gen_device)[pick]
    z = torch.randn((n_rows, n_loads), generator=generator, device=gen_device, dtype=torch.float64)
    scale = torch.exp(sigma * z - 0.5 * sigma**2).to(device=shapes.device, dtype=shapes.dtype)
    drawn = shapes[profile.to(shapes.device)]  # [B, L, T]
    return drawn.transpose(1, 2) * scale[:, None, :]
