"""Versioned task module (PettingZoo style): IEEE-123 feeder, 1,000 agents, one day of 30-minute steps, v3.

The spec page is the docstring of `gridedge_env.adapters.pettingzoo_env`. Any change that alters observations,
rewards or dynamics for the same arguments gets a new version module (``ieee123_v4``); the history is in
the spec page.
"""

from gridedge_env.adapters.pettingzoo_env import GridEdgeParallelEnv, env, parallel_env, raw_env

__all__ = ["GridEdgeParallelEnv", "env", "parallel_env", "raw_env"]
