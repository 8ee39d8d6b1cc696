"""Where and why a run's policies violate the voltage band most.

Finds the worst node-step of a trained run on the test days (the largest excursion outside [v_min, v_max]),
then, at that step of that day:

- every phase's device power (kW, + = consumption), per device type;
- the exact sensitivity of that node's voltage to every agent's action at that step (autograd through the
  power flow), the mean per agent of each device type and phase: which agents could have helped, and
  which way (action +1: charge at full power, heat or cool at full power, generator off);
- with ``--oracle``, the same day planned by the perfect-foresight optimum (`baselines.oracle.plan_days`):
  its worst excursion that day and its device power per phase at the same step.

    python examples/worst_step.py runs/gradmap --seed 0 [--days N | --day D] [--oracle]

The policies run decentralised, as in `gridedge evaluate` (same days, same household draws for a seed).
This is how `docs/gradmap.md` (seventh session) found that injecting on phase C lowers phase A's voltage at
the end of IEEE-123's 108-114 lateral.
"""

from __future__ import annotations

import argparse
import sys

import torch

from gridedge_env import make_sim
from gridedge_env.episodes import reset_days, select_days
from gridedge_run import load_policies

PHASES = (1, 2, 3)


def find_worst(sim, policy, days, seed: int) -> dict:
    """The largest excursion over ``days`` (each reset as `gridedge evaluate` does): day, step, node, pu."""
    state = reset_days(sim, "test", days, seed)
    best = {"excursion_pu": -1.0}
    with torch.no_grad():
        for t in range(sim.n_steps):
            r = sim.step(state, policy(state.obs))
            exc = r.voltage_violation
            k = int(exc.argmax())
            row, node = divmod(k, exc.shape[1])
            if float(exc[row, node]) > best["excursion_pu"]:
                best = {
                    "day": int(days[row]),
                    "step": t,
                    "node": sim.node_names[node],
                    "excursion_pu": float(exc[row, node]),
                    "v_pu": float(r.v_mag_pu[row, node]),
                }
            state = r.state
    return best


def by_phase(sim, x: torch.Tensor, reduce: str = "sum") -> dict[str, list[float]]:
    """A per-agent quantity [N] summed (or averaged) per device type and phase A, B, C."""
    phase = sim.agent_phase.cpu()
    x = x.cpu()
    out = {}
    for kind, s in sim.agent_slices.items():
        parts = [x[s][phase[s] == q] for q in PHASES]
        out[kind] = [float(v.sum() if reduce == "sum" else v.mean()) if v.numel() else 0.0 for v in parts]
    return out


def sensitivity(sim, policy, day: int, seed: int, step: int, node: str) -> tuple[dict, dict]:
    """d v(node) / d action of every agent at ``step`` (policies before it), the mean per agent of each type
    and phase; and the device power per type and phase at that step."""
    state = reset_days(sim, "test", [day], seed)
    with torch.no_grad():
        for _ in range(step):
            state = sim.step(state, policy(state.obs)).state
    a = policy(state.obs).detach().to(sim.dtype).requires_grad_(True)
    r = sim.step(state, a)
    (grad,) = torch.autograd.grad(r.v_mag_pu[0, sim.node_names.index(node)], a)
    return by_phase(sim, grad[0], "mean"), by_phase(sim, r.p_kw[0].detach())


def oracle_day(sim, day: int, seed: int, step: int, iterations: int) -> dict:
    """The perfect-foresight plan of ``day``: its worst excursion and its device power per phase at ``step``."""
    from baselines.oracle import OracleConfig, plan_days

    state = reset_days(sim, "test", [day], seed)
    plan, _ = plan_days(sim, state, OracleConfig(iterations=iterations))
    worst = 0.0
    with torch.no_grad():
        for t in range(sim.n_steps):
            r = sim.step(state, plan[t])
            worst = max(worst, float(r.voltage_violation.max()))
            if t == step:
                at_step = by_phase(sim, r.p_kw[0])
            state = r.state
    return {"worst_violation_pu": worst, "power_kw": at_step}


def _table(title: str, by_type: dict[str, list[float]], fmt: str) -> str:
    width = max(28, len(title))
    lines = [f"{title:{width}s} {'phase A':>10s} {'phase B':>10s} {'phase C':>10s}"]
    lines += [
        f"  {kind:{width - 2}s} " + " ".join(format(x, fmt).rjust(10) for x in values)
        for kind, values in by_type.items()
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run directory (or its policies.pt)")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed: the household draws (default 0)")
    parser.add_argument("--days", type=int, default=None, help="this many test days, evenly spaced (default: all)")
    parser.add_argument("--day", type=int, default=None, help="only this test day (its worst step)")
    parser.add_argument("--oracle", action="store_true", help="also plan the worst day with perfect foresight")
    parser.add_argument("--oracle-iterations", type=int, default=300, help="Adam steps of the plan (default 300)")
    args = parser.parse_args(argv)

    try:
        days = [int(d) for d in select_days("test", [args.day] if args.day is not None else args.days)]
        policy, info = load_policies(args.run)
    except ValueError as err:  # a day that is not a test day, a bad count, no policies in the run directory
        parser.error(str(err))
    sim = make_sim(**info["sim_config"])
    worst = find_worst(sim, policy, days, args.seed)
    print(
        f"worst node-step: day {worst['day']}, step {worst['step']}, node {worst['node']}: "
        f"{worst['v_pu']:.4f} pu ({worst['excursion_pu']:.4f} pu outside the band)"
    )
    dv_da, power = sensitivity(sim, policy, worst["day"], args.seed, worst["step"], worst["node"])
    print(_table("device power, kW", power, ".0f"))
    print(_table(f"d v({worst['node']}) / d action, pu per agent", dv_da, "+.2e"))
    summary = {**worst, "power_kw": power, "dv_daction_pu": dv_da}
    if args.oracle:
        opt = oracle_day(sim, worst["day"], args.seed, worst["step"], args.oracle_iterations)
        print(f"perfect foresight on day {worst['day']}: worst excursion {opt['worst_violation_pu']:.4f} pu")
        print(_table("its device power, kW", opt["power_kw"], ".0f"))
        summary["oracle"] = opt
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
