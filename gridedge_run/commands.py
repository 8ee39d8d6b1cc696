"""What ``gridedge train`` and ``gridedge evaluate`` do, as Python functions (`gridedge_run.cli` parses the
flags; `gridedge_run.compare` calls these functions directly).

- `train_method(method, out, ...)`: builds the simulator and the method's config (or reads them from
  ``out/config.json`` with ``resume=True``), refuses a non-empty run directory unless resuming, trains with
  `gridedge_run.loop.train`, and returns a summary dict;
- `evaluate_run(run_dir, ...)`: evaluates exported policies on held-out days;
- `evaluate_reference(method, ...)`: evaluates a rule or the perfect-foresight optimum (`REFERENCE_POLICIES`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

from gridedge_run.methods import REFERENCE_POLICIES, TRAIN_METHODS
from gridedge_run.progress import counter, show_progress

__all__ = [
    "check_data_parallel",
    "evaluate_reference",
    "evaluate_run",
    "fmt_time",
    "parse_assignments",
    "run_evaluate",
    "run_train",
    "train_method",
]


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


def fmt_time(seconds: float) -> str:
    """``H:MM:SS`` of a duration in seconds."""
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _sim_options(
    sim_set: list[str] | None, feeder: str | None, agents: int | None, sim_seed: int | None, device: str | None = None
) -> dict:
    """`make_sim` options from ``--sim-set`` and the task flags (defaults: IEEE-123, 1,000 agents, seed 0,
    the CPU)."""
    options = parse_assignments(sim_set, "--sim-set")
    if device is not None:
        if options.get("device", device) != device:
            raise ValueError(f"--device {device} disagrees with --sim-set device={options['device']}")
        options["device"] = device
    options.setdefault("feeder", feeder or "ieee123")
    options.setdefault("n_agents", agents if agents is not None else 1000)
    options.setdefault("seed", sim_seed if sim_seed is not None else 0)
    return options


def train_method(
    method: str,
    out: str | Path,
    *,
    sim_options: dict | None = None,
    fields: dict | None = None,
    resume: bool = False,
    restart: bool = False,
    progress: Callable[[dict], None] | None = None,
    show_bar: bool = False,
    label: str | None = None,
) -> dict:
    """Train ``method`` (a name of `TRAIN_METHODS`) into the run directory ``out``.

    Args:
        method: The method's name.
        out: Run directory; must be new or empty unless ``resume`` or ``restart``.
        sim_options: `make_sim` options of a new run (ignored when resuming, except that a given
            ``feeder``, ``n_agents`` or ``seed`` must match the run's, and a given ``device`` moves the
            run to that device).
        fields: Fields of the method's config; when resuming, they override the saved config (only the
            budget fields may differ from the checkpoint's).
        resume: Continue the run in ``out`` from its checkpoint.
        restart: Start a new run in ``out`` although it holds the files of a run that stopped before its first
            checkpoint (they are replaced); a directory with a checkpoint or with other files is refused.
        progress: Called with every iteration's metrics row (default: a `gridedge_run.progress.TrainBar`).
        show_bar: Draw the default progress bar on stderr (`gridedge_run.progress.show_progress`).
        label: The bar's label (default ``method``).

    Under ``torchrun`` (WORLD_SIZE > 1 in the environment) the process joins the launch's process group
    before it builds anything (`gradmap_agent.distributed.init_from_env`) and trains its share of every
    batch; rank 0 alone prepares and writes ``out``.

    Returns:
        The summary that ``gridedge train`` prints (iterations, wall time, throughput, final metrics, config).
    """
    from gradmap_agent.distributed import broadcast_object, init_from_env
    from gradmap_agent.losses import MULTIPLIER_FIELDS
    from gridedge_env.core import make_sim, sim_config_dict
    from gridedge_env.metrics import VIOLATION_METRICS
    from gridedge_run.loop import train
    from gridedge_run.rundir import CHECKPOINT_NAME, CONFIG_NAME

    if method not in TRAIN_METHODS:
        raise ValueError(f"unknown method {method!r}; known: {list(TRAIN_METHODS)}")
    out = Path(out)
    fields = dict(fields or {})
    sim_options = dict(sim_options or {})
    if resume and restart:
        raise ValueError("--resume continues a run and --restart starts it again: pass one of them")
    if resume:
        cfg_path = out / CONFIG_NAME
        if not cfg_path.is_file():
            raise ValueError(f"cannot resume: {cfg_path} not found")
        if not (out / CHECKPOINT_NAME).is_file():
            raise ValueError(
                f"cannot resume: {out} holds no {CHECKPOINT_NAME} (the run stopped before its first "
                "checkpoint); start it again with --restart"
            )
        saved = _read_run_config(cfg_path)
        if saved.get("method") != method:
            raise ValueError(f"cannot resume: {out} holds a {saved.get('method')!r} run, not {method!r}")
        for key, flag in (("feeder", "feeder"), ("n_agents", "agents"), ("seed", "sim-seed")):
            value = sim_options.get(key)
            if value is not None and saved["sim_config"].get(key) != value:
                raise ValueError(
                    f"cannot resume: --{flag} {value!r} differs from the run's {saved['sim_config'][key]!r}"
                )
        seed = fields.get("seed")
        if seed is not None and seed != saved["seed"]:
            raise ValueError(f"cannot resume: --seed {seed} differs from the run's {saved['seed']}")
        config = TRAIN_METHODS[method].make_config(**{**saved["config"], **fields})
        device = sim_options.get("device")
        sim_options = {**saved["sim_config"], **({"device": device} if device is not None else {})}
    else:
        config = TRAIN_METHODS[method].make_config(**{"seed": 0, **fields})
    rank, n_ranks = init_from_env(sim_options.get("device", "cpu"))
    if n_ranks > 1:
        check_data_parallel(method, n_ranks, config.batch_days)
    if not resume:
        problem = None
        if rank == 0:
            try:
                _prepare_new_run_dir(out, restart)
            except ValueError as exc:
                problem = str(exc)
        problem = broadcast_object(problem)  # every rank stops, or none
        if problem is not None:
            raise ValueError(problem)
    sim = make_sim(**sim_options)

    from gridedge_run.progress import TrainBar

    line = (
        TrainBar(label or method, config.run.iterations, config.run.minutes, show_bar)
        if progress is None and rank == 0
        else None
    )
    try:
        _, _, metrics = train(sim, config, progress_fn=progress or line, out_dir=out, resume=resume, method=method)
    finally:
        if line is not None:
            line.close()
    final = metrics["final"]
    summary = {
        "method": method,
        "out": str(out),
        "iterations": metrics["iterations"],
        "wall_s": metrics["wall_s"],
        "n_agents": sim.n_agents,
        "feeder": sim_config_dict(sim)["feeder"],
    }
    # one-day episodes simulated for training (PPO calls its parallel days num_envs, the gradient methods batch_days)
    days_per_iteration = config.num_envs if hasattr(config, "num_envs") else config.batch_days
    summary["env_steps"] = metrics["iterations"] * days_per_iteration * sim.n_steps
    summary["env_steps_per_s"] = summary["env_steps"] / metrics["wall_s"] if metrics["wall_s"] > 0 else None
    summary["agent_steps_per_s"] = (
        summary["env_steps_per_s"] * sim.n_agents if summary["env_steps_per_s"] is not None else None
    )
    for key in (
        "lagrangian",
        "cost",
        "violation_share",
        "worst_violation_pu",
        *VIOLATION_METRICS.values(),
        "pf_failures",
        *MULTIPLIER_FIELDS,
    ):
        if key in final:
            summary[f"final_{key}"] = final[key]
    summary["config"] = dataclasses.asdict(config)
    return summary


def check_data_parallel(method: str, n_ranks: int, batch_days: int | None = None) -> None:
    """ValueError unless ``method`` trains data-parallel and ``n_ranks`` divides its ``batch_days``."""
    if not getattr(TRAIN_METHODS[method].trainer_cls(), "data_parallel", False):
        parallel = [name for name, m in TRAIN_METHODS.items() if getattr(m.trainer_cls(), "data_parallel", False)]
        raise ValueError(
            f"{method} does not train data-parallel over processes (those that do: {', '.join(parallel)}); "
            "IPPO and MAPPO scale with RLlib's env runners (docs/scaling.md)"
        )
    if batch_days is not None and batch_days % n_ranks:
        raise ValueError(
            f"batch_days={batch_days} must be a multiple of the number of processes ({n_ranks}); "
            "pass --set batch_days=..."
        )


def _read_run_config(path: Path) -> dict:
    """A run's config.json, with a ValueError naming the file when it is not one."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the run's config ({exc})") from exc
    missing = [k for k in ("method", "seed", "config", "sim_config") if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise ValueError(f"{path}: not a gridedge run config (missing {missing})")
    return saved


def _prepare_new_run_dir(out: Path, restart: bool) -> None:
    """Create ``out`` for a new run: it must be new or empty, or, with ``restart``, hold only the files of a
    run that stopped before its first checkpoint (they are removed)."""
    from gridedge_run.rundir import CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, POLICIES_NAME

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if present and not restart:
        hint = (
            "pass --resume to continue it"
            if CHECKPOINT_NAME in present
            else "it holds no checkpoint: pass --restart to start that run again"
            if CONFIG_NAME in present
            else "choose a new --out"
        )
        raise ValueError(f"{out} exists and is not empty; {hint}")
    if present:
        if CHECKPOINT_NAME in present:
            raise ValueError(
                f"cannot restart: {out} holds a {CHECKPOINT_NAME}; continue it with --resume, or "
                "delete the directory to start over"
            )
        run_files = {CONFIG_NAME, METRICS_NAME, POLICIES_NAME}
        run_files |= {f"{name}.tmp" for name in (*run_files, CHECKPOINT_NAME)}
        others = [name for name in present if name not in run_files]
        if others:
            raise ValueError(f"cannot restart: {out} holds files no run writes ({others[:5]}); choose a new --out")
        for name in present:
            (out / name).unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the run directory --out {out}: {exc.strerror or exc}") from exc


def run_train(args) -> dict:
    """``gridedge train METHOD ...``: `train_method` with the flags; returns the summary printed by the CLI."""
    from gradmap_agent.train import DivergenceError

    fields = parse_assignments(args.set, "--set")
    if args.minutes is not None:
        fields.update(minutes=args.minutes, iterations=None)
    if args.iterations is not None:
        fields.update(iterations=args.iterations, minutes=None)
    if args.seed is not None:
        fields["seed"] = args.seed
    if args.eval_every is not None:  # a budget field: a resumed run takes the new value too
        fields["eval_every"] = args.eval_every
    if args.resume:
        if args.sim_set:
            raise ValueError("--sim-set cannot change a resumed run: it keeps the simulator in its config.json")
        sim_options = {"feeder": args.feeder, "n_agents": args.agents, "seed": args.sim_seed, "device": args.device}
    else:
        sim_options = _sim_options(args.sim_set, args.feeder, args.agents, args.sim_seed, args.device)
    out = Path(args.out)
    try:
        return train_method(
            args.method,
            out,
            sim_options=sim_options,
            fields=fields,
            resume=args.resume,
            restart=args.restart,
            show_bar=show_progress(args.quiet),
        )
    except DivergenceError as exc:
        print(
            f"gridedge train: training stopped: {exc}. The last good state is in {out}/checkpoint.pt "
            f"(and policies.pt); metrics.csv ends at its iteration.",
            file=sys.stderr,
        )
        raise SystemExit(3) from exc
    except KeyboardInterrupt:
        print(f"gridedge train: interrupted; {_interrupted_state(out)}", file=sys.stderr)
        raise SystemExit(130) from None


def _interrupted_state(out: Path) -> str:
    """What an interrupted run left in ``out``, and how to go on from there."""
    from gridedge_run.rundir import CHECKPOINT_NAME, load_run_file

    checkpoint = out / CHECKPOINT_NAME
    if checkpoint.is_file():
        try:
            iteration = load_run_file(checkpoint, "checkpoint").get("iteration")
        except ValueError:
            iteration = None
        at = f" (iteration {iteration})" if iteration is not None else ""
        return f"checkpoint written to {checkpoint}{at}; continue with --resume"
    if out.is_dir() and any(out.iterdir()):
        return f"stopped before the first checkpoint: nothing to resume in {out}; start it again with --restart"
    return f"stopped before anything was written to {out}"


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    days: int | None = None,
    batch: int = 16,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    households: str | None = None,
) -> dict:
    """Evaluate the policies exported in ``run_dir`` on ``split``, with the households of ``households``
    (default the split's own): `evaluate_policy`'s metrics, plus ``method``, ``run_dir`` and the exported
    ``iteration``, with the simulator and the policies on ``device`` (whichever device trained them)."""
    from gridedge_env import make_sim
    from gridedge_run.evaluate import evaluate_policy, obs_policy
    from gridedge_run.rundir import load_policies

    policy, info = load_policies(run_dir, device=device)
    sim = make_sim(**{**info["sim_config"], "device": device})
    if list(sim.agents) != list(info["agents"]):
        raise ValueError("the rebuilt simulator's agents differ from the exported policies' agents")
    if policy.n_agents != sim.n_agents:
        raise ValueError(f"policies for {policy.n_agents} agents, simulator has {sim.n_agents}")
    result = evaluate_policy(
        sim,
        obs_policy(policy),
        split=split,
        days=days,
        batch=batch,
        seed=seed,
        progress=progress,
        households=households,
    )
    return {
        "method": info.get("method", "gradmap"),
        "feeder": info["sim_config"].get("feeder"),
        "n_agents": sim.n_agents,
        **result,
        "run_dir": str(run_dir),
        "iteration": info.get("iteration"),
    }


