"""The method registry: every name that ``gridedge train``, ``gridedge evaluate --method`` and
``gridedge compare`` accept, and where its code lives.

- `TRAIN_METHODS`: trained methods, name -> `TrainedMethod` (the config factory and the trainer class,
  imported on first use so that the command-line parser starts without torch);
- `REFERENCE_POLICIES`: methods that need no training (the rules and the perfect-foresight optimum),
  name -> ``make(progress=None, **config) -> policy(sim, state)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["REFERENCE_POLICIES", "TRAIN_METHODS", "TrainedMethod"]


@dataclass(frozen=True)
class TrainedMethod:
    """Where a trained method's config factory and trainer class live."""

    module: str
    """Module that defines both."""
    config_factory: str
    """``factory(**fields) -> config``; raises ValueError naming unknown or invalid fields."""
    trainer: str
    """Trainer class: ``Trainer(sim, config)`` with ``iterate``, ``state_dict``, ``load_state_dict``,
    ``params``, ``metric_fields`` and the counters ``iteration``, ``elapsed_s``, ``history``
    (driven by `gridedge_run.loop.train`)."""

    def make_config(self, **fields):
        """The method's config with ``fields`` set."""
        return getattr(importlib.import_module(self.module), self.config_factory)(**fields)

    def trainer_cls(self) -> type:
        """The trainer class."""
        return getattr(importlib.import_module(self.module), self.trainer)


#: method name -> how to configure and train it
TRAIN_METHODS: dict[str, TrainedMethod] = {
    "gradmap": TrainedMethod("gradmap_agent.train", "gradmap_config", "GradMAPTrainer"),
    "gradma": TrainedMethod("gradmap_agent.train", "gradma_config", "GradMAPTrainer"),
    "ssl": TrainedMethod("baselines.ssl", "ssl_config", "SSLTrainer"),
    "ssl-penalty": TrainedMethod("baselines.ssl", "ssl_penalty_config", "SSLTrainer"),
    "ippo": TrainedMethod("baselines.ppo", "ippo_config", "PPOTrainer"),
    "mappo": TrainedMethod("baselines.ppo", "mappo_config", "PPOTrainer"),
}


def _rule(name: str) -> Callable:
    """Factory of a rule of `baselines.rules` (imported when first called)."""

    def make(progress: Callable[[int, int], None] | None = None) -> Callable:
        return importlib.import_module("baselines.rules").RULES[name]

    return make


def _oracle(progress: Callable[[int, int], None] | None = None, **config) -> Callable:
    """The perfect-foresight optimum; ``config``: `baselines.oracle.OracleConfig` fields."""
    from baselines.oracle import OracleConfig, PerfectForesightPolicy
    from gradmap_agent.config import build_config

    return PerfectForesightPolicy(build_config(OracleConfig, config), progress=progress)


#: ``gridedge evaluate --method NAME``: name -> ``make(progress=None, **config) -> policy(sim, state)``;
#: ``progress`` is a ``callback(done, total)`` for methods that compute for a long time before acting (the
#: optimum), ``config`` the method's settings (``--set``; only the optimum has any)
REFERENCE_POLICIES: dict[str, Callable] = {
    "noop": _rule("noop"),
    "price-seeking": _rule("price-seeking"),
    "droop": _rule("droop"),
    "oracle": _oracle,
}
