"""The standard metrics of a rollout, one definition for every trainer, the evaluation and the benchmarks.

`RolloutMetrics(sim)` accumulates `StepResult`s (``add(result)`` after every step of any number of B-row
rollouts) and `summary(days)` reports, under these names everywhere (metrics.csv, evaluation JSON,
comparison tables, docs):

- ``cost``: operating cost, $ per day summed over all agents (electricity + degradation + fuel + terminal),
  mean over the days (every row counts, also one whose power flow failed);
- ``violation_share``: share of node-steps outside [v_min_pu, v_max_pu], over every feeder node, step and
  row;
- ``violation_sum_pu``: voltage violation in pu·steps, summed over nodes and steps, mean per day;
- ``worst_violation_pu``: the largest excursion outside the band, pu (the worst excursion);
- ``battery_undelivered_kwh``, ``generator_undelivered_kwh``: energy of the requests the device could not
  carry out (kW projected away times the step length in hours), kWh per device and day;
- ``heatpump_comfort_k_steps``: indoor temperature outside the comfort band, K summed over the steps, per
  heat pump and day;
- ``battery_terminal_shortfall_kwh``: state of charge at the end of the day below its initial value, kWh per
  battery and day;
- ``heatpump_terminal_outside_k``: indoor temperature outside the comfort band at the end of the day, K per
  heat pump and day (the last step's share of ``heatpump_comfort_k_steps``);
- ``pf_failures``: number of (row, step) power flows that did not converge.

Every device metric is a mean over the devices of its type and the days; a type without devices reports 0.
Kilowatts and kelvins are never added together.

**A failed power flow counts as voltage collapse** (`scored_voltages`): every node of that row-step is
scored at 0 pu, so it counts as outside the band in ``violation_share`` (and ``violation_share_under``),
adds ``v_min_pu`` per node to ``violation_sum_pu`` and makes ``worst_violation_pu`` at least ``v_min_pu``.
Its cost and device metrics are those of the device models, which do not depend on the power flow. The
learners' Lagrangians score failures the same way (`gradmap_agent.losses.step_lagrangian`).

Beside them `summary` reports ``cost_per_agent_day``, ``cost_by_type`` ($ per day), ``terminal_cost`` ($ per
day, part of ``cost``), ``worst_agent`` (the five device metrics of the worst device of each type: its own
mean per day), ``violation_share_over`` and ``violation_share_under`` (above v_max_pu, below v_min_pu),
``v_min_pu``, ``v_max_pu`` (extremes over the converged rows) and ``days``.

`run_episode(sim, state, policy, metrics)` rolls a ``policy(sim, state) -> actions [B, N]`` out to the end
of the episode without gradient, adding every step to ``metrics``.
"""

from __future__ import annotations

import torch

__all__ = [
    "DEVICE_METRIC_NAMES",
    "EVAL_METRICS",
    "FAILED_FLOW_V_PU",
    "METRIC_NAMES",
    "VIOLATION_METRICS",
    "RolloutMetrics",
    "daily_violation_units",
    "run_episode",
    "scored_voltages",
]

#: Device type -> the summary name of its constraint violation per device and day (its unit in the name).
VIOLATION_METRICS = {
    "battery": "battery_undelivered_kwh",
    "heatpump": "heatpump_comfort_k_steps",
    "generator": "generator_undelivered_kwh",
}

#: Device type -> the summary name of its terminal shortfall per device and day.
TERMINAL_METRICS = {"battery": "battery_terminal_shortfall_kwh", "heatpump": "heatpump_terminal_outside_k"}

#: The per-type device metrics, in the order tables show them.
DEVICE_METRIC_NAMES = (*VIOLATION_METRICS.values(), *TERMINAL_METRICS.values())

#: The standard metrics, in the order tables show them (a trainer's metrics.csv columns).
METRIC_NAMES = (
    "cost",
    "violation_share",
    "violation_sum_pu",
    "worst_violation_pu",
    *DEVICE_METRIC_NAMES,
    "pf_failures",
)

#: The metrics of a trainer's periodic evaluations on validation days (metrics.csv columns ``eval_<name>``).
EVAL_METRICS = ("cost", "violation_share", "worst_violation_pu", *VIOLATION_METRICS.values())

#: Voltage magnitude every node of a failed power flow is scored at, pu: a failure counts as voltage collapse.
FAILED_FLOW_V_PU = 0.0


def scored_voltages(v_mag_pu: torch.Tensor, converged: torch.Tensor) -> torch.Tensor:
    """``v_mag_pu`` [B, n] with every node of a row whose power flow failed (``converged`` [B] False) at
    `FAILED_FLOW_V_PU`; no gradient reaches the non-converged solve's voltages."""
    return torch.where(converged[:, None], v_mag_pu, FAILED_FLOW_V_PU)


def daily_violation_units(sim) -> torch.Tensor:
    """[N] float64 factor that turns an agent's step device violation into its metric's unit: the step length
    in hours for batteries and generators (kW -> kWh), 1 for heat pumps (K -> K-steps)."""
    units = torch.ones(sim.n_agents, dtype=torch.float64)
    for name, sl in sim.agent_slices.items():
        if VIOLATION_METRICS[name].endswith("_kwh"):
            units[sl] = sim.dt_h
    return units