def evaluate_reference(
    method: str,
    sim_options: dict,
    *,
    config: dict | None = None,
    split: str = "test",
    days: int | None = None,
    batch: int = 16,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    plan_progress: Callable[[int, int], None] | None = None,
    households: str | None = None,
) -> dict:
    """Evaluate a method that needs no training (`REFERENCE_POLICIES`: a rule or the optimum, with
    ``config``, the optimum's `OracleConfig` fields) on the simulator of ``sim_options``. The optimum's
    result also has ``plans`` (`baselines.oracle.PerfectForesightPolicy.plans`: each batch's KKT residual)
    and ``kkt_met`` (every plan met its KKT tolerances)."""
    from gridedge_env import make_sim
    from gridedge_env.core import sim_config_dict
    from gridedge_run.evaluate import evaluate_policy

    if method not in REFERENCE_POLICIES:
        raise ValueError(
            f"unknown method {method!r}; known: {list(REFERENCE_POLICIES)} (trained "
            "methods are evaluated from their run directory: gridedge evaluate DIR)"
        )
    sim = make_sim(**sim_options)
    policy_fn = REFERENCE_POLICIES[method](progress=plan_progress, **(config or {}))
    result = evaluate_policy(
        sim, policy_fn, split=split, days=days, batch=batch, seed=seed, progress=progress, households=households
    )
    if hasattr(policy_fn, "plans"):  # the optimum: each batch's plan with its KKT residual
        result["plans"] = policy_fn.plans
        result["kkt_met"] = all(plan["met"] for plan in policy_fn.plans)
    return {"method": method, "feeder": sim_config_dict(sim)["feeder"], "n_agents": sim.n_agents, **result}


def run_evaluate(args) -> dict:
    """``gridedge evaluate DIR | --method NAME ...``; returns the metrics printed by the CLI."""
    overrides = parse_assignments(args.set, "--set")
    if overrides and args.method != "oracle":
        raise ValueError(
            "--set configures --method oracle only, not "
            + (f"{args.method!r}" if args.method else "a run directory's policies")
        )
    if (args.run_dir is None) == (args.method is None):
        raise ValueError(
            f"give either a run directory (exported policies) or --method {'|'.join(REFERENCE_POLICIES)}, not both"
        )
    show = show_progress(args.quiet)
    days = {
        "split": args.split,
        "households": args.households,
        "days": args.days,
        "batch": args.batch,
        "seed": args.seed,
        "progress": counter("evaluate", show, unit="day"),
    }
    device = args.device or "cpu"
    if args.run_dir is not None:
        return evaluate_run(args.run_dir, device=device, **days)
    # per Adam step of each batch's plan for the optimum (minutes on IEEE-123); silent for the rules
    return evaluate_reference(
        args.method,
        _sim_options(args.sim_set, args.feeder, args.agents, args.sim_seed, args.device),
        config=overrides,
        plan_progress=counter(f"{args.method} plan", show, unit="step"),
        **days,
    )
