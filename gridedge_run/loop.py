"""The training loop of every method: budget, checkpoints, resume, periodic evaluation, run-directory files.

`train(env_or_config, config, ...)` drives any trainer of the registry (`gridedge_run.methods`): it calls
``trainer.iterate()`` until the budget (``config.run.iterations`` and/or ``config.run.minutes``) is spent,
evaluates the deterministic policies on validation days every ``config.run.eval_every`` iterations and/or
whenever the training wall time passes a multiple of ``config.run.eval_every_s`` seconds, writes
``metrics.csv`` after every iteration and a checkpoint every ``config.run.checkpoint_every`` (with, for the
primal-dual methods, ``multipliers.png``: the multipliers' mean and maximum over training), and on
divergence or interruption saves the last consistent state before re-raising. A resumed run continues bit
for bit as the uninterrupted one would have.

Under data parallelism (`gradmap_agent.distributed`; the process group started before the simulator, as
`gridedge_run.commands.train_method` does) every rank runs this loop in step: the iteration's wall time is
the slowest rank's, so that every rank spends the same budget; only rank 0 evaluates, reports progress and
writes the run directory. Every rank holds the same state, so a checkpoint does not depend on the number
of ranks that wrote it and resumes with any number.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from gradmap_agent.config import flatten_config
from gradmap_agent.distributed import max_over_ranks, world
from gradmap_agent.networks import make_policy
from gradmap_agent.train import DivergenceError, GradMAPConfig
from gridedge_env.core import SimConfig, make_sim, sim_config_dict
from gridedge_env.metrics import EVAL_METRICS
from gridedge_run import plots
from gridedge_run.evaluate import evaluate_policy, obs_policy
from gridedge_run.methods import TRAIN_METHODS
from gridedge_run.rundir import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    METRICS_NAME,
    MULTIPLIERS_FIGURE,
    POLICIES_NAME,
    append_metrics_csv,
    atomic_save,
    atomic_write_text,
    export_policies,
    load_run_file,
    versions,
    write_metrics_csv,
)

__all__ = ["RESUMABLE_CHANGES", "DivergenceError", "train"]

#: Fields of the config that may change when a run is resumed (the budget); all others must match.
RESUMABLE_CHANGES = (
    "run.iterations",
    "run.minutes",
    "run.checkpoint_every",
    "run.eval_every",
    "run.eval_every_s",
    "run.eval_days",
)


def _as_sim(env_or_config):
    if hasattr(env_or_config, "reset") and hasattr(env_or_config, "step") and hasattr(env_or_config, "agents"):
        return env_or_config
    if isinstance(env_or_config, SimConfig):
        return make_sim(**{f.name: getattr(env_or_config, f.name) for f in dataclasses.fields(env_or_config)})
    if isinstance(env_or_config, dict):
        return make_sim(**env_or_config)
    if isinstance(env_or_config, str):
        return make_sim(feeder=env_or_config)
    raise ValueError(
        f"env_or_config must be a Sim, a SimConfig, a dict of make_sim options or a feeder name, "
        f"got {type(env_or_config).__name__}"
    )


def _without_device(sim_config: dict) -> dict:
    """A simulator config without its device: a run resumes on any device (the checkpoint is mapped there)."""
    return {k: v for k, v in sim_config.items() if k != "device"}


def _check_resume_config(saved: dict, config) -> None:
    current, saved = flatten_config(config), flatten_config(saved)
    diff = [k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k]]
    if diff:
        details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current[k]!r}" for k in diff)
        raise ValueError(
            f"cannot resume: the config differs from the checkpoint's ({details}); pass the "
            "checkpoint's values with --set KEY=VALUE to continue it"
        )


def _evaluation_due(run, iteration: int, before_s: float, after_s: float) -> bool:
    """Whether the iteration that ended at ``iteration`` (training wall time ``before_s`` -> ``after_s``) is
    followed by a periodic evaluation: every `eval_every` iterations, or when it passed a multiple of
    `eval_every_s` seconds (stateless, so a resumed run evaluates where the uninterrupted one would)."""
    if run.eval_every and iteration % run.eval_every == 0:
        return True
    return bool(run.eval_every_s) and math.floor(after_s / run.eval_every_s) > math.floor(before_s / run.eval_every_s)


def train(
    env_or_config,
    config: GradMAPConfig | None = None,
    progress_fn: Callable[[dict], None] | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    method: str | None = None,
    trainer_cls: type | None = None,
):
    """Train N independent policies with the method that ``config`` configures (GradMAP by default).

    Args:
        env_or_config: A simulator (`gridedge_env.make_sim`), a `gridedge_env.SimConfig`, a dict of
            ``make_sim`` options, or a feeder name.
        config: The method's config (`GradMAPConfig`, `baselines.ssl.SSLConfig`, `baselines.ppo.PPOConfig`;
            default `GradMAPConfig()`).
        progress_fn: Called after every iteration with its metrics row (the columns of ``metrics.csv``
            plus ``time_left_s``).
        out_dir: Run directory for ``config.json``, ``metrics.csv``, ``checkpoint.pt`` and ``policies.pt``
            (None: nothing is written).
        resume: Continue from ``out_dir/checkpoint.pt`` (bit-for-bit the same continuation as an
            uninterrupted run). Only the budget fields (`RESUMABLE_CHANGES`) may differ from the saved config.
        method: Name recorded in the files and looked up in `TRAIN_METHODS` (default ``config.method``).
        trainer_cls: The trainer class (default: the method's, `gridedge_run.methods.TrainedMethod`).

    Returns:
        ``(make_policy, params, metrics)``: `gradmap_agent.networks.make_policy`, the trained ``params``
        (stacked weights and normaliser), and ``{"history": [rows], "iterations", "wall_s", "final": row}``.

    Raises:
        DivergenceError: NaN/inf in the Lagrangian, its gradient or the policy, or too many power-flow
            failures; the state before the failing iteration is written to ``out_dir`` first.
        KeyboardInterrupt: Re-raised after the last consistent state is checkpointed.
    """
    config = GradMAPConfig() if config is None else config
    sim = _as_sim(env_or_config)
    method = method or config.method
    if trainer_cls is None and method not in TRAIN_METHODS:
        raise ValueError(f"unknown method {method!r}; known: {list(TRAIN_METHODS)}")
    trainer = (trainer_cls or TRAIN_METHODS[method].trainer_cls())(sim, config)
    out = Path(out_dir) if out_dir is not None else None
    main_rank = world()[0] == 0  # the only rank that evaluates, reports and writes
    writer = out is not None and main_rank
    if not main_rank:
        progress_fn = None
    if out is not None:
        if writer:
            out.mkdir(parents=True, exist_ok=True)
        ckpt_path = out / CHECKPOINT_NAME
        if resume:
            if not ckpt_path.is_file():
                raise ValueError(f"cannot resume: no {CHECKPOINT_NAME} in {out}")
            state = load_run_file(ckpt_path, "checkpoint", map_location=sim.device)
            if not {"config", "sim_config"} <= state.keys():
                raise ValueError(f"{ckpt_path}: not a gridedge checkpoint (no config or sim_config)")
            if state.get("method", method) != method:
                raise ValueError(f"cannot resume: {ckpt_path} was written by {state['method']!r}, not {method!r}")
            _check_resume_config(state["config"], config)
            if _without_device(state["sim_config"]) != _without_device(sim_config_dict(sim)):
                raise ValueError("cannot resume: the simulator config differs from the checkpoint's")
            trainer.load_state_dict(state)
        run_info = {
            "method": method,
            "seed": config.run.seed,
            "config": dataclasses.asdict(config),
            "sim_config": sim_config_dict(sim),
            "versions": versions(),
            "n_agents": sim.n_agents,
            "agents_per_type": dict(sim.n_per_type),
            "resumed_at_iteration": trainer.iteration if resume else None,
        }
        if writer:
            atomic_write_text(json.dumps(run_info, indent=2) + "\n", out / CONFIG_NAME)
            write_metrics_csv(out / METRICS_NAME, trainer.history, trainer.metric_fields)
    elif resume:
        raise ValueError("resume=True needs out_dir")

    def save(state: dict | None = None) -> None:
        if not writer:
            return
        state = trainer.state_dict() if state is None else state
        atomic_save({**state, "method": method}, out / CHECKPOINT_NAME)  # the method names the file's writer
        weights = state["policy_average"] if state.get("policy_average") is not None else state["policy"]
        export_policies(
            out / POLICIES_NAME, {"policy": weights, "normalizer": state["normalizer"]}, sim, method, state["iteration"]
        )
        if state["history"] and "voltage_multiplier_mean" in state["history"][-1]:  # primal-dual methods
            plots.multipliers(state["history"], out / MULTIPLIERS_FIGURE, title=f"{method}: Lagrange multipliers")

    run = config.run

    def budget_left() -> bool:
        if run.iterations is not None and trainer.iteration >= run.iterations:
            return False
        return run.minutes is None or trainer.elapsed_s < 60.0 * run.minutes

    eval_fn = None
    if (run.eval_every or run.eval_every_s) and main_rank:

        def eval_fn() -> dict:
            policy = make_policy(trainer.params())
            return evaluate_policy(sim, obs_policy(policy), split="validation", days=run.eval_days)

    wall0 = time.perf_counter()
    snapshot = None
    try:
        while budget_left():
            snapshot = trainer.state_dict() if writer else None
            t0 = time.perf_counter()
            row = trainer.iterate()
            before_s = trainer.elapsed_s
            trainer.elapsed_s += max_over_ranks(time.perf_counter() - t0)
            trainer.iteration += 1
            row["wall_s"] = trainer.elapsed_s
            if eval_fn is not None and (
                _evaluation_due(run, trainer.iteration, before_s, trainer.elapsed_s) or not budget_left()
            ):
                ev = eval_fn()
                row.update({f"eval_{name}": ev[name] for name in EVAL_METRICS})
            trainer.history.append(row)
            snapshot = None  # the trainer is consistent again
            if writer:
                append_metrics_csv(out / METRICS_NAME, row, trainer.metric_fields)
                if trainer.iteration % run.checkpoint_every == 0:
                    save()
            if progress_fn is not None:
                rate = trainer.elapsed_s / max(len(trainer.history), 1)
                left = []
                if run.iterations is not None:
                    left.append((run.iterations - trainer.iteration) * rate)
                if run.minutes is not None:
                    left.append(60.0 * run.minutes - trainer.elapsed_s)
                progress_fn({**row, "time_left_s": max(min(left), 0.0) if left else 0.0})
    except (DivergenceError, KeyboardInterrupt):
        if writer:
            save(snapshot)  # the state before the failing/interrupted iteration, or the current one
            if snapshot is not None:
                write_metrics_csv(out / METRICS_NAME, snapshot["history"], trainer.metric_fields)
        raise
    save()
    final = trainer.history[-1] if trainer.history else {}
    metrics = {
        "history": trainer.history,
        "iterations": trainer.iteration,
        "wall_s": trainer.elapsed_s,
        "run_wall_s": time.perf_counter() - wall0,
        "final": final,
        "method": method,
    }
    return make_policy, trainer.params(), metrics
