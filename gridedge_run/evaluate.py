"""One evaluation loop for every method: run a policy on held-out days and report the standard metrics.

`evaluate_policy(sim, policy_fn, split="test", days=None)` rolls out ``policy_fn(sim, state) -> actions
[B, N]`` over whole days without gradient and returns

- ``cost``: operating cost, $ per day summed over all agents (electricity + degradation + fuel), mean
  over the days;
- ``violation_share``: share of node-steps outside [v_min_pu, v_max_pu] (0.95-1.05 pu by default), over
  every feeder node, step and day whose power flow converged;
- ``violation_sum_pu``: voltage violation in pu·steps, summed over nodes and steps, mean per day;
- ``worst_violation_pu``: the largest excursion outside the band, pu;
- ``device_violation``: mean device violation per agent-step (kW projected away for batteries and
  generators, K outside the comfort band for heat pumps), with the per-type means in
  ``device_violation_by_type``;
- ``pf_failures``: number of (day, step) power flows that did not converge (their voltages are left out);
- ``cost_by_type``: ``cost`` split over battery, heat pump and generator agents;
- ``n_agents``, ``days``, ``split``, ``wall_s``.

Days and household draws do not depend on the batch size: every day is reset on its own with seed
``seed * 1_000_003 + day`` and the rows are then batched, so every method sees exactly the same episodes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from gridedge_env.episodes import reset_days, select_days

__all__ = ["EVAL_KEYS", "evaluate_policy", "obs_policy"]

#: Keys every evaluation reports (the same for every method).
EVAL_KEYS = ("cost", "violation_share", "violation_sum_pu", "worst_violation_pu", "device_violation",
             "pf_failures", "n_agents", "days", "wall_s")


def obs_policy(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    """Adapt a decentralised ``fn(obs [B, N, d]) -> actions [B, N]`` to ``policy(sim, state)``: the policy
    sees nothing but the agents' own observations."""

    def policy(sim, state) -> torch.Tensor:
        return fn(state.obs)

    return policy


def evaluate_policy(
    sim,
    policy_fn: Callable,
    split: str = "test",
    days: int | Sequence[int] | None = None,
    batch: int = 16,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Run ``policy_fn`` on whole days of ``split`` and report the standard metrics (module docstring).

    Args:
        sim: The simulator (`gridedge_env.make_sim`).
        policy_fn: ``policy(sim, state) -> actions [B, N]`` in [-1, 1]; wrap an observation-only policy
            with `obs_policy`.
        split: "test" (default), "train" or "all".
        days: None (every day of the split), a count (evenly spaced), or explicit day indices.
        batch: Days simulated together (does not change the numbers).
        seed: Seed of the household-load draws and initial device states.
        progress: Optional ``callback(done_days, total_days)``.

    Returns:
        A dict with `EVAL_KEYS` and a few more (``split``, ``cost_per_agent_day``, ``cost_by_type``,
        ``device_violation_by_type``, ``v_min_pu``, ``v_max_pu``).
    """
    t0 = time.perf_counter()
    chosen = select_days(split, days)
    v_lo, v_hi = sim.config.v_min_pu, sim.config.v_max_pu
    cost_sum = 0.0
    outside = 0
    node_steps = 0
    viol_sum = 0.0
    worst = 0.0
    v_min, v_max = float("inf"), float("-inf")
    dev_sum = torch.zeros(sim.n_agents, dtype=torch.float64)
    cost_agents = torch.zeros(sim.n_agents, dtype=torch.float64)
    failures = 0
    with torch.no_grad():
        for start in range(0, len(chosen), batch):
            part = chosen[start:start + batch]
            state = reset_days(sim, split, part, seed)
            for _ in range(sim.n_steps):
                actions = policy_fn(sim, state)
                r = sim.step(state, actions)
                state = r.state
                cost_sum += float(r.cost.sum())
                cost_agents += r.cost.sum(dim=0).to(torch.float64).cpu()
                dev_sum += r.device_violation.sum(dim=0).to(torch.float64).cpu()
                ok = r.converged
                failures += int((~ok).sum())
                if bool(ok.any()):
                    v = r.v_mag_pu[ok]
                    w = torch.relu(v - v_hi) + torch.relu(v_lo - v)
                    outside += int(((v > v_hi) | (v < v_lo)).sum())
                    node_steps += v.numel()
                    viol_sum += float(w.sum())
                    worst = max(worst, float(w.max()))
                    v_min, v_max = min(v_min, float(v.min())), max(v_max, float(v.max()))
            if progress is not None:
                progress(min(start + batch, len(chosen)), len(chosen))
    n_days = len(chosen)
    steps = n_days * sim.n_steps
    by_type = {name: float(dev_sum[sl].sum() / max((sl.stop - sl.start) * steps, 1))
               for name, sl in sim.agent_slices.items()}
    return {
        "cost": cost_sum / n_days,
        "violation_share": outside / max(node_steps, 1),
        "violation_sum_pu": viol_sum / n_days,
        "worst_violation_pu": worst,
        "device_violation": float(dev_sum.sum() / (sim.n_agents * steps)),
        "pf_failures": failures,
        "n_agents": sim.n_agents,
        "days": n_days,
        "split": split,
        "cost_per_agent_day": cost_sum / (n_days * sim.n_agents),
        "cost_by_type": {name: float(cost_agents[sl].sum()) / n_days for name, sl in sim.agent_slices.items()},
        "device_violation_by_type": by_type,
        "v_min_pu": v_min,
        "v_max_pu": v_max,
        "wall_s": time.perf_counter() - t0,
    }
