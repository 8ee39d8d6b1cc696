"""Rule baselines: decentralised policies that need no learning, as ``policy(sim, state) -> actions [B, N]``.

- ``noop`` ("doing nothing", `noop_actions`): batteries idle (action 0), generators at their minimum output
  (action +1), heat pumps on the price-seeking thermostat (the heat-pump part of `price_seeking_actions`,
  which keeps the indoor temperature inside the comfort band, preheating/precooling in cheap hours). All
  zeros would switch the heat pumps off.
- ``price-seeking``: the uncoordinated price-seeking rule (`price_seeking_actions`), the reference the
  benchmark task is calibrated with (``python -m gridedge_run.calibration``).
- ``droop``: price-seeking inside a voltage dead band, and volt-watt curves outside it: each device reacts
  to its own node's last voltage (its observation ``v_node``) like a smart inverter (`droop_actions`).

Every rule acts on each agent's own data only (its device state, its node's voltage, the day's tariff, the
outdoor temperature). ``docs/baselines.md`` has the curves and their tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gridedge_env.core import (
    OBS_NAMES,
    OBS_SCALES,
    Sim,
    State,
    band_end_targets,
    builtin_actions,
    cheap_and_dear_steps,
    feasible_action_bounds,
    heatpump_target_actions,
    thermostat_actions,
)

__all__ = ["RULES", "DroopCurves", "droop_actions", "noop_actions", "price_seeking_actions"]


def price_seeking_actions(sim: Sim, state: State) -> torch.Tensor:
    """Uncoordinated price-seeking actions [B, N] for ``state`` (each agent uses its own data only).

    Cheap hours are the steps priced at the day's lowest rate, expensive hours those at its highest:

    - battery: charge at full power in cheap hours, discharge at full power in expensive hours, idle
      otherwise; the request is cut to what its state of charge allows in this step (no device violation);
    - generator: full output in expensive hours, minimum output otherwise, moving towards that target as fast as its
      ramp limit allows (no device violation);
    - heat pump: its thermostat (`gridedge_env.core.thermostat_actions`), which preheats (precools) in cheap
      hours. In heating mode (outdoor below the band centre) it aims at the top of its comfort band (minus a
      0.25 K margin) in cheap hours and at the bottom (plus the margin) otherwise; in cooling mode the other
      way round. The action is the one that reaches that temperature at the end of the step in the 1R1C
      model, clipped to [-1, 1].
    """
    cheap, dear = cheap_and_dear_steps(sim, state)
    low, high = feasible_action_bounds(sim, state)
    # battery: full power in the wanted direction, cut to what its state of charge allows this step
    sl = sim.agent_slices["battery"]
    want = torch.where(cheap, 1.0, torch.where(dear, -1.0, 0.0)).to(sim.dtype)
    battery = torch.clamp(want, low[:, sl], high[:, sl])
    # generator: full output (-1) in expensive hours, minimum (+1) otherwise, as fast as its ramp limit allows
    sl = sim.agent_slices["generator"]
    want = torch.where(dear, -1.0, 1.0).to(sim.dtype)
    generator = torch.clamp(want, low[:, sl], high[:, sl])
    return torch.cat([battery, thermostat_actions(sim, state), generator], dim=1).detach()


def noop_actions(sim: Sim, state: State) -> torch.Tensor:
    """Doing nothing: what every device does on its own (`gridedge_env.core.builtin_actions`): batteries idle,
    generators at their minimum output, heat pumps on the price-seeking thermostat."""
    return builtin_actions(sim, state).detach()


@dataclass(frozen=True)
class DroopCurves:
    """Breakpoints of the volt-watt curves, pu of the agent's own node voltage (``v_low_full <= v_low_zero <
    v_high_zero <= v_high_full``).

    In consumption terms (action +1 = most consumption: battery charging, generator at its minimum, heat pump at the
    most-consuming end of its comfort band; -1 = most export):

    - below ``v_low_zero`` the highest allowed action falls linearly from +1 to -1 at ``v_low_full``
      (batteries stop charging and then discharge, generators ramp up, heat pumps coast to the cold end of
      their band when heating);
    - above ``v_high_zero`` the lowest allowed action rises linearly from -1 to +1 at ``v_high_full``
      (batteries stop discharging and then charge, generators back off, heat pumps pre-heat);
    - in between, the price-seeking action stands.

    The defaults were tuned on the 70 validation days of IEEE-123 with 1,000 agents (``docs/baselines.md``). The
    curves start inside the band because an agent sees the voltage after the previous step; they are no
    steeper than 2 action units per 0.07 pu because every agent of a node reacts to the same voltage with
    a step's delay, and steeper curves (e.g. 0.05 pu wide) make whole nodes oscillate between export and
    import from one step to the next.
    """

    v_low_full: float = 0.92
    """At or below: full export (action -1)."""
    v_low_zero: float = 1.0
    """Above: no limit on consumption."""
    v_high_zero: float = 1.005
    """Below: no limit on export."""
    v_high_full: float = 1.065
    """At or above: full consumption (action +1)."""
    battery_reserve: bool = True
    """Batteries discharge only on the under-voltage curve, not in expensive hours: they keep their energy
    for the evening voltage dip instead of emptying at the start of the peak tariff."""

    def __post_init__(self) -> None:
        if not self.v_low_full <= self.v_low_zero < self.v_high_zero <= self.v_high_full:
            raise ValueError(
                f"droop breakpoints must satisfy v_low_full <= v_low_zero < v_high_zero <= "
                f"v_high_full, got {self.v_low_full}, {self.v_low_zero}, {self.v_high_zero}, "
                f"{self.v_high_full}"
            )

    def shares(self, v_pu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(low, high)`` in [0, 1], same shape as ``v_pu``: how far into the under- and over-voltage
        curves the voltage is (0 in the dead band, 1 at ``v_low_full`` / ``v_high_full`` and beyond)."""
        low = ((self.v_low_zero - v_pu) / max(self.v_low_zero - self.v_low_full, 1e-12)).clamp(0.0, 1.0)
        high = ((v_pu - self.v_high_zero) / max(self.v_high_full - self.v_high_zero, 1e-12)).clamp(0.0, 1.0)
        return low, high


