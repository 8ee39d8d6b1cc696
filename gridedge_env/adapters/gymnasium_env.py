"""Centralised Gymnasium environment: one controller sets every agent's action (``gridedge/IEEE123-v3``).

```python
import gymnasium as gym
import gridedge_env.adapters.gymnasium_env  # importing the module registers the id
env = gym.make("gridedge/IEEE123-v3")       # keyword arguments as for gridedge_env.parallel_env
# without the import: gym.make("gridedge_env.adapters.gymnasium_env:gridedge/IEEE123-v3")
obs, info = env.reset(seed=0)
obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
```

- Action: ``Box(-1, 1, (N,), float32)``, agent order ``env.unwrapped.agents`` (= the PettingZoo adapter's
  ``possible_agents``), the same normalised actions as there.
- Observation: the global state of the PettingZoo adapter (``state()``: float32 ``[4 + 8N + J]``, layout in
  `gridedge_env.adapters.pettingzoo_env`), always inside ``observation_space``.
- Reward: ``-(sum_i cost_i + w_dev * sum_i device_violation_i + w_net * sum over feeder nodes of the voltage
  violation)`` — the design's Lagrangian with fixed weights; the network term counts once, not once per agent.
  Defaults ``w_dev = 10``, ``w_net = 1000`` as in the PettingZoo adapter (``net_scope`` is not used here).
- Episode: one day; ``truncated`` on the last step, never ``terminated``. ``info``: ``cost``,
  ``device_violation`` (sums over agents), ``feeder_voltage_violation`` (pu), ``pf_converged``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from gridedge_env.adapters.batched import (
    agent_node_index,
    clip_obs,
    global_state,
    global_state_bounds,
    reset_option_days,
    split_config,
)
from gridedge_env.core import check_seed, make_sim, real_array
from gridedge_env.scenarios import split_days

__all__ = ["ENV_ID", "GridEdgeCentralEnv"]

ENV_ID = "gridedge/IEEE123-v3"


class GridEdgeCentralEnv(gym.Env):
    """All agents' actions as one Box (spec: this module's docstring)."""

    metadata = {"render_modes": []}

    def __init__(self, split: str = "train", **cfg) -> None:
        sim_cfg, self.reward_config, rest = split_config(cfg)
        if rest:
            raise ValueError(f"unknown option(s) {sorted(rest)}")
        self.split = split
        split_days(split)  # raises ValueError naming an unknown split
        self.sim = make_sim(**sim_cfg)
        self.agents = list(self.sim.agents)
        n = self.sim.n_agents
        self.action_space = spaces.Box(-1.0, 1.0, (n,), np.float32)
        low, high = global_state_bounds(self.sim)
        self.observation_space = spaces.Box(low, high, low.shape, np.float32)
        self._node_index = agent_node_index(self.sim)
        self._state = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        days = reset_option_days(options)
        if seed is not None:  # checked before the episode generator is replaced
            check_seed(seed)
        super().reset(seed=seed)
        episode_seed = int(self.np_random.integers(2**31 - 1)) if seed is None else int(seed)
        self._state = self.sim.reset(None if days else 1, seed=episode_seed, split=self.split, days=days)
        return self._obs(), {
            "cost": 0.0,
            "device_violation": 0.0,
            "feeder_voltage_violation": 0.0,
            "pf_converged": True,
        }

    def _obs(self) -> np.ndarray:
        return global_state(self.sim, self._state, clip_obs(self._state.obs))[0].cpu().numpy()

    def step(self, action):
        if self._state is None:
            raise ValueError("call reset() before step()")
        a = real_array(action, "action")
        if a.shape != (self.sim.n_agents,):
            raise ValueError(f"action must have shape ({self.sim.n_agents},), got {a.shape}")
        with torch.no_grad():
            result = self.sim.step(self._state, torch.from_numpy(a)[None])
        self._state = result.state
        cost = float(result.cost.sum())
        dev = float(result.device_violation.sum())
        net = float(result.voltage_violation.sum())
        rc = self.reward_config
        reward = -(cost + rc.w_dev * dev + rc.w_net * net)
        info = {
            "cost": cost,
            "device_violation": dev,
            "feeder_voltage_violation": net,
            "pf_converged": bool(result.converged[0]),
        }
        return self._obs(), reward, False, bool(result.truncated), info


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="gridedge_env.adapters.gymnasium_env:GridEdgeCentralEnv")
