"""Single-phase grid-edge device models: battery, heat pump (heating or cooling), controllable generator.

Every function here is pure (inputs are never mutated; parameters and results are frozen dataclasses of
tensors), vectorised over a leading batch dimension ``B`` and over the ``N`` agents of one device type, and
differentiable with torch autograd w.r.t. actions and states. There is no Python loop over agents; a core
loops over the three device types through :data:`DEVICE_TYPES`.

Conventions:

- Electrical power ``p_kw`` is positive for consumption from the grid and negative for injection into it.
- Actions are normalised to ``[-1, 1]``. The caller clips them; the maps below assume that range and do not
  clip again (a request outside it is simply a larger request, which the projection then cuts back).
- Every action maps affinely onto the device's range of normalised electrical power ``p_kw / p_max_kw``
  (GradMAP's ranges): a battery ``a`` in [-1, 1] (charging for ``a > 0``); a heat pump ``(1 + a) / 2`` in
  [0, 1] (it only consumes; heating or cooling is set by the outdoor temperature, as a changeover thermostat
  does); a generator ``-(f + (1 - a) / 2 * (1 - f))`` in [-1, -f], with ``f`` its minimum stable output
  (0.15 by default): full output for ``a = -1``, minimum output for ``a = +1``.
- Sizes follow installers' rules: every heat pump is sized for its own building at the weather's design
  temperatures (`size_heatpump`), every battery's capacity is its power times a storage duration.
- Physics is enforced by projection: a request that the device cannot deliver (battery beyond its state of
  charge bounds, generator beyond its ramp limit) is clamped onto the feasible interval and the part that
  was cut away is reported as that agent's device ``violation``, so a Lagrangian learner gets a gradient
  that points back into the feasible set.
- Units are in the field names: kW, kWh, hours, degrees Celsius (``_c``), kelvin differences (``_k``),
  dollars (``cost``).

Parameter tensors have shape ``[N]`` and broadcast against ``[B, N]`` states and actions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

__all__ = [
    "BATTERY_RANGES",
    "BATTERY_SOC_MAX_FRACTION",
    "BATTERY_SOC_MIN_FRACTION",
    "COOLING_SOURCE_C",
    "COP_MAX",
    "COP_MIN",
    "DEVICE_TYPES",
    "GENERATOR_RANGES",
    "HEATING_SINK_C",
    "HEAT_EXCHANGER_APPROACH_K",
    "GENERATOR_MIN_OUTPUT_FRACTION",
    "HEATPUMP_RANGES",
    "HEATPUMP_SIZING_MARGIN",
    "MIN_LIFT_K",
    "BatteryParams",
    "DeviceStep",
    "DeviceType",
    "GeneratorParams",
    "HeatPumpParams",
    "battery_power_limits",
    "battery_step",
    "generator_output_limits",
    "generator_step",
    "heatpump_cop",
    "heatpump_comfort_limits",
    "heatpump_heating",
    "heatpump_response",
    "heatpump_step",
    "initial_battery_state",
    "initial_generator_state",
    "initial_heatpump_state",
    "sample_battery_params",
    "sample_generator_params",
    "sample_heatpump_params",
    "size_heatpump",
]

Range = tuple[float, float]

# --------------------------------------------------------------------------------------------------------
# Parameter ranges. Every per-agent parameter is drawn uniformly from [low, high]; docs/devices.md tabulates
# these same numbers.
# --------------------------------------------------------------------------------------------------------

#: Residential battery (home storage: 3-7 kW inverters with 2-3 hours of storage, 6-21 kWh packs). Sizing
#: rule: the capacity is the power times the storage duration, ``e_max_kwh = p_max_kw * duration_h``.
BATTERY_RANGES: dict[str, Range] = {
    "p_max_kw": (3.0, 7.0),
    "duration_h": (2.0, 3.0),
    "eta_charge": (0.92, 0.97),
    "eta_discharge": (0.92, 0.97),
    "degradation_cost_per_kwh": (0.01, 0.05),
}
#: State-of-charge bounds as fractions of the capacity ``e_max_kwh`` (fixed, not sampled): keeping the
#: cell away from full and empty is what manufacturers' usable-capacity windows do.
BATTERY_SOC_MIN_FRACTION: float = 0.1
BATTERY_SOC_MAX_FRACTION: float = 0.9

#: Air-source heat pump (heating and cooling) in a single-zone house (1R1C). Its electrical size
#: ``p_max_kw`` is not drawn: `size_heatpump` derives it from the building and the design temperatures.
HEATPUMP_RANGES: dict[str, Range] = {
    "r_k_per_kw": (3.0, 8.0),  # envelope resistance; 1/R = 125-333 W/K heat-loss coefficient
    "c_kwh_per_k": (2.0, 8.0),  # thermal capacitance; time constants R*C of 6-64 h
    "carnot_efficiency": (0.35, 0.50),  # fraction of the Carnot COP the unit achieves
    "t_comfort_centre_c": (20.5, 21.5),  # centre of the comfort band (heating-season setpoint)
    "t_comfort_width_k": (2.0, 4.0),  # full width of the comfort band
}
#: Heating: heat is delivered to a low-temperature emitter (floor heating / large radiators) at this supply
#: temperature.
HEATING_SINK_C: float = 35.0
#: Cooling: heat is taken from the indoor coil / chilled water at this temperature.
COOLING_SOURCE_C: float = 7.0
#: Temperature difference across each heat exchanger: the refrigerant condenses this much above the warm side
#: and evaporates this much below the cold side, so the Carnot COP uses the refrigerant temperatures.
HEAT_EXCHANGER_APPROACH_K: float = 5.0
#: Smallest refrigerant temperature lift used in the Carnot formula; keeps the COP finite when the outdoor
#: temperature comes close to the sink (heating) or source (cooling) temperature.
MIN_LIFT_K: float = 10.0
#: The COP is clipped to this range: below 1 a heat pump would be worse than a resistive heater, and above 6
#: the Carnot-fraction model is extrapolating beyond what air-source units reach.
COP_MIN: float = 1.0
COP_MAX: float = 6.0
#: Installer's margin: at the design temperature the heat pump's full-load heating (cooling) capacity is
#: this much above the building's design heat loss (gain) at the band centre.
HEATPUMP_SIZING_MARGIN: float = 0.25
#: Design temperatures used when the caller gives none (a cold-temperate climate); the simulator passes the
#: 99 % heating and 1 % cooling design temperatures of its own weather data.
DEFAULT_HEATING_DESIGN_C: float = -10.0
DEFAULT_COOLING_DESIGN_C: float = 32.0

#: Minimum stable output of a running generator as a fraction of ``p_max_kw`` (GradMAP's [-1, -0.15]); 0 gives
#: a generator that can switch off.
GENERATOR_MIN_OUTPUT_FRACTION: float = 0.15

#: Small controllable generator (micro-CHP / gas or diesel genset), always running between its minimum
#: stable output and ``p_max_kw``.
GENERATOR_RANGES: dict[str, Range] = {
    "p_max_kw": (3.0, 10.0),  # maximum electrical output
    "fuel_cost_c1_per_kwh": (0.10, 0.25),  # linear fuel cost coefficient, $/kWh
    "fuel_cost_c2_per_kw2h": (0.002, 0.010),  # quadratic coefficient, $/(kW^2 h): marginal cost rises
    "ramp_fraction_per_h": (0.5, 2.0),  # ramp limit as a fraction of p_max_kw per hour
}


# --------------------------------------------------------------------------------------------------------
# Dataclasses
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DeviceStep:
    """Result of one step of one device type for all agents of that type.

    Attributes:
        p_kw: Delivered electrical power [B, N] in kW, positive = consumption from the grid.
        next_state: Device state after the step [B, N]; its unit is that of the state the step function
            took (``soc_kwh``, ``t_indoor_c`` or ``p_prev_kw``).
        device_cost: Device operating cost of this step [B, N] in $ (battery degradation, generator fuel;
            zero for the heat pump). Electricity cost is computed elsewhere from ``p_kw`` and the price.
        violation: Non-negative device-constraint violation [B, N]: kW of request projected away for the
            battery and generator, kelvin of comfort-band excursion for the heat pump.
    """

    p_kw: torch.Tensor
    next_state: torch.Tensor
    device_cost: torch.Tensor
    violation: torch.Tensor


@dataclasses.dataclass(frozen=True)
class BatteryParams:
    """Per-agent battery parameters, every field a tensor of shape [N].

    Attributes:
        p_max_kw: Charge and discharge power limit at the grid connection, kW.
        e_max_kwh: Energy capacity, kWh.
        eta_charge: Charging efficiency (stored energy / grid energy), dimensionless in (0, 1].
        eta_discharge: Discharging efficiency (grid energy / stored energy), dimensionless in (0, 1].
        soc_min_kwh: Lower state-of-charge bound, kWh.
        soc_max_kwh: Upper state-of-charge bound, kWh.
        degradation_cost_per_kwh: Cost of throughput at the grid connection, $/kWh.
    """

    p_max_kw: torch.Tensor
    e_max_kwh: torch.Tensor
    eta_charge: torch.Tensor
    eta_discharge: torch.Tensor
    soc_min_kwh: torch.Tensor
    soc_max_kwh: torch.Tensor
    degradation_cost_per_kwh: torch.Tensor

    @property
    def n_agents(self) -> int:
        """Number of battery agents N."""
        return self.p_max_kw.shape[0]

    def scaled(self, factor: float) -> BatteryParams:
        """The same batteries ``factor`` times as large: power limit, capacity and state-of-charge bounds
        scale, efficiencies and the cost per kWh do not, so every normalised action does the same."""
        return dataclasses.replace(
            self,
            p_max_kw=self.p_max_kw * factor,
            e_max_kwh=self.e_max_kwh * factor,
            soc_min_kwh=self.soc_min_kwh * factor,
            soc_max_kwh=self.soc_max_kwh * factor,
        )


@dataclasses.dataclass(frozen=True)
class HeatPumpParams:
    """Per-agent heat-pump and building parameters, every field a tensor of shape [N].

    Attributes:
        p_max_kw: Electrical input at full load, kW (heating and cooling alike; sized by `size_heatpump`).
        r_k_per_kw: Thermal resistance between indoor air and outdoors, K/kW.
        c_kwh_per_k: Thermal capacitance of the building, kWh/K.
        carnot_efficiency: Fraction of the Carnot COP achieved, dimensionless.
        t_min_c: Lower edge of the comfort band, degrees C.
        t_max_c: Upper edge of the comfort band, degrees C.
    """

    p_max_kw: torch.Tensor
    r_k_per_kw: torch.Tensor
    c_kwh_per_k: torch.Tensor
    carnot_efficiency: torch.Tensor
    t_min_c: torch.Tensor
    t_max_c: torch.Tensor

    @property
    def n_agents(self) -> int:
        """Number of heat-pump agents N."""
        return self.p_max_kw.shape[0]

    def scaled(self, factor: float) -> HeatPumpParams:
        """The same heat pumps in buildings ``factor`` times as large: electrical size, heat-loss coefficient
        (``1 / r``) and capacitance scale, so time constants, temperatures and COPs under every normalised
        action stay the same."""
        return dataclasses.replace(
            self,
            p_max_kw=self.p_max_kw * factor,
            r_k_per_kw=self.r_k_per_kw / factor,
            c_kwh_per_k=self.c_kwh_per_k * factor,
        )


@dataclasses.dataclass(frozen=True)
class GeneratorParams:
    """Per-agent generator parameters, every field a tensor of shape [N].

    Attributes:
        p_min_kw: Minimum stable output, kW (0: the unit can be switched off).
        p_max_kw: Maximum electrical output, kW.
        fuel_cost_c1_per_kwh: Linear fuel-cost coefficient, $/kWh.
        fuel_cost_c2_per_kw2h: Quadratic fuel-cost coefficient, $/(kW^2 h); non-negative, so the fuel cost
            is convex in the output.
        ramp_kw_per_h: Largest change of output per hour, kW/h; ``+inf`` means no ramp limit.
    """

    p_min_kw: torch.Tensor
    p_max_kw: torch.Tensor
    fuel_cost_c1_per_kwh: torch.Tensor
    fuel_cost_c2_per_kw2h: torch.Tensor
    ramp_kw_per_h: torch.Tensor

    @property
    def n_agents(self) -> int:
        """Number of generator agents N."""
        return self.p_max_kw.shape[0]

    def scaled(self, factor: float) -> GeneratorParams:
        """The same generators ``factor`` times as large: output limits and ramp rate scale, and the quadratic
        fuel-cost coefficient by ``1 / factor``, so the fuel cost per kWh at every normalised action is the
        same."""
        return dataclasses.replace(
            self,
            p_min_kw=self.p_min_kw * factor,
            p_max_kw=self.p_max_kw * factor,
            fuel_cost_c2_per_kw2h=self.fuel_cost_c2_per_kw2h / factor,
            ramp_kw_per_h=self.ramp_kw_per_h * factor,
        )


# --------------------------------------------------------------------------------------------------------
# Sampling helpers
# --------------------------------------------------------------------------------------------------------


def _uniform(
    n: int,
    bounds: Range,
    generator: torch.Generator,
    dtype: torch.dtype,
    device: torch.device | str,
) -> torch.Tensor:
    """Draw [n] values uniformly from ``bounds``.

    The draw happens on the generator's own device and is then moved, so a CPU generator gives the same
    numbers whatever ``device`` the tensors end up on.
    """
    low, high = bounds
    u = torch.rand(n, generator=generator, dtype=dtype, device=generator.device)
    return (low + (high - low) * u).to(device)


def _uniform_between(
    low: torch.Tensor, high: torch.Tensor, batch_size: int, generator: torch.Generator
) -> torch.Tensor:
    """Draw [batch_size, N] values uniformly between per-agent tensors ``low`` and ``high`` ([N] each)."""
    u = torch.rand((batch_size, low.shape[0]), generator=generator, dtype=low.dtype, device=generator.device).to(
        low.device
    )
    return low + (high - low) * u


def sample_battery_params(
    n: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> BatteryParams:
    """Draw parameters of ``n`` batteries uniformly from :data:`BATTERY_RANGES`.

    The capacity is ``e_max_kwh = p_max_kw * duration_h``; the state-of-charge bounds are
    :data:`BATTERY_SOC_MIN_FRACTION` and :data:`BATTERY_SOC_MAX_FRACTION` of
    the sampled capacity.

    Args:
        n: Number of battery agents N.
        generator: Source of randomness; the same seed gives the same parameters.
        dtype: Floating dtype of the returned tensors.
        device: Device of the returned tensors.

    Returns:
        BatteryParams with [N] tensors.
    """
    # One draw per field in the dict's (fixed) order, so results depend only on the seed.
    drawn = {k: _uniform(n, r, generator, dtype, device) for k, r in BATTERY_RANGES.items()}
    e_max_kwh = drawn["p_max_kw"] * drawn["duration_h"]
    return BatteryParams(
        p_max_kw=drawn["p_max_kw"],
        e_max_kwh=e_max_kwh,
        eta_charge=drawn["eta_charge"],
        eta_discharge=drawn["eta_discharge"],
        soc_min_kwh=BATTERY_SOC_MIN_FRACTION * e_max_kwh,
        soc_max_kwh=BATTERY_SOC_MAX_FRACTION * e_max_kwh,
        degradation_cost_per_kwh=drawn["degradation_cost_per_kwh"],
    )


def size_heatpump(
    r_k_per_kw: torch.Tensor,
    carnot_efficiency: torch.Tensor,
    t_design_indoor_c: torch.Tensor,
    heating_design_c: float,
    cooling_design_c: float,
    margin: float = HEATPUMP_SIZING_MARGIN,
) -> torch.Tensor:
    """Electrical size of a heat pump, as an installer sizes it for its building.

    At the heating design temperature the full-load heating capacity ``p_max * cop_heat`` covers the
    building's design heat loss ``(t_indoor - heating_design_c) / R`` plus ``margin``; at the cooling design
    temperature the full-load cooling capacity ``p_max * cop_cool`` covers the design heat gain
    ``(cooling_design_c - t_indoor) / R`` plus ``margin``. The size is the larger of the two.

    Args:
        r_k_per_kw: Envelope resistance [N], K/kW.
        carnot_efficiency: Fraction of the Carnot COP [N].
        t_design_indoor_c: Indoor design temperature [N] (the comfort band's centre), C.
        heating_design_c: Outdoor heating design temperature (e.g. the 99 % value of the weather year), C.
        cooling_design_c: Outdoor cooling design temperature (e.g. the 1 % value), C.
        margin: Capacity above the design load, as a fraction (>= 0).

    Returns:
        ``p_max_kw`` [N], kW of electrical input at full load.
    """
    if not margin >= 0:
        raise ValueError(f"the sizing margin must be >= 0, got {margin!r}")
    if not heating_design_c < cooling_design_c:
        raise ValueError(
            f"heating design temperature {heating_design_c!r} C must be below the cooling design "
            f"temperature {cooling_design_c!r} C"
        )
    t_heat = torch.full_like(r_k_per_kw, float(heating_design_c))
    t_cool = torch.full_like(r_k_per_kw, float(cooling_design_c))
    cop_heat, _ = _cop(carnot_efficiency, t_heat)
    _, cop_cool = _cop(carnot_efficiency, t_cool)
    heat_kw = torch.relu(t_design_indoor_c - t_heat) / r_k_per_kw
    gain_kw = torch.relu(t_cool - t_design_indoor_c) / r_k_per_kw
    return (1.0 + margin) * torch.maximum(heat_kw / cop_heat, gain_kw / cop_cool)


def sample_heatpump_params(
    n: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    heating_design_c: float = DEFAULT_HEATING_DESIGN_C,
    cooling_design_c: float = DEFAULT_COOLING_DESIGN_C,
    sizing_margin: float = HEATPUMP_SIZING_MARGIN,
) -> HeatPumpParams:
    """Draw ``n`` buildings uniformly from :data:`HEATPUMP_RANGES` and size each one's heat pump.

    The comfort band is ``centre -/+ width / 2`` with centre and width drawn per agent, so every band lies
    within [18.5, 23.5] C and contains [20.5, 21.5] C. The electrical size ``p_max_kw`` is
    `size_heatpump` at the band centre and the given design temperatures.

    Args:
        n: Number of heat-pump agents N.
        generator: Source of randomness; the same seed gives the same parameters.
        dtype: Floating dtype of the returned tensors.
        device: Device of the returned tensors.
        heating_design_c: Outdoor heating design temperature, C.
        cooling_design_c: Outdoor cooling design temperature, C.
        sizing_margin: Capacity above the design load (`size_heatpump`).

    Returns:
        HeatPumpParams with [N] tensors.
    """
    drawn = {k: _uniform(n, r, generator, dtype, device) for k, r in HEATPUMP_RANGES.items()}
    half_width = 0.5 * drawn["t_comfort_width_k"]
    centre = drawn["t_comfort_centre_c"]
    return HeatPumpParams(
        p_max_kw=size_heatpump(
            drawn["r_k_per_kw"], drawn["carnot_efficiency"], centre, heating_design_c, cooling_design_c, sizing_margin
        ),
        r_k_per_kw=drawn["r_k_per_kw"],
        c_kwh_per_k=drawn["c_kwh_per_k"],
        carnot_efficiency=drawn["carnot_efficiency"],
        t_min_c=centre - half_width,
        t_max_c=centre + half_width,
    )


def sample_generator_params(
    n: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    ramp_limit: bool = True,
    min_output_fraction: float = GENERATOR_MIN_OUTPUT_FRACTION,
) -> GeneratorParams:
    """Draw parameters of ``n`` generators uniformly from :data:`GENERATOR_RANGES`.

    Sizing rule: ``p_max_kw`` uniform over the product class, minimum stable output
    ``p_min_kw = min_output_fraction * p_max_kw``.

    Args:
        n: Number of generator agents N.
        generator: Source of randomness; the same seed gives the same parameters.
        dtype: Floating dtype of the returned tensors.
        device: Device of the returned tensors.
        ramp_limit: If False, ``ramp_kw_per_h`` is ``+inf`` (no ramp limit). The ramp fraction is drawn
            either way, so the other parameters do not depend on this flag.
        min_output_fraction: Minimum stable output as a fraction of ``p_max_kw``, in [0, 1) (0: the unit
            can switch off).

    Returns:
        GeneratorParams with [N] tensors.
    """
    if not 0.0 <= min_output_fraction < 1.0:
        raise ValueError(f"min_output_fraction must be in [0, 1), got {min_output_fraction!r}")
    drawn = {k: _uniform(n, r, generator, dtype, device) for k, r in GENERATOR_RANGES.items()}
    ramp = drawn["ramp_fraction_per_h"] * drawn["p_max_kw"]
    if not ramp_limit:
        ramp = torch.full_like(ramp, float("inf"))
    return GeneratorParams(
        p_min_kw=min_output_fraction * drawn["p_max_kw"],
        p_max_kw=drawn["p_max_kw"],
        fuel_cost_c1_per_kwh=drawn["fuel_cost_c1_per_kwh"],
        fuel_cost_c2_per_kw2h=drawn["fuel_cost_c2_per_kw2h"],
        ramp_kw_per_h=ramp,
    )


# --------------------------------------------------------------------------------------------------------
# Initial states
# --------------------------------------------------------------------------------------------------------


def initial_battery_state(params: BatteryParams, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Draw initial states of charge uniformly within each battery's bounds.

    Args:
        params: Battery parameters ([N] tensors).
        batch_size: Batch size B.
        generator: Source of randomness.

    Returns:
        soc_kwh [B, N] in kWh, dtype and device of ``params``.
    """
    return _uniform_between(params.soc_min_kwh, params.soc_max_kwh, batch_size, generator)


def initial_heatpump_state(params: HeatPumpParams, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Draw initial indoor temperatures uniformly within each agent's comfort band.

    Args:
        params: Heat-pump parameters ([N] tensors).
        batch_size: Batch size B.
        generator: Source of randomness.

    Returns:
        t_indoor_c [B, N] in degrees C, dtype and device of ``params``.
    """
    return _uniform_between(params.t_min_c, params.t_max_c, batch_size, generator)


def initial_generator_state(params: GeneratorParams, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Initial previous output of every generator: its minimum stable output ``p_min_kw`` (0 kW if it can
    switch off).

    Args:
        params: Generator parameters ([N] tensors).
        batch_size: Batch size B.
        generator: Unused (no randomness; kept so that all device types share one signature). No numbers
            are drawn from it.

    Returns:
        p_prev_kw [B, N] in kW (output, generation positive), dtype and device of ``params``.
    """
    del generator
    return params.p_min_kw.expand(batch_size, params.n_agents).clone()


# --------------------------------------------------------------------------------------------------------
# Step functions
# --------------------------------------------------------------------------------------------------------


def _project(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Clamp ``x`` onto ``[low, high]`` elementwise with gradients to all three arguments.

    ``torch.minimum``/``torch.maximum`` route the gradient to whichever argument is active, so a clamped
    request gets zero gradient w.r.t. itself and the bound's gradient flows to the state.
    """
    return torch.minimum(torch.maximum(x, low), high)


def battery_power_limits(
    params: BatteryParams, soc_kwh: torch.Tensor, dt_h: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The feasible interval ``[p_lo, p_hi]`` [B, N] of a battery's power in kW for one step (`battery_step`):
    ``p_lo <= 0 <= p_hi`` keep the next state of charge within its bounds."""
    headroom_kwh = torch.clamp(params.soc_max_kwh - soc_kwh, min=0.0)
    available_kwh = torch.clamp(soc_kwh - params.soc_min_kwh, min=0.0)
    p_hi = torch.minimum(params.p_max_kw, headroom_kwh / (params.eta_charge * dt_h))
    p_lo = -torch.minimum(params.p_max_kw, available_kwh * params.eta_discharge / dt_h)
    return p_lo, p_hi


def battery_step(params: BatteryParams, soc_kwh: torch.Tensor, action: torch.Tensor, dt_h: float) -> DeviceStep:
    """Advance all batteries by one step.

    The request ``action * p_max_kw`` (positive = charging) is projected onto the feasible interval
    ``[p_lo, p_hi]`` with::

        p_hi = min(p_max,  max(soc_max - soc, 0) / (eta_c * dt))
        p_lo = -min(p_max, max(soc - soc_min, 0) * eta_d / dt)

    so that ``soc' = soc + dt * (eta_c * max(p, 0) - max(-p, 0) / eta_d)`` stays within
    ``[soc_min, soc_max]`` (up to rounding) whenever ``soc`` does. A state already outside its bounds is
    not pulled back, but it cannot be pushed further out.

    Args:
        params: Battery parameters ([N] tensors).
        soc_kwh: State of charge [B, N] in kWh.
        action: Normalised power request [B, N], assumed in [-1, 1]; +1 = charge at ``p_max_kw``.
        dt_h: Step length in hours (> 0).

    Returns:
        DeviceStep with ``p_kw`` the delivered power at the grid connection (positive = charging),
        ``next_state`` the new state of charge in kWh, ``device_cost`` the degradation cost
        ``degradation_cost_per_kwh * |p_kw| * dt_h`` in $, and ``violation`` ``|requested - delivered|``
        in kW.
    """
    p_request = action * params.p_max_kw
    p_lo, p_hi = battery_power_limits(params, soc_kwh, dt_h)
    p_kw = _project(p_request, p_lo, p_hi)

    charge_kw = torch.relu(p_kw)
    discharge_kw = torch.relu(-p_kw)
    next_soc = soc_kwh + dt_h * (params.eta_charge * charge_kw - discharge_kw / params.eta_discharge)
    cost = params.degradation_cost_per_kwh * torch.abs(p_kw) * dt_h
    violation = torch.abs(p_request - p_kw)
    return DeviceStep(p_kw=p_kw, next_state=next_soc, device_cost=cost, violation=violation)


def _cop(carnot_efficiency: torch.Tensor, t_outdoor_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = HEAT_EXCHANGER_APPROACH_K
    heat_hot_k = HEATING_SINK_C + d + 273.15
    cool_cold_k = COOLING_SOURCE_C - d + 273.15
    lift_heat_k = torch.clamp((HEATING_SINK_C + d) - (t_outdoor_c - d), min=MIN_LIFT_K)
    lift_cool_k = torch.clamp((t_outdoor_c + d) - (COOLING_SOURCE_C - d), min=MIN_LIFT_K)
    cop_heat = torch.clamp(carnot_efficiency * heat_hot_k / lift_heat_k, COP_MIN, COP_MAX)
    cop_cool = torch.clamp(carnot_efficiency * cool_cold_k / lift_cool_k, COP_MIN, COP_MAX)
    return cop_heat, cop_cool


def heatpump_cop(params: HeatPumpParams, t_outdoor_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Heating and cooling coefficients of performance as functions of the outdoor temperature.

    Carnot-fraction model on refrigerant temperatures (kelvin, ``d = HEAT_EXCHANGER_APPROACH_K``)::

        heating: T_hot = HEATING_SINK_C + d,  T_cold = T_out - d
        cooling: T_hot = T_out + d,           T_cold = COOLING_SOURCE_C - d
        cop_heat = clip(eta * T_hot  / max(T_hot - T_cold, MIN_LIFT_K), COP_MIN, COP_MAX)
        cop_cool = clip(eta * T_cold / max(T_hot - T_cold, MIN_LIFT_K), COP_MIN, COP_MAX)

    with ``eta = carnot_efficiency``. The heating COP falls as it gets colder (about 3.7 at 7 C and 2.7 at
    -7 C for eta = 0.45), the cooling COP falls as it gets hotter (about 3.3 at 35 C). Both are
    non-increasing in the lift, and finite with finite gradients for every outdoor temperature.

    Args:
        params: Heat-pump parameters ([N] tensors).
        t_outdoor_c: Outdoor temperature in degrees C, [B, N] or broadcastable (e.g. [B, 1]).

    Returns:
        ``(cop_heat, cop_cool)``, each broadcast to the shape of ``t_outdoor_c`` against [N].
    """
    return _cop(params.carnot_efficiency, t_outdoor_c)


def heatpump_heating(params: HeatPumpParams, t_outdoor_c: torch.Tensor) -> torch.Tensor:
    """Mode of every heat pump: True (heating) when the outdoor temperature is below the comfort band's
    centre, False (cooling) otherwise; a changeover thermostat. Shape of ``t_outdoor_c`` against [N]."""
    return t_outdoor_c < 0.5 * (params.t_min_c + params.t_max_c)


def heatpump_response(
    params: HeatPumpParams, t_indoor_c: torch.Tensor, t_outdoor_c: torch.Tensor, dt_h: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next indoor temperature as an affine function of the electrical fraction ``u`` in [0, 1]
    (`heatpump_step`): ``T' = free_c + gain_k * u``, with ``free_c`` the temperature the building drifts to with
    the unit off and ``gain_k`` (K, > 0 heating, < 0 cooling) what full load adds. Shapes [B, N]."""
    cop_heat, cop_cool = heatpump_cop(params, t_outdoor_c)
    heating = heatpump_heating(params, t_outdoor_c)
    q_full_kw = torch.where(heating, params.p_max_kw * cop_heat, -params.p_max_kw * cop_cool)
    decay = torch.exp(-dt_h / (params.r_k_per_kw * params.c_kwh_per_k))
    # T' = T_ss + (T - T_ss) * decay with T_ss = T_out + R q, and q = u * q_full
    free_c = t_outdoor_c + (t_indoor_c - t_outdoor_c) * decay
    gain_k = params.r_k_per_kw * q_full_kw * (1.0 - decay)
    return free_c, gain_k


def heatpump_comfort_limits(
    params: HeatPumpParams, t_indoor_c: torch.Tensor, t_outdoor_c: torch.Tensor, dt_h: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The electrical fractions ``[u_lo, u_hi]`` within [0, 1] that keep the next indoor temperature inside
    the comfort band (`heatpump_response`), [B, N] each. Where no fraction can (too cold for full load, or
    too warm with the unit off), both are the bound that comes closest, so ``u_lo == u_hi``."""
    free_c, gain_k = heatpump_response(params, t_indoor_c, t_outdoor_c, dt_h)
    to_min, to_max = (params.t_min_c - free_c) / gain_k, (params.t_max_c - free_c) / gain_k
    heating = gain_k > 0
    u_lo = torch.where(heating, to_min, to_max).clamp(0.0, 1.0)
    u_hi = torch.where(heating, to_max, to_min).clamp(0.0, 1.0)
    return u_lo, u_hi


def heatpump_step(
    params: HeatPumpParams,
    t_indoor_c: torch.Tensor,
    action: torch.Tensor,
    t_outdoor_c: torch.Tensor,
    dt_h: float,
) -> DeviceStep:
    """Advance all heat pumps and their 1R1C buildings by one step.

    The action sets the normalised electrical input ``u = (1 + a) / 2`` in [0, 1], ``p = u * p_max_kw``
    (``a = -1``: off, ``a = +1``: full load). The mode follows the outdoor temperature
    (`heatpump_heating`): below the band centre the unit heats, ``q = u * p_max_kw * cop_heat``, otherwise it
    cools, ``q = -u * p_max_kw * cop_cool`` (see :func:`heatpump_cop`). Holding ``q`` and ``T_out`` constant
    over the step, ``C dT/dt = q - (T - T_out) / R`` is integrated exactly::

        T_ss = T_out + R q
        T'   = T_ss + (T - T_ss) * exp(-dt / (R C))

    Everything is smooth in ``a`` (the mode does not depend on it).

    Args:
        params: Heat-pump parameters ([N] tensors).
        t_indoor_c: Indoor temperature [B, N] in degrees C.
        action: Normalised request [B, N], assumed in [-1, 1]; -1 = off, +1 = full load.
        t_outdoor_c: Outdoor temperature in degrees C, [B, N] or broadcastable to it (e.g. [B, 1]).
        dt_h: Step length in hours (> 0).

    Returns:
        DeviceStep with ``p_kw`` the electrical input (>= 0) in kW, ``next_state`` the indoor temperature
        in degrees C, ``device_cost`` zeros ($; electricity is priced elsewhere), and ``violation`` the
        comfort-band excursion of the next indoor temperature in K:
        ``relu(T' - t_max_c) + relu(t_min_c - T')``.
    """
    u = 0.5 * (1.0 + action)
    free_c, gain_k = heatpump_response(params, t_indoor_c, t_outdoor_c, dt_h)
    next_t = free_c + gain_k * u
    p_kw = u * params.p_max_kw

    violation = torch.relu(next_t - params.t_max_c) + torch.relu(params.t_min_c - next_t)
    cost = torch.zeros_like(next_t)
    # Heat-pump outputs are all [B, N]; p_kw could otherwise keep a smaller shape than the state.
    p_kw = p_kw.expand_as(next_t)
    return DeviceStep(p_kw=p_kw, next_state=next_t, device_cost=cost, violation=violation)


def generator_output_limits(
    params: GeneratorParams, p_prev_kw: torch.Tensor, dt_h: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The feasible output window ``[low, high]`` [B, N] of a generator in kW for one step (`generator_step`):
    its output limits intersected with the ramp window around ``p_prev_kw``."""
    ramp_kw = params.ramp_kw_per_h * dt_h
    # Clip the ramp window to the output limits first so that low <= high even if p_prev_kw lies outside
    # [p_min, p_max]; with ramp = +inf the window is just the output limits.
    low = torch.maximum(params.p_min_kw, torch.minimum(p_prev_kw - ramp_kw, params.p_max_kw))
    high = torch.minimum(params.p_max_kw, torch.maximum(p_prev_kw + ramp_kw, params.p_min_kw))
    return low, high


def generator_step(params: GeneratorParams, p_prev_kw: torch.Tensor, action: torch.Tensor, dt_h: float) -> DeviceStep:
    """Advance all generators by one step.

    The action maps affinely onto the requested output (generation positive)::

        out_req = p_min + (1 - a) / 2 * (p_max - p_min)

    so ``a = -1`` requests full output and ``a = +1`` the minimum stable output (0.15 ``p_max`` by default, so
    ``p_kw / p_max_kw`` spans [-1, -0.15]; 0 kW, off, for a generator built with ``p_min = 0``). The request is
    projected onto ``[max(p_min, prev - ramp*dt), min(p_max, prev + ramp*dt)]`` (the ramp window is first
    clipped to the output limits, so the interval is never empty).

    Args:
        params: Generator parameters ([N] tensors).
        p_prev_kw: Output of the previous step [B, N] in kW, generation positive (i.e. ``-p_kw`` of the
            previous step).
        action: Normalised request [B, N], assumed in [-1, 1]; -1 = full output, +1 = off.
        dt_h: Step length in hours (> 0).

    Returns:
        DeviceStep with ``p_kw = -output`` (kW, <= 0 when p_min >= 0), ``next_state`` the delivered output
        in kW (generation positive), ``device_cost`` the fuel cost ``(c1 * out + c2 * out^2) * dt_h`` in $,
        and ``violation`` ``|requested - delivered|`` output in kW.
    """
    out_request = params.p_min_kw + 0.5 * (1.0 - action) * (params.p_max_kw - params.p_min_kw)
    low, high = generator_output_limits(params, p_prev_kw, dt_h)
    out_kw = _project(out_request, low, high)

    cost = (params.fuel_cost_c1_per_kwh * out_kw + params.fuel_cost_c2_per_kw2h * out_kw**2) * dt_h
    violation = torch.abs(out_request - out_kw)
    return DeviceStep(p_kw=-out_kw, next_state=out_kw, device_cost=cost, violation=violation)


# --------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------


class DeviceType(NamedTuple):
    """Everything a core needs to handle one device type without knowing which it is.

    Attributes:
        params_cls: The frozen parameter dataclass.
        sample_params: ``(n, generator, dtype=..., device=...) -> params``.
        initial_state: ``(params, batch_size, generator) -> state [B, N]``.
        step: ``(params, state, action, *, dt_h, **exogenous) -> DeviceStep``; call it with ``dt_h`` and the
            exogenous inputs by keyword, e.g. ``spec.step(p, s, a, dt_h=0.5, **{k: exo[k] for k in
            spec.exogenous})``.
        state_name: Name (with unit) of the state tensor: ``soc_kwh``, ``t_indoor_c`` or ``p_prev_kw``.
        exogenous: Names of the exogenous keyword inputs the step needs (``("t_outdoor_c",)`` for heat pumps).
    """

    params_cls: type
    sample_params: Callable[..., Any]
    initial_state: Callable[..., torch.Tensor]
    step: Callable[..., DeviceStep]
    state_name: str
    exogenous: tuple[str, ...]


#: Device type name (as in agent names ``<type>_<i>``) -> its models.
DEVICE_TYPES: dict[str, DeviceType] = {
    "battery": DeviceType(BatteryParams, sample_battery_params, initial_battery_state, battery_step, "soc_kwh", ()),
    "heatpump": DeviceType(
        HeatPumpParams,
        sample_heatpump_params,
        initial_heatpump_state,
        heatpump_step,
        "t_indoor_c",
        ("t_outdoor_c",),
    ),
    "generator": DeviceType(
        GeneratorParams, sample_generator_params, initial_generator_state, generator_step, "p_prev_kw", ()
    ),
}
