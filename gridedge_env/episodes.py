"""Which episodes to run: days of a split, and initial states that do not depend on the batch.

- `select_days(split, days)`: all days of a split, a count evenly spaced over it, or explicit indices;
- `reset_scenarios(sim, split, days, seeds)`: one row per (day, reset seed), each reset on its own, so any
  row can be re-run exactly (a trainer's replay of hard scenarios);
- `reset_days(sim, split, days, seed)`: the evaluation's episodes, every day reset with seed
  ``seed * 1_000_003 + day``, so every method sees exactly the same households whatever its batch size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from gridedge_env.scenarios import split_days

__all__ = ["reset_days", "reset_scenarios", "select_days"]


def select_days(split: str, days: int | Sequence[int] | None) -> np.ndarray:
    """Day indices: all days of ``split`` (None), ``days`` of them evenly spaced over the year (int), or
    the given indices (each must be in the split)."""
    allowed = np.asarray(split_days(split))
    if days is None:
        return allowed
    if isinstance(days, int | np.integer):
        if days < 1:
            raise ValueError(f"days must be >= 1, got {days}")
        if days >= len(allowed):
            return allowed
        pick = np.unique(np.round(np.linspace(0, len(allowed) - 1, int(days))).astype(int))
        return allowed[pick]
    chosen = np.asarray(days, dtype=np.int64).reshape(-1)
    bad = ~np.isin(chosen, allowed)
    if bad.any():
        raise ValueError(f"day {int(chosen[bad.argmax()])} is not a {split!r} day")
    return chosen


def _concat_states(states):
    first = states[0]
    changes = {}
    for f in dataclasses.fields(first):
        value = getattr(first, f.name)
        if isinstance(value, torch.Tensor):
            changes[f.name] = torch.cat([getattr(s, f.name) for s in states], dim=0)
    return dataclasses.replace(first, **changes)


def reset_scenarios(sim, split: str, days: Sequence[int], seeds: Sequence[int], households: str | None = None):
    """Initial state of one row per (day, reset seed) pair, each reset on its own: the row's household
    draws and initial device states depend on its own seed only, so any row can be re-run exactly.
    ``households``: the split whose household profiles the loads come from (default ``split``'s own)."""
    if len(days) != len(seeds):
        raise ValueError(f"need one seed per day, got {len(days)} days and {len(seeds)} seeds")
    states = [
        sim.reset(None, seed=int(s), split=split, days=[int(d)], households=households)
        for d, s in zip(days, seeds, strict=True)
    ]
    return _concat_states(states)


def reset_days(sim, split: str, days: Sequence[int], seed: int = 0, households: str | None = None):
    """Initial state of the given days, each reset on its own (batch-independent draws), with the
    households of ``households`` (default ``split``'s own)."""
    return reset_scenarios(sim, split, days, [int(seed) * 1_000_003 + int(d) for d in days], households)
