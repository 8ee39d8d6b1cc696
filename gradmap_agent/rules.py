"""Rule baselines that the simulator core offers, as ``policy(sim, state) -> actions [B, N]``.

- ``noop`` ("doing nothing"): batteries idle (action 0), generators off (action +1), heat pumps on the
  core's thermostat (`gridedge_env.price_seeking_actions`' heat-pump rule, which keeps the indoor
  temperature inside the comfort band, preheating/precooling in cheap hours). The same reference point as
  ``gridedge_env.simbench.idle_actions``.
- ``price-seeking``: the core's uncoordinated price-seeking rule (`gridedge_env.price_seeking_actions`).

Every rule acts on each agent's own data only (its device state, the day's tariff, the outdoor
temperature). The baselines issue moves these to ``baselines/rules.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gridedge_env import price_seeking_actions

__all__ = ["RULES", "noop_actions", "price_seeking_actions"]


def noop_actions(sim, state) -> torch.Tensor:
    """Batteries idle, generators off, heat pumps on the core's thermostat: [B, N] actions."""
    a = price_seeking_actions(sim, state).clone()
    a[:, sim.agent_slices["battery"]] = 0.0
    a[:, sim.agent_slices["generator"]] = 1.0
    return a


#: rule name -> ``policy(sim, state) -> actions [B, N]``
RULES: dict[str, Callable] = {
    "noop": noop_actions,
    "price-seeking": price_seeking_actions,
}
