"""Adapters over the functional core (imported lazily; each pulls in PettingZoo / Gymnasium on first use).

- `pettingzoo_env`: the PettingZoo ParallelEnv (`parallel_env`), its AEC versions (`env`, `raw_env`);
- `gymnasium_env`: the centralised Gymnasium env (registered as ``gridedge/IEEE123-v3``);
- `batched`: `BatchedEnv`, B episodes at once as torch tensors;
- `wrappers`: `HomogenizeWrapper` (identical spaces across agents plus an agent-type one-hot).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "parallel_env": "gridedge_env.adapters.pettingzoo_env",
    "env": "gridedge_env.adapters.pettingzoo_env",
    "raw_env": "gridedge_env.adapters.pettingzoo_env",
    "GridEdgeParallelEnv": "gridedge_env.adapters.pettingzoo_env",
    "GridEdgeCentralEnv": "gridedge_env.adapters.gymnasium_env",
    "BatchedEnv": "gridedge_env.adapters.batched",
    "RewardConfig": "gridedge_env.adapters.batched",
    "HomogenizeWrapper": "gridedge_env.adapters.wrappers",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gridedge_env.adapters' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
