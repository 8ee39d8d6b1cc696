"""The standard metrics of a rollout, one definition for every trainer, the evaluation and the benchmarks.

`RolloutMetrics(sim)` accumulates `StepResult`s (``add(result)`` after every step of any number of B-row
rollouts) and `summary(days)` reports, under these names everywhere (metrics.csv, evaluation JSON,
comparison tables, docs):

- ``cost``: operating cost, $ per day summed over all agents (electricity + degradation + fuel), mean over
  the days (every row counts, also one whose power flow failed);
- ``violation_share``: share of node-steps outside [v_min_pu, v_max_pu], over every feeder node, step and
  row; every node of a row-step whose power flow failed counts as outside, so failures never score well;
- ``violation_sum_pu``: voltage violation in pu·steps, summed over nodes and steps, mean per day;
- ``worst_violation_pu``: the largest excursion outside the band, pu (the worst excursion);
- ``device_violation``: mean device violation per agent-step (kW projected away for batteries and
  generators, K outside the comfort band for heat pumps);
- ``pf_failures``: number of (row, step) power flows that did not converge (counted as violated in
  ``violation_share``; their voltages are left out of the pu metrics);

Beside them `summary` reports ``cost_per_agent_day``, ``cost_by_type``, ``device_violation_by_type``,
``violation_share_over`` and ``violation_share_under`` (above v_max_pu, below v_min_pu), ``v_min_pu``,
``v_max_pu`` (extremes over the converged rows) and ``days``.

`run_episode(sim, state, policy, metrics)` rolls a ``policy(sim, state) -> actions [B, N]`` out to the end
of the episode without gradient, adding every step to ``metrics``.
"""

from __future__ import annotations

import torch

__all__ = ["METRIC_NAMES", "RolloutMetrics", "run_episode"]

#: The standard metrics, in the order tables show them.
METRIC_NAMES = ("cost", "violation_share", "violation_sum_pu", "worst_violation_pu", "device_violation", "pf_failures")


class RolloutMetrics:
    """Accumulator of the standard metrics over the steps of one or more rollouts of ``sim``."""

    def __init__(self, sim):
        self.v_min_pu, self.v_max_pu = sim.config.v_min_pu, sim.config.v_max_pu
        self.n_agents = sim.n_agents
        self.agent_slices = dict(sim.agent_slices)
        self.cost_sum = 0.0
        self.cost_by_agent = torch.zeros(sim.n_agents, dtype=torch.float64)
        self.device_by_agent = torch.zeros(sim.n_agents, dtype=torch.float64)
        self.row_steps = 0
        self.outside = 0
        self.over = 0
        self.node_steps = 0
        self.violation_sum = 0.0
        self.worst = 0.0
        self.failures = 0
        self.failed_node_steps = 0
        self.v_min, self.v_max = float("inf"), float("-inf")

    @torch.no_grad()
    def add(self, result) -> None:
        """Fold in one step of B rows (a `StepResult`; its graph, if any, is not touched)."""
        cost = result.cost.detach()
        self.cost_sum += float(cost.sum())
        self.cost_by_agent += cost.sum(dim=0).to(torch.float64).cpu()
        self.device_by_agent += result.device_violation.detach().sum(dim=0).to(torch.float64).cpu()
        self.row_steps += cost.shape[0]
        ok = result.converged
        failed = int((~ok).sum())
        self.failures += failed
        # a failed power flow is never free: every node of that row-step counts as outside the band
        n_nodes = result.v_mag_pu.shape[1]
        self.failed_node_steps += failed * n_nodes
        self.outside += failed * n_nodes
        self.node_steps += failed * n_nodes
        if bool(ok.any()):
            v = result.v_mag_pu.detach()[ok]
            excess = torch.relu(v - self.v_max_pu) + torch.relu(self.v_min_pu - v)
            over = int((v > self.v_max_pu).sum())
            self.over += over
            self.outside += over + int((v < self.v_min_pu).sum())
            self.node_steps += v.numel()
            self.violation_sum += float(excess.sum())
            self.worst = max(self.worst, float(excess.max()))
            self.v_min, self.v_max = min(self.v_min, float(v.min())), max(self.v_max, float(v.max()))

    def standard(self, days: int) -> dict:
        """The six standard metrics alone (`METRIC_NAMES`; a trainer's metrics.csv columns)."""
        summary = self.summary(days)
        return {name: summary[name] for name in METRIC_NAMES}

    def summary(self, days: int) -> dict:
        """The metrics (module docstring) with per-day values over ``days`` rollout rows (days)."""
        if days < 1:
            raise ValueError(f"days must be >= 1, got {days}")
        steps = max(self.row_steps, 1)
        return {
            "cost": self.cost_sum / days,
            "violation_share": self.outside / max(self.node_steps, 1),
            "violation_sum_pu": self.violation_sum / days,
            "worst_violation_pu": self.worst,
            "device_violation": float(self.device_by_agent.sum() / (self.n_agents * steps)),
            "pf_failures": self.failures,
            "days": days,
            "cost_per_agent_day": self.cost_sum / (days * self.n_agents),
            "cost_by_type": {
                name: float(self.cost_by_agent[sl].sum()) / days for name, sl in self.agent_slices.items()
            },
            "device_violation_by_type": {
                name: float(self.device_by_agent[sl].sum() / max((sl.stop - sl.start) * steps, 1))
                for name, sl in self.agent_slices.items()
            },
            "violation_share_over": self.over / max(self.node_steps, 1),
            "violation_share_under": (self.outside - self.over - self.failed_node_steps) / max(self.node_steps, 1),
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
