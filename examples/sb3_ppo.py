"""Stable-Baselines3 PPO on the default task through SuperSuit: a short training run, then its returns.

    pip install -e ".[sb3]"
    python examples/sb3_ppo.py                                   # IEEE-123, 1,000 agents
    python examples/sb3_ppo.py --feeder ieee13 --agents 10 --timesteps 2000

SuperSuit turns the PettingZoo env into a vector env with one slot per agent, so SB3 trains ONE policy that
every agent shares (parameter sharing, unlike gridedge's own trainers); `HomogenizeWrapper` appends the
agent type as a one-hot so that the shared policy can still act differently per device type. SB3 counts a
timestep per agent: one environment step of 1,000 agents is 1,000 timesteps, one day is 48,000.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import supersuit as ss
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecMonitor

import gridedge_env
from gridedge_env.adapters import HomogenizeWrapper


def make_vec_env(feeder: str, agents: int, seed: int):
    """The PettingZoo env as an SB3 ``VecEnv`` of ``agents`` slots, with per-slot episode statistics."""
    env = HomogenizeWrapper(gridedge_env.parallel_env(feeder=feeder, n_agents=agents))
    vec = ss.pettingzoo_env_to_vec_env_v1(env)
    vec = ss.concat_vec_envs_v1(vec, 1, num_cpus=0, base_class="stable_baselines3")
    # SuperSuit's SB3 wrapper cannot seed through SB3 (its ConcatVecEnv has no `seed` method, which
    # SB3VecEnvWrapper.reset(seed=...) calls), so seed the inner vector env once: SB3's later unseeded
    # resets then continue gridedge's seeded episode sequence
    vec.venv.reset(seed=seed)
    return VecMonitor(vec)


class DailyReturns(BaseCallback):
    """Mean per-agent return of the day each rollout ended with (one rollout = one day, see `n_steps`)."""

    def __init__(self) -> None:
        super().__init__()
        self.daily: list[float] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        # VecMonitor's buffer holds the last 100 finished per-agent episodes: all from the day just ended
        if self.model.ep_info_buffer:
            self.daily.append(float(np.mean([ep["r"] for ep in self.model.ep_info_buffer])))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeder", default="ieee123", help="shipped feeder name or an OpenDSS .dss model")
    parser.add_argument("--agents", type=int, default=1000, help="number of agents")
    parser.add_argument(
        "--timesteps",
        type=int,
        default=960_000,
        help="SB3 timesteps (agent-steps); the default is 20 days (20 updates) of 1,000 agents",
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
    set_random_seed(args.seed)  # python, numpy and torch; PPO(seed=...) would call the missing `seed` above
    vec = make_vec_env(args.feeder, args.agents, args.seed)
    n_steps = 48  # one rollout per day: every update sees whole episodes
    batch = n_steps * vec.num_envs
    # 4 minibatches x 4 epochs per update: few, large gradient steps keep a 1,000-agent update short
    model = PPO(
        "MlpPolicy",
        vec,
        n_steps=n_steps,
        batch_size=batch // 4,
        n_epochs=4,
        learning_rate=3e-4,
        verbose=0,
        device="cpu",
    )
    days = DailyReturns()
    model.learn(total_timesteps=args.timesteps, callback=days)
    result = {
        "feeder": args.feeder,
        "agents": vec.num_envs,
        "timesteps": model.num_timesteps,
        "updates": model.num_timesteps // batch,
        "mean_agent_return_first_day": days.daily[0],
        "mean_agent_return_last_day": days.daily[-1],
        "torch_threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - start,
    }
    for key, value in result.items():
        print(f"{key:>32}: {value:.6g}" if isinstance(value, float) else f"{key:>32}: {value}")
    vec.close()
    return result


if __name__ == "__main__":
    main()
