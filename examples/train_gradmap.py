"""Train GradMAP on the default task, then evaluate it and two rules on held-out test days.

    python examples/train_gradmap.py                                   # IEEE-123, 1,000 agents, 15 min
    python examples/train_gradmap.py --feeder ieee13 --agents 10 --iterations 5 --days 2

The same as ``gridedge train gradmap ... --out DIR`` followed by ``gridedge evaluate DIR --split test``;
this script shows the Python API. Needs only the core install (``pip install -e .``).
"""

from __future__ import annotations

import argparse
import time

import torch

from baselines.rules import RULES
from gradmap_agent import gradmap_config
from gridedge_env import make_sim
from gridedge_run import evaluate_policy, obs_policy, train


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeder", default="ieee123", help="shipped feeder name or an OpenDSS .dss model")
    parser.add_argument("--agents", type=int, default=1000, help="number of agents")
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget, minutes")
    parser.add_argument("--iterations", type=int, default=None, help="rollouts instead of a time budget")
    parser.add_argument("--days", type=int, default=None, help="test days, evenly spaced (default: all 73)")
    parser.add_argument("--seed", type=int, default=0, help="trainer seed")
    parser.add_argument("--out", default=None, help="run directory for metrics and checkpoints (optional)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    sim = make_sim(feeder=args.feeder, n_agents=args.agents)
    budget = {"iterations": args.iterations} if args.iterations else {"minutes": args.minutes}
    config = gradmap_config(seed=args.seed, **budget)

    def progress(row: dict) -> None:  # training-rollout figures every 10 iterations
        if row["iteration"] % 10 == 1:
            print(
                f"iteration {row['iteration']}: cost {row['cost']:.4g} $/day, violation share "
                f"{row['violation_share']:.3%}, {row['time_left_s']:.0f} s left",
                flush=True,
            )

    start = time.perf_counter()
    make_policy, params, metrics = train(sim, config, progress_fn=progress, out_dir=args.out)
    train_s = time.perf_counter() - start
    policy = make_policy(params)  # decentralised: each agent's action from its own observation only

    results = {"gradmap": evaluate_policy(sim, obs_policy(policy), split="test", days=args.days)}
    for rule in ("noop", "price-seeking"):
        results[rule] = evaluate_policy(sim, RULES[rule], split="test", days=args.days)
    summary = {
        "feeder": args.feeder,
        "agents": sim.n_agents,
        "iterations": metrics["iterations"],
        "train_seconds": train_s,
        "test_days": results["gradmap"]["days"],
    }
    for method, r in results.items():
        summary[f"{method} cost"] = r["cost"]
        summary[f"{method} violation_share"] = r["violation_share"]
    for key, value in summary.items():
        print(f"{key:>30}: {value:.6g}" if isinstance(value, float) else f"{key:>30}: {value}")
    return summary


if __name__ == "__main__":
    main()
