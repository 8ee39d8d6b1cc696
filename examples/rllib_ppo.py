"""RLlib PPO (IPPO with one module per device type) on the default task, its rollouts spread over env runners.

    pip install -e ".[rllib]"
    python examples/rllib_ppo.py                                 # IEEE-123, 1,000 agents
    python examples/rllib_ppo.py --feeder ieee13 --agents 10
    python examples/rllib_ppo.py --address auto --env-runners 32   # on a Ray cluster (docs/scaling.md)

RLlib's `ParallelPettingZooEnv` wraps the PettingZoo env as a `MultiAgentEnv`; `policy_mapping_fn` sends each
agent to the module of its type (``battery``, ``heatpump``, ``generator``), so agents of one type share
weights. ``--env-runners`` Ray actors (2 by default; 0: sample in this process) each step
``--envs-per-runner`` environments (gymnasium's vector env), and every iteration trains on one day (48 steps)
of each of those environments. Without ``--address`` the script starts a local Ray instance with one CPU
per env runner plus one for the learner; ``--address auto`` (or ``HOST:6379``) joins a running Ray cluster,
whose nodes then host the env runners.
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
        "--env-runners", type=int, default=2, help="Ray actors that step environments (0: in this process)"
    )
    parser.add_argument("--envs-per-runner", type=int, default=2, help="environments each env runner steps")
    parser.add_argument(
        "--address", default=None, help="a running Ray cluster to join (auto or HOST:PORT; default: a local Ray)"
    )
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
    if args.address is not None:
        ray.init(address=args.address)
    else:  # Ray's CPUs are slots for its actors: one per env runner, one for the learner in this process
        ray.init(num_cpus=args.env_runners + 1, include_dashboard=False)
    # train batches count environment steps: one day (48 steps) of every agent in every environment
    days = max(args.env_runners, 1) * args.envs_per_runner
    config = (
        PPOConfig()
        .environment("gridedge")
        .env_runners(num_env_runners=args.env_runners, num_envs_per_env_runner=args.envs_per_runner)
        .multi_agent(policies=set(agent_groups), policy_mapping_fn=lambda agent, *_, **__: agent_type(agent))
        .training(train_batch_size_per_learner=48 * days, minibatch_size=48 * days, num_epochs=1)
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
        "env_runners": args.env_runners,
        "envs_per_runner": args.envs_per_runner,
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
