"""Scenarios: real exogenous time series for one-day episodes, read offline.

- Weather: temperature and irradiance of a typical year (NREL TMY3, Greensboro NC, shipped with pvlib).
- PV: rooftop AC output per kWp computed with pvlib from that weather.
- Household load: 100 one-day profiles of the IEEE European LV test feeder, shipped as half-hour means.
- Price: an illustrative time-of-use tariff shaped like typical US utility TOU plans.
- Days and households: a fixed train/validation/test split (whole weeks of the year, disjoint household
  profiles).

Provenance, licences and derivation commands: `docs/data.md`.

Example:
    >>> import torch
    >>> from gridedge_env.scenarios import draw_load_shapes, load_scenario_data, split_days
    >>> data = load_scenario_data()  # 30-minute steps
    >>> days = torch.as_tensor(split_days("train")[:4])
    >>> shapes = draw_load_shapes(data, days, n_loads=3, generator=torch.Generator().manual_seed(0))
    >>> tuple(shapes.shape), tuple(data.pv_kw_per_kwp[days].shape)
    ((4, 48, 3), (4, 48))
"""

from gridedge_env.scenarios.days import N_DAYS, SPLITS, split_days, split_profiles
from gridedge_env.scenarios.pv import DEFAULT_PV, PVConfig
from gridedge_env.scenarios.scenario import (
    LOAD_SCALE_SIGMA,
    SCENARIO_STEP_MINUTES,
    STEPS_PER_DAY,
    SUPPORTED_STEP_MINUTES,
    ScenarioData,
    draw_load_shapes,
    load_scenario_data,
)
from gridedge_env.scenarios.tariff import DEFAULT_TARIFF, TouTariff
from gridedge_env.scenarios.weather import design_temperatures

__all__ = [
    "DEFAULT_PV",
    "DEFAULT_TARIFF",
    "LOAD_SCALE_SIGMA",
    "N_DAYS",
    "SCENARIO_STEP_MINUTES",
    "SPLITS",
    "STEPS_PER_DAY",
    "SUPPORTED_STEP_MINUTES",
    "PVConfig",
    "ScenarioData",
    "TouTariff",
    "design_temperatures",
    "draw_load_shapes",
    "load_scenario_data",
    "split_days",
    "split_profiles",
]
