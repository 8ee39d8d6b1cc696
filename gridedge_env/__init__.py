"""gridedge: a differentiable three-phase grid-edge simulator with many single-phase agents.

Public entry points (imported lazily, so ``import gridedge_env`` stays cheap):

- `make_sim(**cfg)` -> `Sim`, the pure functional core: ``reset(batch_size, seed, split) -> State`` and
  ``step(state, actions[B, N]) -> StepResult`` (``docs/simulator.md``);
- `parallel_env(**cfg)` (PettingZoo ParallelEnv), `env(**cfg)` / `raw_env(**cfg)` (AEC) of the default task
  (`gridedge_env.ieee123_v3`; spec in `gridedge_env.adapters.pettingzoo_env`);
- `sim_config_dict(sim)`: the config as JSON-friendly values, which `make_sim(**...)` takes back;
- `SimConfig`, `State`, `StepResult`, `OBS_NAMES`, `OBS_DIM`, `AGENT_TYPES`.

The rules (doing nothing, price-seeking, droop) and the perfect-foresight optimum are baselines
(`baselines.rules`, `baselines.oracle`), not part of the simulator.

Sub-packages: `gridedge_env.network` (feeders), `gridedge_env.powerflow`, `gridedge_env.devices`,
`gridedge_env.scenarios`.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> module that defines it (resolved on first access)
_LAZY: dict[str, str] = {
    "make_sim": "gridedge_env.core",
    "Sim": "gridedge_env.core",
    "SimConfig": "gridedge_env.core",
    "State": "gridedge_env.core",
    "StepResult": "gridedge_env.core",
    "sim_config_dict": "gridedge_env.core",
    "AGENT_TYPES": "gridedge_env.core",
    "OBS_NAMES": "gridedge_env.core",
    "OBS_DIM": "gridedge_env.core",
    # PettingZoo adapters of the default task (versioned module, see gridedge_env.adapters.pettingzoo_env)
    "parallel_env": "gridedge_env.ieee123_v3",
    "env": "gridedge_env.ieee123_v3",
    "raw_env": "gridedge_env.ieee123_v3",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gridedge_env' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