class RolloutMetrics:
    """Accumulator of the standard metrics over the steps of one or more rollouts of ``sim``."""

    def __init__(self, sim):
        self.v_min_pu, self.v_max_pu = sim.config.v_min_pu, sim.config.v_max_pu
        self.n_agents = sim.n_agents
        self.agent_slices = dict(sim.agent_slices)
        self.units = daily_violation_units(sim)
        self.cost_sum = 0.0
        self.terminal_cost_sum = 0.0
        self.cost_by_agent = torch.zeros(sim.n_agents, dtype=torch.float64)
        self.device_by_agent = torch.zeros(sim.n_agents, dtype=torch.float64)  # in the metric's unit
        self.terminal_by_agent = torch.zeros(sim.n_agents, dtype=torch.float64)
        self.outside = 0
        self.over = 0
        self.node_steps = 0
        self.violation_sum = 0.0
        self.worst = 0.0
        self.failures = 0
        self.v_min, self.v_max = float("inf"), float("-inf")

    @torch.no_grad()
    def add(self, result) -> None:
        """Fold in one step of B rows (a `StepResult`; its graph, if any, is not touched)."""
        cost = result.cost.detach()
        self.cost_sum += float(cost.sum())
        self.terminal_cost_sum += float(result.terminal_cost.detach().sum())
        self.cost_by_agent += cost.sum(dim=0).to(torch.float64).cpu()
        device = result.device_violation.detach().sum(dim=0).to(torch.float64).cpu()
        self.device_by_agent += device * self.units
        shortfall = result.terminal_shortfall.detach().sum(dim=0).to(torch.float64).cpu()
        for name in TERMINAL_METRICS:
            sl = self.agent_slices.get(name)
            if sl is None:
                continue
            if name == "battery":
                self.terminal_by_agent[sl] += shortfall[sl]
            elif result.truncated:  # heat pump: outside the band after the day's last step
                self.terminal_by_agent[sl] += device[sl]
        ok = result.converged
        self.failures += int((~ok).sum())
        v = scored_voltages(result.v_mag_pu.detach(), ok)
        excess = torch.relu(v - self.v_max_pu) + torch.relu(self.v_min_pu - v)
        over = int((v > self.v_max_pu).sum())
        self.over += over
        self.outside += over + int((v < self.v_min_pu).sum())
        self.node_steps += v.numel()
        self.violation_sum += float(excess.sum())
        self.worst = max(self.worst, float(excess.max()))
        if bool(ok.any()):
            solved = result.v_mag_pu.detach()[ok]
            self.v_min, self.v_max = min(self.v_min, float(solved.min())), max(self.v_max, float(solved.max()))

    def standard(self, days: int) -> dict:
        """The standard metrics alone (`METRIC_NAMES`; a trainer's metrics.csv columns)."""
        summary = self.summary(days)
        return {name: summary[name] for name in METRIC_NAMES}

    def _per_device(self, per_agent: torch.Tensor, names: dict[str, str], days: int) -> tuple[dict, dict]:
        """``({metric: mean over the type's devices}, {metric: the worst device's}``, both per day."""
        mean, worst = {}, {}
        for name, metric in names.items():
            sl = self.agent_slices.get(name)
            values = per_agent[sl] / days if sl is not None and sl.stop > sl.start else torch.zeros(1)
            mean[metric], worst[metric] = float(values.mean()), float(values.max())
        return mean, worst

    def summary(self, days: int) -> dict:
        """The metrics (module docstring) with per-day values over ``days`` rollout rows (days)."""
        if days < 1:
            raise ValueError(f"days must be >= 1, got {days}")
        violation, violation_worst = self._per_device(self.device_by_agent, VIOLATION_METRICS, days)
        terminal, terminal_worst = self._per_device(self.terminal_by_agent, TERMINAL_METRICS, days)
        node_steps = max(self.node_steps, 1)
        return {
            "cost": self.cost_sum / days,
            "violation_share": self.outside / node_steps,
            "violation_sum_pu": self.violation_sum / days,
            "worst_violation_pu": self.worst,
            **violation,
            **terminal,
            "pf_failures": self.failures,
            "days": days,
            "cost_per_agent_day": self.cost_sum / (days * self.n_agents),
            "cost_by_type": {
                name: float(self.cost_by_agent[sl].sum()) / days for name, sl in self.agent_slices.items()
            },
            "terminal_cost": self.terminal_cost_sum / days,
            "worst_agent": {**violation_worst, **terminal_worst},
            "violation_share_over": self.over / node_steps,
            "violation_share_under": (self.outside - self.over) / node_steps,
            "v_min_pu": self.v_min,
            "v_max_pu": self.v_max,
        }


def run_episode(sim, state, policy, metrics: RolloutMetrics):
    """Step ``policy(sim, state) -> actions [B, N]`` from ``state`` to the end of the episode without
    gradient, adding every step to ``metrics``; returns the final state."""
    with torch.no_grad():
        for _ in range(sim.n_steps - state.t):
            r = sim.step(state, policy(sim, state))
            state = r.state
            metrics.add(r)
    return state
