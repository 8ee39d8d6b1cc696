"""Typical-year weather from the TMY3 file that pvlib ships, resampled to the step length.

Source: `pvlib/data/723170TYA.CSV`, the NREL TMY3 file of Greensboro Piedmont Triad International
Airport, NC (USAF 723170; 36.10 N, 79.95 W, 273 m; local standard time UTC-5), read with
`pvlib.iotools.read_tmy3` from pvlib's installed package data (nothing is downloaded).

Year mix: TMY3 months come from different years; every timestamp is coerced to the reference year 2019
(`coerce_year`), and the file's last record (24:00 on Dec 31, which pvlib puts at the next year's Jan 1
00:00) stays the last hour of Dec 31. The 8,760 hourly records then cover the 365 days in order.

Resampling: TMY3 irradiance (GHI, DNI, DHI) is the energy received in the hour *ending* at the timestamp,
so it is the mean over that hour and is placed at the hour's midpoint; temperature, wind speed and
pressure are readings at the timestamp itself. Each series is linearly interpolated, in time, at the
midpoint of every step, with the year treated as periodic (Dec 31 joins Jan 1). For 60-minute steps this
returns the hourly irradiance values exactly and the mean of the two temperature readings that bound the
hour; for 30- and 15-minute steps it is a smooth linear interpolation of the hourly means (TMY3 has no
sub-hourly information).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from gridedge_env.scenarios.days import N_DAYS, REFERENCE_YEAR

TMY3_FILENAME = "723170TYA.CSV"
HOURS_PER_YEAR = N_DAYS * 24


def tmy3_path() -> Path:
    """Path of the TMY3 file inside the installed pvlib package."""
    import pvlib

    return Path(pvlib.__file__).resolve().parent / "data" / TMY3_FILENAME


@dataclass(frozen=True)
class Site:
    """Where the weather file was recorded."""

    name: str
    latitude_deg: float
    longitude_deg: float
    altitude_m: float
    utc_offset_h: float


@dataclass(frozen=True)
class Weather:
    """Weather at the step midpoints of every day, arrays [D, T] (numpy, float64)."""

    site: Site
    step_minutes: int
    ghi_w_per_m2: np.ndarray
    dni_w_per_m2: np.ndarray
    dhi_w_per_m2: np.ndarray
    temperature_c: np.ndarray
    wind_speed_m_per_s: np.ndarray
    pressure_pa: np.ndarray
    midpoint_hours: np.ndarray
    """[D * T] hours since Jan 1 00:00 local standard time of each step midpoint (day-major order)."""


@lru_cache(maxsize=1)
def _read_hourly() -> tuple[Site, dict[str, np.ndarray]]:
    import pvlib

    data, meta = pvlib.iotools.read_tmy3(tmy3_path(), coerce_year=REFERENCE_YEAR, map_variables=True)
    if len(data) != HOURS_PER_YEAR or not data.index.is_monotonic_increasing:
        raise ValueError(f"{TMY3_FILENAME}: expected {HOURS_PER_YEAR} hourly records in time order")
    site = Site(
        name=meta["Name"].strip('"'),
        latitude_deg=float(meta["latitude"]),
        longitude_deg=float(meta["longitude"]),
        altitude_m=float(meta["altitude"]),
        utc_offset_h=float(meta["TZ"]),
    )
    columns = {
        "ghi": "ghi",
        "dni": "dni",
        "dhi": "dhi",
        "temp_air": "temp_air",
        "wind_speed": "wind_speed",
        "pressure_mbar": "pressure",
    }
    hourly = {key: data[col].to_numpy(dtype=np.float64) for key, col in columns.items()}
    for key, values in hourly.items():
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{TMY3_FILENAME}: non-finite values in {key}")
    return site, hourly


def step_midpoint_hours(step_minutes: int) -> np.ndarray:
    """[D * T] hours since Jan 1 00:00 (local standard time) of every step midpoint, day-major."""
    n_steps = N_DAYS * 1440 // step_minutes
    return (np.arange(n_steps) + 0.5) * (step_minutes / 60.0)


def _interp_periodic(t_data: np.ndarray, values: np.ndarray, t_query: np.ndarray) -> np.ndarray:
    return np.interp(t_query, t_data, values, period=float(HOURS_PER_YEAR))


@lru_cache(maxsize=4)
def load_weather(step_minutes: int) -> Weather:
    """Weather resampled to `step_minutes` (see the module docstring); cached, arrays read-only."""
    site, hourly = _read_hourly()
    hour_end = np.arange(1, HOURS_PER_YEAR + 1, dtype=np.float64)  # record i ends at hour i + 1
    hour_mid = hour_end - 0.5
    t = step_midpoint_hours(step_minutes)
    shape = (N_DAYS, 1440 // step_minutes)

    def at_steps(key: str, stamp: np.ndarray) -> np.ndarray:
        out = _interp_periodic(stamp, hourly[key], t).reshape(shape)
        out.setflags(write=False)
        return out

    return Weather(
        site=site,
        step_minutes=step_minutes,
        ghi_w_per_m2=at_steps("ghi", hour_mid),
        dni_w_per_m2=at_steps("dni", hour_mid),
        dhi_w_per_m2=at_steps("dhi", hour_mid),
        temperature_c=at_steps("temp_air", hour_end),
        wind_speed_m_per_s=at_steps("wind_speed", hour_end),
        pressure_pa=at_steps("pressure_mbar", hour_end) * 100.0,
        midpoint_hours=t,
    )


#: Heating design temperature: the hourly dry-bulb temperature is at or above it in this share of the year's hours.
HEATING_DESIGN_SHARE = 0.99
#: Cooling design temperature: the hourly dry-bulb temperature is at or below it in this share of the year's hours.
COOLING_DESIGN_SHARE = 0.99


@lru_cache(maxsize=1)
def design_temperatures() -> tuple[float, float]:
    """The weather year's heating and cooling design temperatures, C, from its 8,760 hourly readings.

    Heating: the 99 % value (the 1st percentile: 99 % of the hours are at least this warm); cooling: the 1 %
    value (the 99th percentile: 1 % of the hours are warmer). Greensboro's TMY3: -9.4 C and 32.2 C.
    These are the temperatures HVAC installers size equipment for (ASHRAE's 99 % and 1 % design conditions).
    """
    _, hourly = _read_hourly()
    temp = hourly["temp_air"]
    heating = float(np.percentile(temp, 100.0 * (1.0 - HEATING_DESIGN_SHARE)))
    cooling = float(np.percentile(temp, 100.0 * COOLING_DESIGN_SHARE))
    return heating, cooling
