"""Benchmarks and calibration of the functional core.

- `bench_sim`: simulated agent-steps per second of forward rollouts and of forward + backward
  (``gridedge bench sim``).
- `rollout_metrics`: voltage and device statistics of a rollout under a policy (e.g. the uncoordinated
  price-seeking rule `gridedge_env.core.price_seeking_actions`).
- `optimise_actions`: a quick centralised optimisation of all actions of a few episodes through the
  differentiable core (projected Adam on the actions, penalties on violations): evidence that a schedule
  without voltage violations exists.
- ``python -m gridedge_env.simbench calibrate [--json]`` prints the calibration numbers quoted in
  ``docs/simulator.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable

import torch

from gridedge_env.core import Sim, State, StepResult, make_sim, price_seeking_actions
from gridedge_env.scenarios import split_days

__all__ = ["bench_sim", "calibration_report", "fixed_penalty", "optimise_actions", "rollout_metrics"]

Policy = Callable[[Sim, State], torch.Tensor]


#: ``penalty(k, result, ok) -> scalar``: the constraint terms of step ``k`` of a rollout (``result`` its
#: StepResult with graph, ``ok`` [B, 1] the converged rows as 0/1), added to the rows' summed cost.
StepPenalty = Callable[[int, StepResult, torch.Tensor], torch.Tensor]


def fixed_penalty(w_voltage: float, w_device: float) -> StepPenalty:
    """Fixed weights: ``w_device * sum(device_violation) + w_voltage * sum(voltage_violation)`` of a step."""

    def penalty(k: int, r: StepResult, ok: torch.Tensor) -> torch.Tensor:
        return w_device * (ok * r.device_violation).sum() + w_voltage * (ok * r.voltage_violation).sum()

    return penalty


def _lagrangian_terms(sim: Sim, state: State, actions: torch.Tensor, penalty: StepPenalty):
    """Roll out ``actions`` [T, B, N]; return (objective, list of StepResult)."""
    total = actions.new_zeros(())
    results = []
    for k in range(sim.n_steps):
        r = sim.step(state, actions[k])
        state = r.state
        ok = r.converged.to(actions.dtype)[:, None]
        total = total + (ok * r.cost).sum() + penalty(k, r, ok)
        results.append(r)
    return total, results


def _summarise(sim: Sim, results) -> dict:
    v = torch.stack([r.v_mag_pu.detach() for r in results])  # [T, B, n]
    outside = (v > sim.config.v_max_pu) | (v < sim.config.v_min_pu)
    viol = torch.stack([r.voltage_violation.detach() for r in results])
    dev = torch.stack([r.device_violation.detach() for r in results])  # [T, B, N]
    cost = torch.stack([r.cost.detach() for r in results])
    conv = torch.stack([r.converged for r in results])
    per_day = outside.to(torch.float64).mean(dim=(0, 2))
    return {
        "voltage_share_outside": float(outside.to(torch.float64).mean()),
        "voltage_share_over": float((v > sim.config.v_max_pu).to(torch.float64).mean()),
        "voltage_share_under": float((v < sim.config.v_min_pu).to(torch.float64).mean()),
        "voltage_violation_pu_steps_per_day": float(viol.sum() / v.shape[1]),
        "worst_excursion_pu": float(viol.max()),
        "v_min_pu": float(v.min()),
        "v_max_pu": float(v.max()),
        "days_with_any_violation": float((per_day > 0).to(torch.float64).mean()),
        "device_violation_per_agent_step": float(dev.mean()),
        "cost_per_agent_day": float(cost.sum() / (v.shape[1] * sim.n_agents)),
        "powerflow_failures": int((~conv).sum()),
    }


def rollout_metrics(sim: Sim, state: State, policy: Policy = price_seeking_actions) -> dict:
    """Run ``policy`` for a whole episode from ``state`` (no gradient) and summarise it.

    Returns:
        Voltage statistics over all feeder nodes, steps and rows (share of node-steps outside the band,
        over and under it, pu-steps per day, worst excursion, min/max voltage, share of days with any
        violation), mean device violation per agent-step, mean cost per agent and day ($), power-flow
        failures.
    """
    results = []
    with torch.no_grad():
        for _ in range(sim.n_steps - state.t):
            r = sim.step(state, policy(sim, state))
            state = r.state
            results.append(r)
    return _summarise(sim, results)


def optimise_actions(
    sim: Sim,
    state: State,
    *,
    iterations: int = 150,
    lr: float = 0.05,
    w_voltage: float = 1e4,
    w_device: float = 10.0,
    init: Policy | None = None,
    progress: Callable[[int, int], None] | None = None,
    penalty: StepPenalty | None = None,
    after_iteration: Callable[[int, list[StepResult]], None] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Centralised, perfect-foresight optimisation of every action of the episodes in ``state``.

    Minimises ``sum(cost) + w_device * sum(device_violation) + w_voltage * sum(voltage_violation)`` (or
    ``sum(cost)`` plus ``penalty``'s terms) over the actions [T, B, N] by Adam through the differentiable
    core (learning rate decayed from ``lr`` to ``lr / 10`` on a cosine schedule), projecting the actions
    onto [-1, 1] after every update. Starts from the actions ``init`` would take along its own rollout
    (default: all zeros). Only converged power flows count (the same mask as the trainers').

    Args:
        sim: The simulator.
        state: Initial state (``t = 0``) of the episodes to optimise.
        iterations: Adam steps (one forward + backward rollout each).
        lr: Adam learning rate (actions are in [-1, 1]).
        w_voltage: Penalty per pu-step of voltage violation, $.
        w_device: Penalty per unit of device violation (kW or K) per step, $.
        init: Optional policy whose rollout actions are the starting point.
        progress: Optional ``callback(done, total)``.
        penalty: Optional constraint terms of every step (`StepPenalty`), replacing the fixed weights
            (e.g. an augmented Lagrangian, ``baselines.oracle``).
        after_iteration: Optional ``callback(iteration, results)`` after every Adam step, with that
            iteration's StepResults (from before the step): e.g. a multiplier update that ``penalty`` reads.

    Returns:
        ``(actions [T, B, N], metrics)`` with `rollout_metrics`-style metrics of the final actions plus the
        objective's history (``objective_first``, ``objective_last``) and ``seconds``.
    """
    t0 = time.perf_counter()
    shape = (sim.n_steps, state.batch_size, sim.n_agents)
    if init is None:
        start = torch.zeros(shape, dtype=sim.dtype, device=sim.device)
    else:
        acts, s = [], state
        with torch.no_grad():
            for _ in range(sim.n_steps):
                a = init(sim, s)
                s = sim.step(s, a).state
                acts.append(a)
        start = torch.stack(acts)
    actions = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([actions], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(iterations, 1), eta_min=0.1 * lr)
    penalty = fixed_penalty(w_voltage, w_device) if penalty is None else penalty
    history = []
    for it in range(iterations):
        opt.zero_grad()
        objective, results = _lagrangian_terms(sim, state, actions, penalty)
        objective.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            actions.clamp_(-1.0, 1.0)
        history.append(float(objective.detach()))
        if after_iteration is not None:
            after_iteration(it, results)
        if progress is not None:
            progress(it + 1, iterations)
    with torch.no_grad():
        _, results = _lagrangian_terms(sim, state, actions, penalty)
    metrics = _summarise(sim, results)
    metrics.update(objective_first=history[0] if history else None, objective_last=history[-1] if history else None,
                   seconds=time.perf_counter() - t0)
    return actions.detach(), metrics


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
    actions = (2 * torch.rand((sim.n_steps, batch, sim.n_agents), generator=gen, dtype=torch.float64) - 1)
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
        objective, _ = _lagrangian_terms(sim, state0, a, fixed_penalty(w_voltage=1e4, w_device=10.0))
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
        "by_threads": {str(n): {"forward_s_per_rollout": f, "forward_backward_s_per_rollout": b}
                       for n, (f, b) in by_threads.items()},
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }


