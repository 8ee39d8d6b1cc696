"""TorchRL on the default task: `PettingZooWrapper` with agents grouped by device type, `check_env_specs`, and a
short random rollout.

    pip install -e ".[torchrl]"
    python examples/torchrl_check.py                             # IEEE-123, 1,000 agents
    python examples/torchrl_check.py --feeder ieee13 --agents 10

Grouping by type (``group_map=env.agent_groups``) stacks the agents of one type into one tensor per group
(``("battery", "observation")`` is ``[n_batteries, 8]``), the layout TorchRL's multi-agent modules expect.
``return_state=True`` adds the global ``state()`` for centralised critics.
"""

from __future__ import annotations

import argparse
import time

import torch
from torchrl.envs.libs.pettingzoo import PettingZooWrapper
from torchrl.envs.utils import check_env_specs

import gridedge_env


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeder", default="ieee123", help="shipped feeder name or an OpenDSS .dss model")
    parser.add_argument("--agents", type=int, default=1000, help="number of agents")
    parser.add_argument("--steps", type=int, default=48, help="length of the random rollout (48 = one day)")
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
    par_env = gridedge_env.parallel_env(feeder=args.feeder, n_agents=args.agents)
    env = PettingZooWrapper(par_env, group_map=par_env.agent_groups, return_state=True, seed=args.seed)
    check_env_specs(env, seed=args.seed)  # raises if any spec disagrees with what reset / step return
    checked = time.perf_counter()

    rollout = env.rollout(args.steps, break_when_any_done=True)  # uniform random actions from the specs
    result = {"feeder": args.feeder, "agents": par_env.max_num_agents, "rollout_steps": rollout.batch_size[0]}
    for group, agents in env.group_map.items():
        result[f"{group}_agents"] = len(agents)
        result[f"{group}_mean_reward"] = rollout["next", group, "reward"].mean().item()
    result["state_dim"] = rollout["state"].shape[-1]
    result["check_env_specs_seconds"] = checked - start
    result["rollout_seconds"] = time.perf_counter() - checked
    for key, value in result.items():
        print(f"{key:>28}: {value:.6g}" if isinstance(value, float) else f"{key:>28}: {value}")
    return result


if __name__ == "__main__":
    main()
