"""``gridedge profile``: where one GradMAP (or GradMA) iteration spends its wall time.

`profile_iteration` runs a warm-up iteration, then times each phase of ``iterations`` more with
`time.perf_counter` and reports the median per phase:

- ``rollout_forward_s``: B days through the policies and the differentiable simulator (power flows included);
- ``backward_s``: the one ``backward()`` that gives the environment gradient dL/da (implicit power-flow
  adjoints included);
- ``policy_updates_s``: the K policy updates on the proximal surrogate (K forward and backward passes of the
  per-agent networks, clipping, Adam);
- ``dual_step_s``: the projected dual ascent on the multipliers;
- ``other_s``: the observation normaliser and the parameters' moving average.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch

__all__ = ["PHASES", "profile_iteration"]

PHASES = ("rollout_forward_s", "backward_s", "policy_updates_s", "dual_step_s", "other_s")


@contextmanager
def _timed_backward(total: list[float]):
    """Adds the wall time of every ``Tensor.backward`` call inside the block to ``total[0]``."""
    original = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            total[0] += time.perf_counter() - t0

    torch.Tensor.backward = backward
    try:
        yield
    finally:
        torch.Tensor.backward = original


def _one_iteration(trainer) -> dict[str, float]:
    """The phases of `GradMAPTrainer.iterate`, timed one by one (the same calls in the same order)."""
    from gradmap_agent.distributed import fold_observations

    backward = [0.0]
    t0 = time.perf_counter()
    with _timed_backward(backward):
        roll = trainer.rollout()
    t1 = time.perf_counter()
    trainer.update_policy(roll, trainer.config.optim.lr_at(trainer.iteration))
    t2 = time.perf_counter()
    trainer.dual_step(roll)
    t3 = time.perf_counter()
    fold_observations(trainer.normalizer, roll["raw_obs"])
    trainer.average.step(trainer.policy)
    t4 = time.perf_counter()
    trainer.iteration += 1
    return {
        "rollout_forward_s": t1 - t0 - backward[0],
        "backward_s": backward[0],
        "policy_updates_s": t2 - t1,
        "dual_step_s": t3 - t2,
        "other_s": t4 - t3,
    }


def profile_iteration(sim, config, iterations: int = 3) -> dict:
    """Median wall time of each phase (`PHASES`) of a GradMAP iteration over ``iterations`` iterations after a
    warm-up one, with ``config`` (`gradmap_agent.GradMAPConfig`) on ``sim``; also ``iteration_s`` (their sum),
    each phase's ``share``, the K of the run and the torch threads."""
    from gradmap_agent.train import GradMAPTrainer

    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    trainer = GradMAPTrainer(sim, config)
    _one_iteration(trainer)  # warm-up: first-call allocations and caches
    runs = [_one_iteration(trainer) for _ in range(iterations)]
    phases = {k: statistics.median(r[k] for r in runs) for k in PHASES}
    total = sum(phases.values())
    return {
        **phases,
        "iteration_s": total,
        "share": {k: v / total for k, v in phases.items()},
        "reuse": config.reuse,
        "batch_days": config.batch_days,
        "n_agents": sim.n_agents,
        "iterations": iterations,
        "torch_threads": torch.get_num_threads(),
    }