_V_NODE = OBS_NAMES.index("v_node")


def droop_actions(sim, state, curves: DroopCurves = DroopCurves()) -> torch.Tensor:
    """Price-seeking actions limited by local volt-watt curves (`DroopCurves`): [B, N].

    Each agent reads only its own observation's ``v_node`` (its node's voltage after the previous step),
    its own device state and the tariff. Batteries and generators: the price-seeking action clipped to
    ``[-1 + 2 high, 1 - 2 low]`` (the curves' limits), then to what the device can do this step (state of
    charge, ramp limit), so the rule causes no device violation. With ``battery_reserve``, a battery's
    price-seeking discharge is dropped first (it still charges in cheap hours). Heat pumps: the price-seeking thermostat
    action moved towards the thermostat action for the least-consuming end of the comfort band (by the
    share ``low``) or the most-consuming end (by ``high``); heating consumes more at the warm end, cooling at
    the cool end, so comfort is kept either way.
    """
    v_pu = OBS_SCALES["v_pu_centre"] + OBS_SCALES["v_pu_half_band"] * state.obs[..., _V_NODE]
    low, high = curves.shares(v_pu.to(sim.dtype))
    base = price_seeking_actions(sim, state)
    if curves.battery_reserve:
        sl = sim.agent_slices["battery"]
        base[:, sl] = base[:, sl].clamp(min=0.0)
    action = torch.clamp(base, -1.0 + 2.0 * high, 1.0 - 2.0 * low)
    feasible_low, feasible_high = feasible_action_bounds(sim, state)
    action = torch.minimum(torch.maximum(action, feasible_low), feasible_high)

    sl = sim.agent_slices["heatpump"]
    least_c, most_c = band_end_targets(sim, state)
    least = heatpump_target_actions(sim, state, least_c)
    most = heatpump_target_actions(sim, state, most_c)
    hp = base[:, sl]
    action[:, sl] = hp + low[:, sl] * (least - hp) + high[:, sl] * (most - hp)
    return action.detach()


#: rule name -> ``policy(sim, state) -> actions [B, N]``
RULES: dict[str, Callable] = {
    "noop": noop_actions,
    "price-seeking": price_seeking_actions,
    "droop": droop_actions,
}
