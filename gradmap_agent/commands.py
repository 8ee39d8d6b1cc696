"""What ``gridedge train`` and ``gridedge evaluate`` do (the argument parsing lives in `gridedge_env.cli`).

- `run_train(args)`: builds the simulator and `GradMAPConfig` from the flags (or from ``DIR/config.json``
  with ``--resume``), refuses a non-empty run directory unless resuming, shows progress on stderr, trains,
  and returns a summary dict.
- `run_evaluate(args)`: evaluates exported policies (``DIR``) or a reference method (``--method``: a rule
  or the perfect-foresight optimum, `REFERENCE_POLICIES`) on the test days with
  `gradmap_agent.evaluate.evaluate_policy`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TRAIN_METHODS", "TrainMethod", "parse_assignments", "run_evaluate", "run_train"]

@dataclass(frozen=True)
class TrainMethod:
    """How ``gridedge train NAME`` builds its config and trains (imports happen on first call)."""

    make_config: Callable
    """``make_config(**fields) -> config``; raises ValueError naming unknown or invalid fields."""
    train: Callable
    """``train(sim, config, progress_fn, *, out_dir, resume, method) -> (make_policy, params, metrics)``
    writing the run-directory files of `gradmap_agent.train.train`."""


def _lazy(module: str, name: str) -> Callable:
    """``module.name(...)``, imported when first called (the CLI parser starts without torch)."""

    def call(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    return call


#: method name -> how to configure and train it
TRAIN_METHODS = {
    "gradmap": TrainMethod(lambda **kw: _train_module().GradMAPConfig(**_check_fields(kw)),
                           _lazy("gradmap_agent.train", "train")),
    "gradma": TrainMethod(lambda **kw: _train_module().gradma_config(**_check_fields(kw)),
                          _lazy("gradmap_agent.train", "train")),
    "ippo": TrainMethod(_lazy("baselines.ppo", "ippo_config"), _lazy("baselines.ppo", "train")),
    "mappo": TrainMethod(_lazy("baselines.ppo", "mappo_config"), _lazy("baselines.ppo", "train")),
    "ssl": TrainMethod(_lazy("baselines.ssl", "ssl_config"), _lazy("baselines.ssl", "train")),
    "ssl-penalty": TrainMethod(_lazy("baselines.ssl", "ssl_penalty_config"), _lazy("baselines.ssl", "train")),
}


def _check_fields(fields: dict) -> dict:
    train = _train_module()
    return train.check_fields(train.GradMAPConfig, fields)


def _train_module():
    import importlib

    return importlib.import_module("gradmap_agent.train")


def parse_assignments(items: list[str] | None, what: str) -> dict:
    """``["key=value", ...]`` -> dict; values are JSON when they parse (numbers, true/false, null), "none"
    is None, anything else a string."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{what} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if value.strip().lower() == "none":
            out[key] = None
            continue
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _fmt_time(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


#: (metrics column, format) shown by `ProgressLine` when the method reports the column
_PROGRESS_FIELDS = (
    ("lagrangian", "L {:.4g}"), ("cost", "cost {:.4g}"), ("violation_share", "viol {:.2%}"),
    ("worst_violation_pu", "worst {:.4f}"), ("device_violation", "dev {:.3g}"),
    ("voltage_multiplier_max", "mu max {:.3g}"), ("approx_kl", "kl {:.3g}"), ("env_steps_per_s", "{:.0f} steps/s"),
    ("pf_failures", "pf fail {}"),
)


class ProgressLine:
    """One-line progress on stderr: redrawn in place on a terminal, a plain line every ``every`` iterations
    (or ``min_interval_s`` seconds) otherwise."""

    def __init__(self, label: str, total: int | None, every: int = 10, min_interval_s: float = 30.0,
                 stream=None):
        self.label, self.total, self.every, self.min_interval_s = label, total, every, min_interval_s
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_print = time.monotonic()

    def __call__(self, row: dict) -> None:
        it = row["iteration"]
        total = f"/{self.total}" if self.total else ""
        parts = [f"{self.label} it {it}{total}", _fmt_time(row["wall_s"])]
        parts += [fmt.format(row[key]) for key, fmt in _PROGRESS_FIELDS if row.get(key, "") != ""]
        parts.append(f"left {_fmt_time(row.get('time_left_s', 0.0))}")
        text = " | ".join(parts)
        if row.get("eval_cost", "") != "":
            text += f" | test cost {row['eval_cost']:.4g} viol {row['eval_violation_share']:.2%}"
        if self.tty:
            width = max(shutil.get_terminal_size((120, 24)).columns - 1, 20)
            print("\r" + text[:width].ljust(width), end="", file=self.stream, flush=True)
        else:
            now = time.monotonic()
            if it % self.every == 0 or it == 1 or now - self._last_print >= self.min_interval_s:
                print(text, file=self.stream, flush=True)
                self._last_print = now

    def close(self) -> None:
        if self.tty:
            print(file=self.stream, flush=True)


def run_train(args) -> dict:
    """``gridedge train METHOD ...`` (every method of `TRAIN_METHODS`); returns the summary printed by the CLI."""
    import torch

    from gradmap_agent.train import CONFIG_NAME, DivergenceError, make_sim_from_dict, sim_config_dict

    out = Path(args.out)
    budget = {}
    if args.minutes is not None:
        budget = {"minutes": args.minutes, "iterations": None}
    if args.iterations is not None:
        budget = {"iterations": args.iterations, "minutes": None}
    overrides = parse_assignments(args.set, "--set")
    if args.resume:
        cfg_path = out / CONFIG_NAME
        if not cfg_path.is_file():
            raise ValueError(f"cannot resume: {cfg_path} not found")
        saved = json.loads(cfg_path.read_text())
        if saved.get("method") != args.method:
            raise ValueError(f"cannot resume: {out} holds a {saved.get('method')!r} run, not {args.method!r}")
        given = {"feeder": args.feeder, "n_agents": args.agents, "seed": args.sim_seed}
        for key, value in given.items():
            if value is not None and saved["sim_config"].get(key) != value:
                raise ValueError(f"cannot resume: --{key} {value!r} differs from the run's "
                                 f"{saved['sim_config'][key]!r}")
        if args.seed is not None and args.seed != saved["config"]["seed"]:
            raise ValueError(f"cannot resume: --seed {args.seed} differs from the run's {saved['config']['seed']}")
        fields = dict(saved["config"])
        fields.update(overrides)
        fields.update(budget)
        config = TRAIN_METHODS[args.method].make_config(**fields)
        sim = make_sim_from_dict(saved["sim_config"])
    else:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ValueError(f"{out} exists and is not empty; choose a new --out or pass --resume to continue it")
        sim_options = parse_assignments(args.sim_set, "--sim-set")
        sim_options.setdefault("feeder", args.feeder or "ieee123")
        sim_options.setdefault("n_agents", args.agents if args.agents is not None else 1000)
        sim_options.setdefault("seed", args.sim_seed if args.sim_seed is not None else 0)
        if isinstance(sim_options.get("dtype"), str):
            sim_options["dtype"] = getattr(torch, sim_options["dtype"])
        from gridedge_env import make_sim

        sim = make_sim(**sim_options)
        fields = {"seed": args.seed if args.seed is not None else 0, **overrides, **budget}
        if args.eval_every is not None:
            fields["eval_every"] = args.eval_every
        config = TRAIN_METHODS[args.method].make_config(**fields)

    progress = ProgressLine(args.method, config.iterations)
    try:
        _, _, metrics = TRAIN_METHODS[args.method].train(sim, config, progress_fn=progress, out_dir=out,
                                                         resume=args.resume, method=args.method)
    except DivergenceError as exc:
        progress.close()
        print(f"gridedge train: training stopped: {exc}. The last good state is in {out}/checkpoint.pt "
              f"(and policies.pt); metrics.csv ends at its iteration.", file=sys.stderr)
        raise SystemExit(3) from exc
    except KeyboardInterrupt:
        progress.close()
        print(f"gridedge train: interrupted; checkpoint written to {out}; continue with --resume", file=sys.stderr)
        raise SystemExit(130) from None
    progress.close()
    final = metrics["final"]
    summary = {"method": args.method, "out": str(out), "iterations": metrics["iterations"],
               "wall_s": metrics["wall_s"], "n_agents": sim.n_agents,
               "feeder": sim_config_dict(sim)["feeder"]}
    # one-day episodes simulated for training (PPO calls its parallel days num_envs, the gradient methods batch_days)
    days_per_iteration = config.num_envs if hasattr(config, "num_envs") else config.batch_days
    summary["env_steps"] = metrics["iterations"] * days_per_iteration * sim.n_steps
    summary["env_steps_per_s"] = summary["env_steps"] / metrics["wall_s"] if metrics["wall_s"] > 0 else None
    summary["agent_steps_per_s"] = (summary["env_steps_per_s"] * sim.n_agents
                                    if summary["env_steps_per_s"] is not None else None)
    for key in ("lagrangian", "cost", "violation_share", "worst_violation_pu", "device_violation", "pf_failures",
                "voltage_multiplier_max", "device_multiplier_mean"):
        if key in final:
            summary[f"final_{key}"] = final[key]
    summary["config"] = dataclasses.asdict(config)
    return summary


def _rule(name: str) -> Callable:
    """Factory of a rule of `baselines.rules` (imported when first called)."""

    def make(progress: Callable[[int, int], None] | None = None) -> Callable:
        import importlib

        return importlib.import_module("baselines.rules").RULES[name]

    return make


def _oracle(progress: Callable[[int, int], None] | None = None, **config) -> Callable:
    """The perfect-foresight optimum; ``config``: `baselines.oracle.OracleConfig` fields."""
    from baselines.oracle import OracleConfig, PerfectForesightPolicy

    return PerfectForesightPolicy(OracleConfig(**_train_module().check_fields(OracleConfig, config)),
                                  progress=progress)


#: ``gridedge evaluate --method NAME``: name -> ``make(progress=None, **config) -> policy(sim, state)``;
#: ``progress`` is a ``callback(done, total)`` for methods that compute for a long time before acting (the
#: optimum), ``config`` the method's settings (``--set``; only the optimum has any)
REFERENCE_POLICIES: dict[str, Callable] = {
    "noop": _rule("noop"),
    "price-seeking": _rule("price-seeking"),
    "droop": _rule("droop"),
    "oracle": _oracle,
}


def _stderr_progress(label: str, every: int) -> Callable[[int, int], None]:
    def show(done: int, total: int) -> None:
        if done % every == 0 or done == total:
            print(f"{label}: {done}/{total}", file=sys.stderr, flush=True)

    return show


def run_evaluate(args) -> dict:
    """``gridedge evaluate DIR | --method NAME ...``; returns the metrics printed by the CLI."""
    import torch

    from gradmap_agent.evaluate import evaluate_policy, obs_policy
    from gradmap_agent.train import load_policies, make_sim_from_dict

    overrides = parse_assignments(args.set, "--set")
    if overrides and args.method != "oracle":
        raise ValueError("--set configures --method oracle only, not "
                         + (f"{args.method!r}" if args.method else "a run directory's policies"))
    if (args.run_dir is None) == (args.method is None):
        raise ValueError("give either a run directory (exported policies) or --method "
                         f"{'|'.join(REFERENCE_POLICIES)}, not both")
    if args.run_dir is not None:
        policy, info = load_policies(args.run_dir)
        sim = make_sim_from_dict(info["sim_config"])
        if list(sim.agents) != list(info["agents"]):
            raise ValueError("the rebuilt simulator's agents differ from the exported policies' agents")
        if policy.n_agents != sim.n_agents:
            raise ValueError(f"policies for {policy.n_agents} agents, simulator has {sim.n_agents}")
        policy_fn, method = obs_policy(policy), info.get("method", "gradmap")
        source = {"run_dir": str(args.run_dir), "iteration": info.get("iteration")}
    else:
        if args.method not in REFERENCE_POLICIES:
            raise ValueError(f"unknown method {args.method!r}; known: {list(REFERENCE_POLICIES)} (trained "
                             "methods are evaluated from their run directory: gridedge evaluate DIR)")
        sim_options = parse_assignments(args.sim_set, "--sim-set")
        sim_options.setdefault("feeder", args.feeder or "ieee123")
        sim_options.setdefault("n_agents", args.agents if args.agents is not None else 1000)
        sim_options.setdefault("seed", args.sim_seed if args.sim_seed is not None else 0)
        if isinstance(sim_options.get("dtype"), str):
            sim_options["dtype"] = getattr(torch, sim_options["dtype"])
        from gridedge_env import make_sim

        sim = make_sim(**sim_options)
        # per Adam step of each batch's plan for the optimum (minutes on IEEE-123); silent for the rules
        policy_fn = REFERENCE_POLICIES[args.method](progress=_stderr_progress(f"{args.method} plan step", 25),
                                                    **overrides)
        method = args.method
        source = {}
    result = evaluate_policy(sim, policy_fn, split=args.split, days=args.days, batch=args.batch, seed=args.seed,
                             progress=_stderr_progress("evaluate days", 1))
    return {"method": method, **result, **source}
