"""Rooftop PV output per kWp, computed with pvlib from the typical-year weather.

Model chain (all pvlib functions, evaluated at every step midpoint):

1. Solar position: `pvlib.solarposition.get_solarposition` (NREL SPA, numpy) at the site of the weather
   file, using the step's air pressure and temperature for refraction.
2. Beam irradiance is set to zero when the sun's apparent zenith at the step midpoint is at or below the
   horizon (>= 90 deg); interpolated hourly DNI can otherwise leak a little beam into twilight steps.
3. Plane of array: `pvlib.irradiance.get_total_irradiance` with the Perez (1990) transposition model
   (extraterrestrial DNI from `get_extra_radiation`, Kasten-Young relative air mass), ground albedo 0.2
   (the TMY3 file's albedo column is empty).
4. Angle-of-incidence loss on the beam component: `pvlib.iam.physical` (glass cover, the PVWatts choice).
5. Cell temperature: `pvlib.temperature.sapm_cell`, SAPM parameters for a close (roof) mount,
   glass/glass module.
6. DC power: `pvlib.pvsystem.pvwatts_dc` with 1 kWp nameplate and temperature coefficient -0.37 %/C
   (PVWatts v8 "standard" module), less the PVWatts default system losses
   (`pvlib.pvsystem.pvwatts_losses()`, 14.08 %: soiling, shading, mismatch, wiring, ...).
7. AC power: `pvlib.inverter.pvwatts` with nominal efficiency 0.96 and a DC/AC ratio of 1.2 (AC rating
   0.833 kW per kWp), i.e. inverter DC input limit `pdc0 = 1 / 1.2 / 0.96` kW.

The array faces south (azimuth 180 deg) at a 25 deg tilt, a common roof pitch at 36 N. At 30-minute
steps: a clear summer midday gives 0.65-0.70 kW per kWp (hot cells), clear cold days in winter and spring
up to 0.79 kW per kWp (the year's maximum); the median day peaks at 0.62. The yearly mean is 0.150 kW per
kWp (capacity factor 15 %, about 1,316 kWh per kWp and year); daily energy averages 2.6-2.7 kWh per kWp
in Nov-Jan and 4.1-4.3 in Apr-Aug.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from gridedge_env.scenarios.days import REFERENCE_YEAR
from gridedge_env.scenarios.weather import load_weather


@dataclass(frozen=True)
class PVConfig:
    """A fixed rooftop PV system, sized per kWp of DC nameplate."""

    surface_tilt_deg: float = 25.0
    """Module tilt from horizontal (degrees)."""
    surface_azimuth_deg: float = 180.0
    """Module azimuth, clockwise from north (degrees; 180 = south)."""
    albedo: float = 0.2
    """Ground reflectance for the ground-reflected component."""
    gamma_pdc_per_c: float = -0.0037
    """DC power temperature coefficient (1/C)."""
    dc_ac_ratio: float = 1.2
    """DC nameplate over inverter AC rating."""
    eta_inv_nom: float = 0.96
    """Nominal inverter efficiency."""
    temperature_model: str = "close_mount_glass_glass"
    """Key of pvlib's SAPM cell-temperature parameter table."""


DEFAULT_PV = PVConfig()


@lru_cache(maxsize=4)
def pv_kw_per_kwp(step_minutes: int, config: PVConfig = DEFAULT_PV) -> np.ndarray:
    """AC output per kWp of DC nameplate at every step midpoint.

    Args:
        step_minutes: step length (the weather is resampled to it first).
        config: the PV system.

    Returns:
        [D, T] kW per kWp (read-only array), in [0, 1 / dc_ac_ratio].
    """
    import pandas as pd
    import pvlib

    weather = load_weather(step_minutes)
    site = weather.site
    shape = weather.ghi_w_per_m2.shape
    tz = datetime.timezone(datetime.timedelta(hours=site.utc_offset_h))
    start = pd.Timestamp(datetime.datetime(REFERENCE_YEAR, 1, 1, tzinfo=tz))
    times = start + pd.to_timedelta(weather.midpoint_hours, unit="h")

    def flat(a: np.ndarray) -> np.ndarray:
        return a.reshape(-1)

    temp_air = flat(weather.temperature_c)
    solpos = pvlib.solarposition.get_solarposition(
        times,
        site.latitude_deg,
        site.longitude_deg,
        altitude=site.altitude_m,
        pressure=flat(weather.pressure_pa),
        temperature=temp_air,
        method="nrel_numpy",
    )
    apparent_zenith = solpos["apparent_zenith"].to_numpy()
    azimuth = solpos["azimuth"].to_numpy()
    sun_up = apparent_zenith < 90.0

    ghi = flat(weather.ghi_w_per_m2)
    dhi = flat(weather.dhi_w_per_m2)
    dni = np.where(sun_up, flat(weather.dni_w_per_m2), 0.0)
    dni_extra = pvlib.irradiance.get_extra_radiation(np.asarray(times.day_of_year, dtype=np.float64))
    airmass = pvlib.atmosphere.get_relative_airmass(apparent_zenith, model="kastenyoung1989")
    poa = pvlib.irradiance.get_total_irradiance(
        config.surface_tilt_deg,
        config.surface_azimuth_deg,
        apparent_zenith,
        azimuth,
        dni=dni,
        ghi=ghi,
        dhi=dhi,
        dni_extra=dni_extra,
        airmass=airmass,
        albedo=config.albedo,
        model="perez",
    )
    aoi = pvlib.irradiance.aoi(config.surface_tilt_deg, config.surface_azimuth_deg, apparent_zenith, azimuth)
    poa_direct = np.nan_to_num(np.asarray(poa["poa_direct"], dtype=np.float64))
    poa_diffuse = np.nan_to_num(np.asarray(poa["poa_diffuse"], dtype=np.float64))
    effective = np.clip(poa_direct * pvlib.iam.physical(aoi) + poa_diffuse, 0.0, None)
    poa_global = np.clip(poa_direct + poa_diffuse, 0.0, None)

    params = pvlib.temperature.TEMPERATURE_MODEL_PARAMETERS["sapm"][config.temperature_model]
    temp_cell = pvlib.temperature.sapm_cell(poa_global, temp_air, flat(weather.wind_speed_m_per_s), **params)
    pdc = pvlib.pvsystem.pvwatts_dc(effective, temp_cell, pdc0=1.0, gamma_pdc=config.gamma_pdc_per_c)
    pdc = np.asarray(pdc) * (1.0 - pvlib.pvsystem.pvwatts_losses() / 100.0)
    inverter_pdc0 = 1.0 / config.dc_ac_ratio / config.eta_inv_nom
    pac = pvlib.inverter.pvwatts(pdc, pdc0=inverter_pdc0, eta_inv_nom=config.eta_inv_nom)
    out = np.clip(np.nan_to_num(np.asarray(pac, dtype=np.float64)), 0.0, None).reshape(shape)
    out.setflags(write=False)
    return out
