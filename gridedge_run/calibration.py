"""The calibration of the benchmark task: how much the uncoordinated price-seeking rule violates the voltage
band on the test days, and how little a centralised optimisation of the same days leaves.

    python -m gridedge_run.calibration calibrate [--json]

prints the numbers quoted in ``docs/simulator.md`` (the standard metrics of `gridedge_env.metrics` for
the price-seeking rule, doing nothing, and the optimised actions).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import torch

from baselines.oracle import optimise_actions
from baselines.rules import noop_actions, price_seeking_actions
from gridedge_env.core import make_sim
from gridedge_env.metrics import RolloutMetrics, run_episode
from gridedge_env.scenarios import split_days

__all__ = ["calibration_report", "rollout_metrics"]


def rollout_metrics(sim, state, policy: Callable = price_seeking_actions) -> dict:
    """Run ``policy(sim, state)`` for the rest of the episode from ``state`` (no gradient); the standard
    metrics of its rows (`gridedge_env.metrics.RolloutMetrics`)."""
    metrics = RolloutMetrics(sim)
    run_episode(sim, state, policy, metrics)
    return metrics.summary(state.batch_size)


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
        ``{"config": ..., "price_seeking": metrics, "noop": metrics, "optimised": metrics, ...}`` with the
        standard metrics of `gridedge_env.metrics`.
    """
    sim = make_sim(feeder=feeder, n_agents=n_agents, seed=seed, **sim_options)
    test = split_days("test")
    days = test if rule_days is None else test[:: max(len(test) // rule_days, 1)][:rule_days]
    state = sim.reset(None, seed=seed, split="test", days=days)
    report = {
        "config": {
            k: (str(v) if not isinstance(v, int | float | str | bool | type(None) | tuple) else v)
            for k, v in vars(sim.config).items()
        },
        "rule_days": [int(d) for d in days],
        "price_seeking": rollout_metrics(sim, state, price_seeking_actions),
        "noop": rollout_metrics(sim, state, noop_actions),
    }
    opt_days = test[:: max(len(test) // optimise_days, 1)][:optimise_days]
    state = sim.reset(None, seed=seed, split="test", days=opt_days)
    report["optimise_days"] = [int(d) for d in opt_days]
    report["price_seeking_on_optimise_days"] = rollout_metrics(sim, state, price_seeking_actions)
    _, report["optimised"] = optimise_actions(
        sim, state, iterations=iterations, init=price_seeking_actions, progress=progress
    )
    report["optimised"]["iterations"] = iterations
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gridedge_run.calibration", description=__doc__)
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

    report = calibration_report(
        args.feeder,
        args.agents,
        rule_days=args.rule_days,
        optimise_days=args.optimise_days,
        iterations=args.iterations,
        seed=args.seed,
        progress=show,
    )
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
