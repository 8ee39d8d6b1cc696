"""Speed of the functional core, and the penalised rollout objective that it times.

- `bench_sim`: simulated agent-steps per second of forward rollouts and of forward + backward
  (``gridedge bench sim``);
- `rollout_objective(sim, state, actions, penalty)`: the summed cost of a rollout of given actions plus
  constraint terms (`fixed_penalty` or any `StepPenalty`), differentiable w.r.t. the actions; what
  ``bench_sim`` differentiates and the plain penalty method (`baselines.oracle.optimise_actions`) minimises.
  A failed power flow is scored as the metrics score it (every node at 0 pu,
  `gridedge_env.metrics.scored_voltages`), never masked.

The calibration of the task (the price-seeking rule and the optimum on test days) is
``python -m gridedge_run.calibration``.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gridedge_env.core import Sim, State, StepResult, make_sim
from gridedge_env.metrics import scored_voltages
from gridedge_env.network.opendss import OpenDSSReference

__all__ = ["StepPenalty", "bench_sim", "fixed_penalty", "rollout_objective"]

#: ``penalty(k, result) -> scalar``: the constraint terms of step ``k`` of a rollout (``result`` its StepResult
#: with graph), added to the rows' summed cost.
StepPenalty = Callable[[int, StepResult], torch.Tensor]


def fixed_penalty(sim: Sim, w_voltage: float, w_device: float) -> StepPenalty:
    """Fixed weights: ``w_device * sum(device_violation) + w_voltage * sum(voltage excess)`` of a step, the
    voltages of a failed power flow scored at 0 pu (`scored_voltages`)."""
    v_min, v_max = sim.config.v_min_pu, sim.config.v_max_pu

    def penalty(k: int, r: StepResult) -> torch.Tensor:
        v = scored_voltages(r.v_mag_pu, r.converged)
        excess = torch.relu(v - v_max) + torch.relu(v_min - v)
        return w_device * r.device_violation.sum() + w_voltage * excess.sum()

    return penalty


def rollout_objective(sim: Sim, state: State, actions: torch.Tensor, penalty: StepPenalty):
    """Roll out ``actions`` [T, B, N] from ``state``; return ``(objective, [StepResult per step])``, the
    objective being every row's summed cost plus ``penalty``'s terms (with its autograd graph)."""
    total = actions.new_zeros(())
    results = []
    for k in range(sim.n_steps):
        r = sim.step(state, actions[k])
        state = r.state
        total = total + r.cost.sum() + penalty(k, r)
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
    max_timing_s: float = 60.0,
    seed: int = 0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float64,
    threads: int | None = None,
    opendss_points: int = 48,
) -> dict:
    """Time 48-step (one-day) rollouts of ``batch`` episodes with random actions, against OpenDSS solving the
    same power flows.

    Forward: rollouts under ``torch.no_grad()``. Forward + backward: a rollout with ``requires_grad``
    actions, then one ``backward()`` of the total (costs + device and voltage violations), which gives the
    gradient w.r.t. every action. The best of ``repeats`` timings is reported (after one warm-up of each);
    fewer once the timed rollouts of one kind have taken ``max_timing_s`` (large feeders).

    OpenDSS (OpenDSSDirect.py, tolerance 1e-8, controls off, taps fixed as the simulator's) solves the power
    flows of the first ``opendss_points`` steps of a forward rollout (row 0's day, then row 1's, ...), one by
    one from Python as a user would (set every load and injection, solve, read every node voltage); its
    seconds per solve times the ``batch * steps`` power flows of a rollout give ``opendss_s_per_rollout``:
    what the power flows alone of an OpenDSS-based simulator would take, a lower bound (no devices, no
    gradient). The simulator's largest voltage difference to OpenDSS on those points is reported too (the
    reference keeps its loads on their nominal law when the simulator does, ``load_voltage_limits=False``).

    Each time is reported as wall-clock seconds and as the process's CPU seconds (``*_cpu_*``; with one
    thread the two agree on an idle machine, and the CPU time is the steadier measure on a shared one).

    Threads: with ``threads=None`` the timings are taken with one intra-op thread and with torch's current
    setting (if that is more), and the faster setting (by the sum of both timings) is reported, with both under
    ``by_threads``; the thread setting is restored afterwards. The tensors of one step are small (B x N), so
    a second thread gains little and, on a machine where another process keeps a core busy, stalls
    every operation.

    Returns:
        A dict with the setup, seconds per rollout and agent-steps per second (``batch * n_agents * T /
        seconds``) of both, the thread count used, mean power-flow iterations per step, OpenDSS's seconds per
        solve and per rollout, and the ratios ``speedup_forward`` (OpenDSS's rollout time over the forward
        rollout's) and ``speedup_forward_backward`` (over the forward + backward rollout's).
    """
    sim = make_sim(feeder=feeder, n_agents=n_agents, seed=seed, device=device, dtype=dtype)
    state0 = sim.reset(batch, seed=seed, split="train")
    gen = torch.Generator().manual_seed(seed)
    actions = 2 * torch.rand((sim.n_steps, batch, sim.n_agents), generator=gen, dtype=torch.float64) - 1
    actions = actions.to(dtype=dtype, device=device)

    def sync() -> None:
        if sim.device.type == "cuda":
            torch.cuda.synchronize(sim.device)

    def forward() -> tuple[float, float]:
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        iters = 0.0
        with torch.no_grad():
            s = state0
            for k in range(sim.n_steps):
                r = sim.step(s, actions[k])
                s = r.state
                iters += float(r.iterations.to(torch.float64).mean())
        sync()
        forward.iterations = iters / sim.n_steps
        return time.perf_counter() - t0, time.process_time() - c0

    def backward() -> tuple[float, float]:
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        a = actions.clone().requires_grad_(True)
        objective, _ = rollout_objective(sim, state0, a, fixed_penalty(sim, w_voltage=1e4, w_device=10.0))
        objective.backward()
        sync()
        if not bool(torch.isfinite(a.grad).all()):
            raise RuntimeError("non-finite gradient in bench_sim")
        return time.perf_counter() - t0, time.process_time() - c0

    def best_of(fn) -> tuple[float, float]:
        times = [fn()]
        while len(times) < repeats and sum(wall for wall, _ in times) < max_timing_s:
            times.append(fn())
        return min(times)

    configured = torch.get_num_threads()
    counts = sorted({1, configured}) if threads is None else [int(threads)]
    by_threads = {}
    try:
        for n in counts:
            torch.set_num_threads(n)
            forward()
            backward()
            by_threads[n] = (best_of(forward), best_of(backward))
    finally:
        torch.set_num_threads(configured)
    best = min(by_threads, key=lambda n: by_threads[n][0][0] + by_threads[n][1][0])
    (t_fwd, cpu_fwd), (t_bwd, cpu_bwd) = by_threads[best]
    agent_steps = batch * sim.n_agents * sim.n_steps
    reference = _opendss_rollout(sim, state0, actions, opendss_points)
    opendss_rollout_s = reference["opendss_s_per_solve"] * batch * sim.n_steps
    opendss_rollout_cpu_s = reference["opendss_cpu_s_per_solve"] * batch * sim.n_steps
    return {
        "feeder": feeder,
        "n_agents": sim.n_agents,
        "batch": batch,
        "steps": sim.n_steps,
        "dtype": str(dtype).replace("torch.", ""),
        "device": str(sim.device),
        "threads": best,
        "forward_s_per_rollout": t_fwd,
        "forward_cpu_s_per_rollout": cpu_fwd,
        "forward_agent_steps_per_s": agent_steps / t_fwd,
        "forward_backward_s_per_rollout": t_bwd,
        "forward_backward_cpu_s_per_rollout": cpu_bwd,
        "forward_backward_agent_steps_per_s": agent_steps / t_bwd,
        "powerflow_iterations_per_step": forward.iterations,
        **reference,
        "opendss_s_per_rollout": opendss_rollout_s,
        "speedup_forward": opendss_rollout_s / t_fwd,
        "speedup_forward_backward": opendss_rollout_s / t_bwd,
        "speedup_forward_cpu": opendss_rollout_cpu_s / cpu_fwd,
        "speedup_forward_backward_cpu": opendss_rollout_cpu_s / cpu_bwd,
        "by_threads": {
            str(n): {"forward_s_per_rollout": f[0], "forward_backward_s_per_rollout": b[0]}
            for n, (f, b) in by_threads.items()
        },
        "nodes": sim.n_nodes,
        "load_nodes": sim.n_load_nodes,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }


def _opendss_rollout(sim: Sim, state0: State, actions: torch.Tensor, points: int) -> dict:
    """OpenDSS's seconds per solve on the power flows of the first ``points`` (row, step) pairs of a forward
    rollout, row by row, and the simulator's largest voltage difference to it there (pu)."""
    inputs, voltages, converged = [], [], []
    with torch.no_grad():
        s = state0
        for k in range(sim.n_steps):
            r = sim.step(s, actions[k])
            inputs.append({name: x.cpu().numpy() for name, x in sim.powerflow_inputs(s, r.p_kw).items()})
            voltages.append(r.v_mag_pu.cpu().numpy())
            converged.append(r.converged.cpu().numpy())
            s = r.state
    feeder = sim.compiled.feeder
    if not sim.config.load_voltage_limits:  # the simulator's loads keep their nominal law at every voltage
        loads = tuple(dataclasses.replace(ld, vminpu=0.0, vlowpu=0.0, vmaxpu=1e9) for ld in feeder.loads)
        feeder = dataclasses.replace(feeder, loads=loads)
    pairs = [(row, k) for row in range(state0.batch_size) for k in range(sim.n_steps)][: max(1, points)]
    errors, ref_converged = [], 0
    v_base = sim.compiled.v_base_v.cpu().numpy()
    with tempfile.TemporaryDirectory(prefix="gridedge-") as tmp:
        model = feeder.to_opendss(Path(tmp) / f"{feeder.name}.dss")
        ref = OpenDSSReference(feeder, model, sim.load_node_names, tolerance=1e-8)
        start, cpu_start = time.perf_counter(), time.process_time()
        for row, k in pairs:
            x = inputs[k]
            v_ref, ok = ref.solve(
                x["load_p_kw"][row], x["load_q_kvar"][row], x["injection_p_kw"][row], x["injection_q_kvar"][row]
            )
            ref_converged += ok
            if ok and converged[k][row]:
                errors.append(float(abs(abs(v_ref) / v_base - voltages[k][row]).max()))
        per_solve = (time.perf_counter() - start) / len(pairs)
        cpu_per_solve = (time.process_time() - cpu_start) / len(pairs)
    return {
        "opendss_points": len(pairs),
        "opendss_converged": ref_converged,
        "opendss_s_per_solve": per_solve,
        "opendss_cpu_s_per_solve": cpu_per_solve,
        "max_abs_err_pu_vs_opendss": max(errors) if errors else None,
    }
