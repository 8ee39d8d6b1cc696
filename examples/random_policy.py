"""A random policy on the default task through the PettingZoo parallel API: one episode, then its totals.

    python examples/random_policy.py                             # IEEE-123, 1,000 agents, one day
    python examples/random_policy.py --feeder ieee13 --agents 10

Needs only the core install (``pip install -e .``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import gridedge_env


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeder", default="ieee123", help="shipped feeder name or an OpenDSS .dss model")
    parser.add_argument("--agents", type=int, default=1000, help="number of agents")
    parser.add_argument("--split", default="train", choices=["train", "test", "all"], help="days to draw from")
    parser.add_argument("--seed", type=int, default=0, help="episode seed (day, households) and action seed")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    env = gridedge_env.parallel_env(feeder=args.feeder, n_agents=args.agents, split=args.split)
    obs, infos = env.reset(seed=args.seed)
    for i, agent in enumerate(env.agents):  # each space has its own generator: seed them for a repeatable run
        env.action_space(agent).seed(args.seed + i)

    total_reward = total_cost = total_device_violation = 0.0
    feeder_violation, steps = [], 0
    while env.agents:
        actions = {agent: env.action_space(agent).sample() for agent in env.agents}
        obs, rewards, terminations, truncations, infos = env.step(actions)
        total_reward += sum(rewards.values())
        total_cost += sum(info["cost"] for info in infos.values())
        total_device_violation += sum(info["device_violation"] for info in infos.values())
        # the feeder's total is the same in every agent's info
        feeder_violation.append(next(iter(infos.values()))["feeder_voltage_violation"])
        steps += 1

    totals = {
        "feeder": args.feeder,
        "agents": env.max_num_agents,
        "steps": steps,
        "total_reward": total_reward,
        "total_cost": total_cost,
        "total_device_violation": total_device_violation,
        "steps_with_voltage_violation": int(np.count_nonzero(feeder_violation)),
        "seconds": time.perf_counter() - start,
    }
    for key, value in totals.items():
        print(f"{key:>30}: {value:.6g}" if isinstance(value, float) else f"{key:>30}: {value}")
    return totals


if __name__ == "__main__":
    main()
