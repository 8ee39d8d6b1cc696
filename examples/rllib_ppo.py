"""RLlib PPO on the default task: one policy per device type, a few training iterations.

    pip install -e ".[rllib]"
    python examples/rllib_ppo.py                                 # IEEE-123, 1,000 agents
    python examples/rllib_ppo.py --feeder ieee13 --agents 10

RLlib's `ParallelPettingZooEnv` wraps the PettingZoo env as a `MultiAgentEnv`; `policy_mapping_fn` sends each
agent to the module of its type (``battery``, ``heatpump``, ``generator``), so agents of one type share
weights. Everything runs in this process (``num_env_runners=0``); ``ray.init`` still starts Ray's local
services, which take a few seconds.
"""

from __future__ import annotations

import argparse
import time

import ray
import torch
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv
from ray.tune.registry import register_env

import gridedge_env
from gridedge_env.adapters.wrappers import agent_type


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeder", default="ieee123", help="shipped feeder name or an OpenDSS .dss model")
    parser.add_argument("--agents", type=int, default=1000, help="number of agents")
    parser.add_argument(
        "--iterations",
        type=int,
        default=1,
        help="PPO iterations, one day (48 steps) each (minutes each with 1,000 agents)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's choice; 1 on a machine shared with other jobs)",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    env_cfg = {"feeder": args.feeder, "n_agents": args.agents}
    agent_groups = gridedge_env.parallel_env(**env_cfg).agent_groups
    register_env("gridedge", lambda _: ParallelPettingZooEnv(gridedge_env.parallel_env(**env_cfg)))
    ray.init(num_cpus=1, include_dashboard=False)
    config = (
        PPOConfig()
        .environment("gridedge")
        .env_runners(num_env_runners=0)
        .multi_agent(policies=set(agent_groups), policy_mapping_fn=lambda agent, *_, **__: agent_type(agent))
        # train batches count environment steps: 48 = one day of every agent
        .training(train_batch_size_per_learner=48, minibatch_size=48, num_epochs=1)
        .debugging(seed=args.seed)
    )
    algo = config.build_algo()
    try:
        for _ in range(args.iterations):
            metrics = algo.train()
    finally:
        algo.stop()
        ray.shutdown()
    result = {
        "feeder": args.feeder,
        "agents": sum(len(v) for v in agent_groups.values()),
        "modules": ",".join(sorted(agent_groups)),
        "iterations": metrics["training_iteration"],
        "env_steps_sampled": int(metrics["env_runners"]["num_env_steps_sampled_lifetime"]),
        # RLlib reports this one per agent id
        "agent_steps_sampled": int(sum(metrics["env_runners"]["num_agent_steps_sampled_lifetime"].values())),
        "mean_episode_return": float(metrics["env_runners"].get("episode_return_mean", float("nan"))),
        "seconds": time.perf_counter() - start,
    }
    for key, value in result.items():
        print(f"{key:>22}: {value:.6g}" if isinstance(value, float) else f"{key:>22}: {value}")
    return result


if __name__ == "__main__":
    main()
