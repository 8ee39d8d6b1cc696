"""Pieces every trainer composes: the learning-rate schedule over the budget, and copies of nested state.

- `budget_progress(config, iteration, elapsed_s)`: the share of the budget used, the larger of the
  iterations' and the minutes' shares (1 when there is no budget);
- `lr_at(config, progress)`: the learning rate at that share of the budget ("constant", "linear" or
  "cosine" decay from ``lr`` to ``lr * lr_final_fraction``);
- `clone_tree(obj)`: a detached copy of nested dicts, lists and tuples of tensors (optimiser states,
  policy weights in checkpoints).

``config`` is any trainer config with the fields ``iterations``, ``minutes``, ``lr``, ``lr_schedule`` and
``lr_final_fraction``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["LR_SCHEDULES", "budget_progress", "clone_tree", "lr_at"]

#: Learning-rate schedules over the budget.
LR_SCHEDULES = ("constant", "linear", "cosine")


def lr_at(config, progress: float) -> float:
    """Learning rate at ``progress`` in [0, 1] of the budget (clipped to that range)."""
    p = min(max(progress, 0.0), 1.0)
    f = config.lr_final_fraction
    if config.lr_schedule == "constant":
        return config.lr
    if config.lr_schedule == "linear":
        return config.lr * (1.0 - (1.0 - f) * p)
    return config.lr * (f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * p)))


def budget_progress(config, iteration: int, elapsed_s: float) -> float:
    """Share of the budget used after ``iteration`` iterations and ``elapsed_s`` seconds of training."""
    parts = []
    if config.iterations:
        parts.append(iteration / config.iterations)
    if config.minutes:
        parts.append(elapsed_s / (60.0 * config.minutes))
    return max(parts) if parts else 1.0


def clone_tree(obj):
    """A detached copy of ``obj`` (tensors cloned inside dicts, lists and tuples; other values as they are)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: clone_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clone_tree(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(clone_tree(v) for v in obj)
    return obj
