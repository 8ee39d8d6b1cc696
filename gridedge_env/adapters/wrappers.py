"""Wrappers for libraries that need identical spaces across agents.

`HomogenizeWrapper` pads every agent's observation to the largest observation size (zeros) and appends a
one-hot of the agent's type (``battery``, ``heatpump``, ``generator``: the name before the last ``_``), so
that one policy network can serve every agent and still tell the types apart. Action spaces must already be
identical (they are: ``Box(-1, 1, (1,), float32)``). In gridedge every type has the same 12 features, so the
padding is empty and the observation becomes ``[12 + 3]``: the 12 features, then the type one-hot.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from pettingzoo.utils.wrappers import BaseParallelWrapper

__all__ = ["HomogenizeWrapper", "agent_type"]


def agent_type(agent: str) -> str:
    """``"battery_12"`` -> ``"battery"`` (the type is the name before the last underscore)."""
    return agent.rsplit("_", 1)[0]


class HomogenizeWrapper(BaseParallelWrapper):
    """Identical observation spaces for all agents: zero padding plus an agent-type one-hot.

    Observation of agent ``a``: ``[obs_a (padded with zeros to the largest size), one_hot(type(a))]``,
    float32; the type order is ``types`` (first appearance in ``possible_agents``). Bounds: the element-wise
    envelope of all agents' bounds (padding and one-hot in [0, 1]).
    """

    def __init__(self, env) -> None:
        super().__init__(env)
        agents = list(env.possible_agents)
        self.types = list(dict.fromkeys(agent_type(a) for a in agents))
        self._type_index = {a: self.types.index(agent_type(a)) for a in agents}
        base = {a: env.observation_space(a) for a in agents}
        for a, s in base.items():
            if not isinstance(s, spaces.Box) or len(s.shape) != 1:
                raise ValueError(f"observation space of {a!r} must be a 1-D Box, got {s}")
        ref = env.action_space(agents[0])
        for a in agents:
            s = env.action_space(a)
            if s.shape != ref.shape or not (np.array_equal(s.low, ref.low) and np.array_equal(s.high, ref.high)):
                raise ValueError(f"action space of {a!r} ({s}) differs from {agents[0]!r}'s ({ref})")
        self._width = max(s.shape[0] for s in base.values())
        k = len(self.types)
        low = np.zeros(self._width + k, np.float32)
        high = np.ones(self._width + k, np.float32)
        for s in base.values():
            d = s.shape[0]
            low[:d] = np.minimum(low[:d], s.low)
            high[:d] = np.maximum(high[:d], s.high)
        self._obs_spaces = {a: spaces.Box(low.copy(), high.copy(), low.shape, np.float32) for a in agents}
        self._act_spaces = {a: env.action_space(a) for a in agents}
        eye = np.eye(k, dtype=np.float32)
        self._suffix = {a: eye[self._type_index[a]] for a in agents}

    def observation_space(self, agent):
        return self._obs_spaces[agent]

    def action_space(self, agent):
        return self._act_spaces[agent]

    def _convert(self, obs: dict) -> dict:
        out = {}
        w = self._width
        for a, o in obs.items():
            o = np.asarray(o, dtype=np.float32)
            if o.shape[0] < w:
                o = np.concatenate([o, np.zeros(w - o.shape[0], np.float32)])
            out[a] = np.concatenate([o, self._suffix[a]])
        return out

    def reset(self, seed=None, options=None):
        obs, infos = self.env.reset(seed=seed, options=options)
        return self._convert(obs), infos

    def step(self, actions):
        obs, rew, term, trunc, infos = self.env.step(actions)
        return self._convert(obs), rew, term, trunc, infos
