"""One evaluation loop for every method: run a policy on held-out days and report the standard metrics.

`evaluate_policy(sim, policy_fn, split="test", days=None)` rolls out ``policy_fn(sim, state) -> actions
[B, N]`` over whole days without gradient and returns the standard metrics of `gridedge_env.metrics`
(``cost``, the voltage metrics, the device metrics per type with their units in their names, ``pf_failures``,
per-type and worst-device splits, voltage extremes) plus ``n_agents``, ``days``, ``split`` and ``wall_s``.

Days and household draws do not depend on the batch size: every day is reset on its own with seed
``seed * 1_000_003 + day`` and the rows are then batched, so every method sees exactly the same episodes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from gridedge_env.episodes import reset_days, select_days
from gridedge_env.metrics import METRIC_NAMES, RolloutMetrics, run_episode

__all__ = ["EVAL_KEYS", "evaluate_policy", "obs_policy"]

#: Keys every evaluation reports (the same for every method).
EVAL_KEYS = (*METRIC_NAMES, "n_agents", "days", "wall_s")


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
    households: str | None = None,
) -> dict:
    """Run ``policy_fn`` on whole days of ``split`` and report the standard metrics (module docstring).

    Args:
        sim: The simulator (`gridedge_env.make_sim`).
        policy_fn: ``policy(sim, state) -> actions [B, N]`` in [-1, 1]; wrap an observation-only policy
            with `obs_policy`.
        split: "test" (default), "validation", "train" or "all".
        days: None (every day of the split), a count (evenly spaced), or explicit day indices.
        batch: Days simulated together (does not change the numbers).
        seed: Seed of the household-load draws and initial device states.
        progress: Optional ``callback(done_days, total_days)``.
        households: The split whose household profiles the loads come from (default ``split``'s own):
            ``split="test", households="all"`` runs the test days with households from every profile.

    Returns:
        A dict with `EVAL_KEYS` and the rest of `RolloutMetrics.summary` (``split``, ``households``, ``cost_by_type``,
        ``terminal_cost``, ``worst_agent``, ``v_min_pu``, ``v_max_pu``, ...).
    """
    t0 = time.perf_counter()
    households = split if households is None else households
    chosen = select_days(split, days)
    metrics = RolloutMetrics(sim)
    for start in range(0, len(chosen), batch):
        part = chosen[start : start + batch]
        run_episode(sim, reset_days(sim, split, part, seed, households), policy_fn, metrics)
        if progress is not None:
            progress(min(start + batch, len(chosen)), len(chosen))
    return {
        **metrics.summary(len(chosen)),
        "n_agents": sim.n_agents,
        "split": split,
        "households": households,
        "wall_s": time.perf_counter() - t0,
    }