# ----------------------------------------------------------------------------------------------------------
# Calibration report
# ----------------------------------------------------------------------------------------------------------


def calibration_report(
    feeder: str = "ieee123",
    n_agents: int = 1000,
    *,
    rule_days: int | None = None,
    optimise_days: int = 4,
    iterations: int = 150,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    **sim_options,
) -> dict:
    """The calibration numbers: price-seeking rule on the test days, and the centralised optimisation.

    Args:
        feeder, n_agents, seed: Simulator options (the defaults are the benchmark task).
        rule_days: Number of test days for the price-seeking rule (None: all 73, one row each).
        optimise_days: Number of test days for the centralised optimisation (evenly spaced over the year).
        iterations: Adam steps of the optimisation.
        progress: Optional ``callback(done, total)`` of the optimisation.
        **sim_options: Further `SimConfig` fields.

    Returns:
        ``{"config": ..., "price_seeking": metrics, "idle": metrics, "optimised": metrics, ...}``.
    """
    sim = make_sim(feeder=feeder, n_agents=n_agents, seed=seed, **sim_options)
    test = split_days("test")
    days = test if rule_days is None else test[:: max(len(test) // rule_days, 1)][:rule_days]
    state = sim.reset(None, seed=seed, split="test", days=days)
    report = {
        "config": {k: (str(v) if not isinstance(v, int | float | str | bool | type(None) | tuple) else v)
                   for k, v in vars(sim.config).items()},
        "rule_days": [int(d) for d in days],
        "price_seeking": rollout_metrics(sim, state, price_seeking_actions),
        "idle": rollout_metrics(sim, state, idle_actions),
    }
    opt_days = test[:: max(len(test) // optimise_days, 1)][:optimise_days]
    state = sim.reset(None, seed=seed, split="test", days=opt_days)
    report["optimise_days"] = [int(d) for d in opt_days]
    report["price_seeking_on_optimise_days"] = rollout_metrics(sim, state, price_seeking_actions)
    _, report["optimised"] = optimise_actions(sim, state, iterations=iterations, init=price_seeking_actions,
                                              progress=progress)
    report["optimised"]["iterations"] = iterations
    return report


def idle_actions(sim: Sim, state: State) -> torch.Tensor:
    """Batteries idle, generators off, heat pumps on the price-seeking thermostat (a reference point)."""
    a = price_seeking_actions(sim, state).clone()
    a[:, sim.agent_slices["battery"]] = 0.0
    a[:, sim.agent_slices["generator"]] = 1.0
    return a


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gridedge_env.simbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("calibrate", help="price-seeking violations and the centralised optimum on test days")
    p.add_argument("--feeder", default="ieee123")
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--rule-days", type=int, default=None, help="test days for the rule (default: all 73)")
    p.add_argument("--optimise-days", type=int, default=4)
    p.add_argument("--iterations", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    def show(done: int, total: int) -> None:
        if done % 10 == 0 or done == total:
            print(f"optimise: {done}/{total}", file=sys.stderr, flush=True)

    report = calibration_report(args.feeder, args.agents, rule_days=args.rule_days,
                                optimise_days=args.optimise_days, iterations=args.iterations, seed=args.seed,
                                progress=show)
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
