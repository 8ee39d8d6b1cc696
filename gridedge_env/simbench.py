"""Speed of the functional core, and the penalised rollout objective that it times.

- `bench_sim`: simulated agent-steps per second of forward rollouts and of forward + backward
  (``gridedge bench sim``);
- `rollout_objective(sim, state, actions, penalty)`: the summed cost of a rollout of given actions plus
  constraint terms (`fixed_penalty` or any `StepPenalty`), differentiable w.r.t. the actions; the
  perfect-foresight planner (`baselines.oracle`) minimises it.

The calibration of the task (the price-seeking rule and the optimum on test days) is
``python -m gridedge_run.calibration``.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import torch

from gridedge_env.core import Sim, State, StepResult, make_sim

__all__ = ["StepPenalty", "bench_sim", "fixed_penalty", "rollout_objective"]

#: ``penalty(k, result, ok) -> scalar``: the constraint terms of step ``k`` of a rollout (``result`` its
#: StepResult with graph, ``ok`` [B, 1] the converged rows as 0/1), added to the rows' summed cost.
StepPenalty = Callable[[int, StepResult, torch.Tensor], torch.Tensor]


def fixed_penalty(w_voltage: float, w_device: float) -> StepPenalty:
    """Fixed weights: ``w_device * sum(device_violation) + w_voltage * sum(voltage_violation)`` of a step."""

    def penalty(k: int, r: StepResult, ok: torch.Tensor) -> torch.Tensor:
        return w_device * (ok * r.device_violation).sum() + w_voltage * (ok * r.voltage_violation).sum()

    return penalty


def rollout_objective(sim: Sim, state: State, actions: torch.Tensor, penalty: StepPenalty):
    """Roll out ``actions`` [T, B, N] from ``state``; return ``(objective, [StepResult per step])``, the
    objective being the converged rows' summed cost plus ``penalty``'s terms (with its autograd graph)."""
    total = actions.new_zeros(())
    results = []
    for k in range(sim.n_steps):
        r = sim.step(state, actions[k])
        state = r.state
        ok = r.converged.to(actions.dtype)[:, None]
        total = total + (ok * r.cost).sum() + penalty(k, r, ok)
        results.append(r)
    return total, results


# ----------------------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------------------


def bench_sim(
    feeder: str = "ieee123",
    n_agents: int = 1000,
    batch: int = 32,
    *,
    repeats: int = 3,
    seed: int = 0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float64,
    threads: int | None = None,
) -> dict:
    """Time 48-step (one-day) rollouts of ``batch`` episodes with random actions.

    Forward: rollouts under ``torch.no_grad()``. Forward + backward: a rollout with ``requires_grad``
    actions, then one ``backward()`` of the total (costs + device and voltage violations), which gives the
    gradient w.r.t. every action. The best of ``repeats`` timings is reported (after one warm-up of each).

    Threads: with ``threads=None`` the timings are taken with one intra-op thread and with torch's current
    setting (if that is more), and the faster setting (by the sum of both timings) is reported, with both under
    ``by_threads``; the thread setting is restored afterwards. The tensors of one step are small (B x N), so
    a second thread gains little and, on a machine where another process keeps a core busy, stalls
    every operation.

    Returns:
        A dict with the setup, seconds per rollout and agent-steps per second (``batch * n_agents * T /
        seconds``) of both, the thread count used, mean power-flow iterations per step.
    """
    sim = make_sim(feeder=feeder, n_agents=n_agents, seed=seed, device=device, dtype=dtype)
    state0 = sim.reset(batch, seed=seed, split="train")
    gen = torch.Generator().manual_seed(seed)
    actions = 2 * torch.rand((sim.n_steps, batch, sim.n_agents), generator=gen, dtype=torch.float64) - 1
    actions = actions.to(dtype=dtype, device=device)

    def sync() -> None:
        if sim.device.type == "cuda":
            torch.cuda.synchronize(sim.device)

    def forward() -> float:
        sync()
        t0 = time.perf_counter()
        iters = 0.0
        with torch.no_grad():
            s = state0
            for k in range(sim.n_steps):
                r = sim.step(s, actions[k])
                s = r.state
                iters += float(r.iterations.to(torch.float64).mean())
        sync()
        forward.iterations = iters / sim.n_steps
        return time.perf_counter() - t0

    def backward() -> float:
        sync()
        t0 = time.perf_counter()
        a = actions.clone().requires_grad_(True)
        objective, _ = rollout_objective(sim, state0, a, fixed_penalty(w_voltage=1e4, w_device=10.0))
        objective.backward()
        sync()
        if not bool(torch.isfinite(a.grad).all()):
            raise RuntimeError("non-finite gradient in bench_sim")
        return time.perf_counter() - t0

    configured = torch.get_num_threads()
    counts = sorted({1, configured}) if threads is None else [int(threads)]
    by_threads = {}
    try:
        for n in counts:
            torch.set_num_threads(n)
            forward()
            backward()
            t_fwd = min(forward() for _ in range(repeats))
            t_bwd = min(backward() for _ in range(repeats))
            by_threads[n] = (t_fwd, t_bwd)
    finally:
        torch.set_num_threads(configured)
    best = min(by_threads, key=lambda n: sum(by_threads[n]))
    t_fwd, t_bwd = by_threads[best]
    agent_steps = batch * sim.n_agents * sim.n_steps
    return {
        "feeder": feeder,
        "n_agents": sim.n_agents,
        "batch": batch,
        "steps": sim.n_steps,
        "dtype": str(dtype).replace("torch.", ""),
        "device": str(sim.device),
        "threads": best,
        "forward_s_per_rollout": t_fwd,
        "forward_agent_steps_per_s": agent_steps / t_fwd,
        "forward_backward_s_per_rollout": t_bwd,
        "forward_backward_agent_steps_per_s": agent_steps / t_bwd,
        "powerflow_iterations_per_step": forward.iterations,
        "by_threads": {
            str(n): {"forward_s_per_rollout": f, "forward_backward_s_per_rollout": b}
            for n, (f, b) in by_threads.items()
        },
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
