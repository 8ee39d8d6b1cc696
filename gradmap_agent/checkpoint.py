"""What every trainer's checkpoint holds besides its own networks: the format, counters, config, RNG and
history (`common_state`), and their restore (`restore_common`). The run layer writes and reads the files."""

from __future__ import annotations

import dataclasses

from gridedge_env.core import sim_config_dict

__all__ = ["common_state", "restore_common"]


def common_state(trainer, fmt: str) -> dict:
    """The entries every checkpoint has: ``format``, ``iteration``, ``elapsed_s``, ``config``, ``sim_config``,
    ``rng`` (``trainer.gen``'s state) and ``history``."""
    return {
        "format": fmt,
        "iteration": trainer.iteration,
        "elapsed_s": trainer.elapsed_s,
        "config": dataclasses.asdict(trainer.config),
        "sim_config": sim_config_dict(trainer.sim),
        "rng": trainer.gen.get_state().clone(),
        "history": list(trainer.history),  # rows are never changed after they are appended
    }


def restore_common(trainer, state: dict, fmt: str) -> None:
    """Check ``state``'s format (ValueError naming it otherwise) and restore the counters, RNG and history."""
    if state.get("format") != fmt:
        raise ValueError(f"not a {fmt} checkpoint (format {state.get('format')!r})")
    trainer.iteration = int(state["iteration"])
    trainer.elapsed_s = float(state["elapsed_s"])
    trainer.gen.set_state(state["rng"])
    trainer.history = [dict(row) for row in state["history"]]
