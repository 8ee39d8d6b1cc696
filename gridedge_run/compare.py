"""``gridedge compare``: train every method under the same budget, evaluate everything on the same test days,
and write tables and figures.

One run directory holds it all, each stage in its own file, so an interrupted comparison continues where it
stopped (finished stages are skipped, an interrupted training resumes from its checkpoint):

    DIR/compare.json            the preset and options (a rerun must use the same ones)
    DIR/runs/<method>/          `gridedge train <method>` run directories (+ train_summary.json when done)
    DIR/eval/<method>.json      `gridedge evaluate` on the test days (+ oracle_curve_days.json)
    DIR/traces/<method>.npz     voltages and device power over the plot day
    DIR/results.{md,csv,json}   the table
    DIR/*.png                   learning curves, voltage envelopes, device power, feeder map

Every method goes through the same functions as `gridedge train` and `gridedge evaluate`
(`gridedge_run.commands.train_method`, `evaluate_run`, `evaluate_reference`).
The target of "time to target" is the issue's: test-day violation share <= 0.5 % and cost within 5 % of the
perfect-foresight optimum, read off the periodic evaluations (``eval_*`` columns of metrics.csv, on
`eval_days` evenly spaced test days) against the optimum on those same days.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gridedge_env.cli import json_text
from gridedge_env.core import make_sim
from gridedge_env.episodes import reset_days, select_days
from gridedge_run.commands import (
    evaluate_reference,
    evaluate_run,
    fmt_time,
    parse_assignments,
    stderr_progress,
    train_method,
)
from gridedge_run.evaluate import obs_policy
from gridedge_run.methods import REFERENCE_POLICIES, TRAIN_METHODS
from gridedge_run.rundir import atomic_write_text, load_policies

__all__ = [
    "PRESETS",
    "Preset",
    "REFERENCE_METHODS",
    "TRAINED_METHODS",
    "run_compare",
    "speedup_to_level",
    "time_to_target",
]

#: Methods trained under the budget, in table order.
TRAINED_METHODS = ("gradmap", "gradma", "ssl", "ssl-penalty", "ippo", "mappo")
#: Methods that need no training: rules and the perfect-foresight optimum.
REFERENCE_METHODS = ("noop", "price-seeking", "droop", "oracle")

TARGET_VIOLATION_SHARE = 0.005
TARGET_COST_GAP = 0.05


@dataclasses.dataclass(frozen=True)
class Preset:
    """What a comparison runs: the task, the budget per trained method and the evaluation."""

    feeder: str
    """Shipped feeder."""
    agents: int
    """Number of agents (default mix)."""
    minutes: float
    """Training wall-time budget per trained method, minutes."""
    test_days: int | None
    """Test days of the final evaluation, evenly spaced (None: all 73)."""
    eval_every: dict[str, int]
    """Periodic evaluation (learning curves) every this many iterations, per trained method."""
    curve_days: int = 8
    """Test days of the periodic evaluations (the trainers' `eval_days`)."""
    sim_seed: int = 0
    """Seed of agent placement and device parameters."""
    seed: int = 0
    """Trainer seed, the same for every method."""
    oracle_set: tuple[str, ...] = ()
    """``KEY=VALUE`` overrides of the optimum's `baselines.oracle.OracleConfig` (``gridedge evaluate --set``)."""
    device: str = "cpu"
    """torch device of every simulator, policy and trainer (``gridedge compare --device``)."""


PRESETS = {
    # a few minutes on 2 cores: small feeder, seconds of training per method; checks that everything runs
    "smoke": Preset(
        feeder="ieee13",
        agents=20,
        minutes=0.1,
        test_days=4,
        curve_days=4,
        eval_every={"gradmap": 3, "gradma": 3, "ssl": 3, "ssl-penalty": 3, "ippo": 2, "mappo": 2},
        # 300 Adam steps of the optimum (planned twice: test days and the plot day) took 7 of the
        # 9 minutes of this preset on 2 cores; 60 keep it a check that everything runs
        oracle_set=("iterations=60",),
    ),
    # the benchmark: IEEE-123, 1,000 agents, 15 minutes per method. Eight evenly spaced test days, the
    # same as the learning curves', because the optimum costs about 1.5 s per Adam step and 8 days on 2 cores
    "paper": Preset(
        feeder="ieee123",
        agents=1000,
        minutes=15.0,
        test_days=8,
        curve_days=8,
        eval_every={"gradmap": 10, "gradma": 10, "ssl": 10, "ssl-penalty": 10, "ippo": 10, "mappo": 10},
    ),
}


def _say(text: str) -> None:
    print(f"[compare] {text}", file=sys.stderr, flush=True)


def _reference_policy(method: str, preset: Preset):
    """policy_fn(sim, state) of a method that `gridedge evaluate --method` runs, with the preset's settings."""
    return REFERENCE_POLICIES[method](**_reference_config(method, preset))


def _reference_config(method: str, preset: Preset) -> dict:
    return parse_assignments(list(preset.oracle_set), "oracle_set") if method == "oracle" else {}


def _available_methods() -> tuple[set[str], set[str]]:
    return set(TRAIN_METHODS), set(REFERENCE_POLICIES)


# ----------------------------------------------------------------------------------------------------------
# stages
# ----------------------------------------------------------------------------------------------------------


def _train(method: str, preset: Preset, minutes: float, out: Path) -> dict:
    run_dir = out / "runs" / method
    done = run_dir / "train_summary.json"
    if done.is_file():
        _say(f"{method}: trained already, skipped ({done})")
        return json.loads(done.read_text())
    fields = {"minutes": minutes, "iterations": None}
    sim_options = {}
    resume = (run_dir / "checkpoint.pt").is_file()
    if resume:
        _say(f"{method}: resuming the interrupted training in {run_dir}")
    else:
        fields.update(seed=preset.seed, eval_days=preset.curve_days, eval_every=preset.eval_every.get(method, 10))
        sim_options = {"feeder": preset.feeder, "n_agents": preset.agents, "seed": preset.sim_seed}
    sim_options["device"] = preset.device
    summary = train_method(method, run_dir, sim_options=sim_options, fields=fields, resume=resume)
    atomic_write_text(json_text(summary, indent=2, default=str), done)
    return summary


def _evaluate(method: str, preset: Preset, out: Path, days: int | None, name: str | None = None) -> dict:
    path = out / "eval" / f"{name or method}.json"
    if path.is_file():
        return json.loads(path.read_text())
    if method in TRAINED_METHODS:
        result = evaluate_run(
            out / "runs" / method,
            split="test",
            days=days,
            device=preset.device,
            progress=stderr_progress("evaluate days", 1),
        )
    else:
        sim_options = {"feeder": preset.feeder, "n_agents": preset.agents, "seed": preset.sim_seed}
        sim_options["device"] = preset.device
        result = evaluate_reference(
            method,
            sim_options,
            config=_reference_config(method, preset),
            split="test",
            days=days,
            progress=stderr_progress("evaluate days", 1),
            plan_progress=stderr_progress(f"{method} plan step", 25),
        )
    atomic_write_text(json_text(result, indent=2, default=str), path)
    return result


def _policy_fn(method: str, preset: Preset, out: Path):
    if method in TRAINED_METHODS:
        policy, _ = load_policies(out / "runs" / method, device=preset.device)
        return obs_policy(policy)
    return _reference_policy(method, preset)


def _trace(method: str, preset: Preset, sim, day: int, out: Path) -> dict:
    """Voltages [T, n] and device power [T, N] of `method` over test day `day` (the evaluation's episode)."""
    path = out / "traces" / f"{method}.npz"
    if path.is_file():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    policy = _policy_fn(method, preset, out)
    state = reset_days(sim, "test", [day], 0)
    v, p = [], []
    with torch.no_grad():
        for _ in range(sim.n_steps):
            r = sim.step(state, policy(sim, state))
            state = r.state
            v.append(r.v_mag_pu[0].cpu().numpy())
            p.append(r.p_kw[0].cpu().numpy())
    trace = {"v_mag_pu": np.stack(v), "p_kw": np.stack(p), "day": np.array(day)}
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **trace)
    tmp.replace(path)
    return trace


def _learning_curve(run_dir: Path) -> dict[str, list[float]]:
    curve = {"wall_s": [], "cost": [], "violation_share": []}
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return curve
    with path.open() as f:
        for row in csv.DictReader(f):
            if row.get("eval_cost", "") not in ("", None):
                curve["wall_s"].append(float(row["wall_s"]))
                curve["cost"].append(float(row["eval_cost"]))
                curve["violation_share"].append(float(row["eval_violation_share"]))
    return curve


def _first_time(curve: dict[str, list[float]], cost: float | None, share: float) -> float | None:
    """First training wall time (s) at which the curve's cost and violation share are both at or below
    (``cost=None``: the share alone)."""
    for wall, c, v in zip(curve["wall_s"], curve["cost"], curve["violation_share"], strict=True):
        if (cost is None or c <= cost) and v <= share:
            return wall
    return None


def time_to_target(curve: dict[str, list[float]], optimum_cost: float) -> float | None:
    """First training wall time (s) at which the periodic test evaluation has violation share <= 0.5 % and
    cost within 5 % of the optimum on the same days; None if never."""
    return _first_time(curve, optimum_cost + TARGET_COST_GAP * abs(optimum_cost), TARGET_VIOLATION_SHARE)


def speedup_to_level(fast: dict[str, list[float]], slow: dict[str, list[float]]) -> dict | None:
    """How much sooner ``fast`` reaches a level of (cost, violation share) than ``slow`` (the GradMAP issue's
    speed-up: GradMA's wall time to a level over GradMAP's), at three levels read off the periodic evaluations:

    - ``at_slow_final``: ``slow``'s last evaluation. Both curves reach it (``slow`` at its end, or sooner);
      ``speedup = slow_s / fast_s``; ``fast_s`` is None if ``fast`` never reaches it.
    - ``at_fast_final``: ``fast``'s last evaluation; when ``slow`` never reaches it, ``slow_s`` and ``speedup``
      are None and ``speedup_at_least`` is ``slow``'s budget (last evaluation time) over ``fast_s``.
    - ``at_slow_final_share``: ``slow``'s last violation share, whatever the cost (``level_cost`` is None): the
      constraint alone, for runs that end at different points of the cost-violation trade-off, where
      neither of the two levels above may give a ratio.

    Each entry: ``{"level_cost", "level_violation_share", "fast_s", "slow_s", "speedup"}``. None when either
    curve has no evaluation.
    """
    if not fast["wall_s"] or not slow["wall_s"]:
        return None
    result = {}
    levels = (
        ("at_slow_final", slow["cost"][-1], slow["violation_share"][-1]),
        ("at_fast_final", fast["cost"][-1], fast["violation_share"][-1]),
        ("at_slow_final_share", None, slow["violation_share"][-1]),
    )
    for key, cost, share in levels:
        fast_s, slow_s = _first_time(fast, cost, share), _first_time(slow, cost, share)
        entry = {
            "level_cost": cost,
            "level_violation_share": share,
            "fast_s": fast_s,
            "slow_s": slow_s,
            "speedup": slow_s / fast_s if fast_s and slow_s is not None else None,
        }
        if slow_s is None and fast_s:
            entry["speedup_at_least"] = slow["wall_s"][-1] / fast_s
        result[key] = entry
    return result


# ----------------------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------------------

COLUMNS = (
    "method",
    "kind",
    "train_wall_s",
    "iterations",
    "env_steps_per_s",
    "time_to_target_s",
    "cost",
    "gap_to_optimum",
    "violation_share",
    "worst_violation_pu",
    "violation_sum_pu",
    "device_violation",
    "pf_failures",
    "n_agents",
    "days",
)


def _row(method: str, result: dict, optimum_cost: float | None, summary: dict | None, ttt: float | None) -> dict:
    kind = "trained" if method in TRAINED_METHODS else ("optimum" if method == "oracle" else "rule")
    gap = None
    if optimum_cost is not None and optimum_cost != 0:
        gap = (result["cost"] - optimum_cost) / abs(optimum_cost)
    return {
        "method": method,
        "kind": kind,
        "train_wall_s": summary.get("wall_s") if summary else None,
        "iterations": summary.get("iterations") if summary else None,
        "env_steps_per_s": summary.get("env_steps_per_s") if summary else None,
        "time_to_target_s": ttt,
        "cost": result["cost"],
        "gap_to_optimum": gap,
        "violation_share": result["violation_share"],
        "worst_violation_pu": result["worst_violation_pu"],
        "violation_sum_pu": result["violation_sum_pu"],
        "device_violation": result["device_violation"],
        "pf_failures": result["pf_failures"],
        "n_agents": result["n_agents"],
        "days": result["days"],
    }


def _fmt(value, key: str) -> str:
    if value is None:
        return "not reached" if key == "time_to_target_s" else "-"
    if key in ("violation_share", "gap_to_optimum"):
        return f"{100 * value:.2f} %"
    if key in ("train_wall_s", "time_to_target_s"):
        return f"{value / 60:.1f} min"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _write_results(out: Path, rows: list[dict], header: dict) -> None:
    atomic_write_text(json_text({**header, "results": rows}, indent=2), out / "results.json")
    tmp = out / "results.csv.tmp"
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out / "results.csv")
    lines = [
        f"# gridedge compare --preset {header['preset']}",
        "",
        f"{header['feeder']}, {header['agents']} agents, {header['minutes_per_method']:g} min of training per "
        f"method ({header['jobs']} at a time), {header['test_days']} test days; machine: {header['machine']}; "
        f"{header['date']}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [_fmt(row[k], k) if (k != "time_to_target_s" or row["kind"] == "trained") else "-" for k in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    speed = header.get("gradmap_speedup_over_gradma")
    if speed:
        lines += [
            "",
            "Speed-up of GradMAP over GradMA (GradMA's training time to a level of test cost and violation "
            "share over GradMAP's, from the periodic evaluations):",
        ]
        for key, whose in (
            ("at_slow_final", "GradMA's final level"),
            ("at_fast_final", "GradMAP's final level"),
            ("at_slow_final_share", "GradMA's final violation share at any cost"),
        ):
            e = speed[key]
            cost = f"{e['level_cost']:.4g} $/day, " if e["level_cost"] is not None else ""
            level = (
                f"- at {whose} ({cost}{100 * e['level_violation_share']:.2f} %): "
                "GradMAP "
                + (f"{e['fast_s'] / 60:.1f} min" if e["fast_s"] else "never")
                + ", GradMA "
                + (f"{e['slow_s'] / 60:.1f} min" if e["slow_s"] is not None else "never")
            )
            if e["speedup"] is not None:
                level += f": {e['speedup']:.2f}x"
            elif "speedup_at_least" in e:
                level += f": at least {e['speedup_at_least']:.2f}x"
            lines.append(level)
    if header.get("skipped"):
        lines += ["", "Not run (not available in this installation): " + ", ".join(header["skipped"])]
    lines += [
        "",
        "`env_steps_per_s`: environment steps (one feeder-wide step of one day, all agents acting) simulated "
        f"per second of training; times {header['agents']} for agent-steps per second.",
    ]
    lines += [
        "",
        "Target: violation share <= 0.5 % and cost within 5 % of the optimum (`time_to_target_s`, on the "
        f"{header['curve_days']} periodic evaluation days). Figures: learning_curves.png, "
        "voltage_envelopes.png, device_power.png, feeder_map.png.",
    ]
    atomic_write_text("\n".join(lines) + "\n", out / "results.md")


def _threads_per_method(jobs: int) -> int:
    """Torch threads of each trained method: this process's with one job, else an equal share of the cores."""
    import os

    return torch.get_num_threads() if jobs == 1 else max(1, (os.cpu_count() or 1) // jobs)


def _machine(jobs: int) -> str:
    import os
    import platform

    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {_threads_per_method(jobs)} "
        "torch thread(s) per trained method"
    )


def _plots(out: Path, sim, traces: dict, curves: dict, references: dict, preset_name: str) -> list[Path]:
    from gridedge_env.network import Feeder, load_feeder
    from gridedge_run import plots

    step_h = sim.dt_h
    title = f"{sim.config.feeder if isinstance(sim.config.feeder, str) else 'feeder'}, {sim.n_agents} agents"
    node_phase = [int(nm.rsplit(".", 1)[1]) for nm in sim.node_names]
    slices = {k: (s.start, s.stop) for k, s in sim.agent_slices.items()}
    rating = {k: float(sim.params[k].p_max_kw.sum()) for k in sim.agent_slices}
    feeder = sim.config.feeder if isinstance(sim.config.feeder, Feeder) else load_feeder(sim.config.feeder)
    bus_xy = {b.name: (b.x, b.y) for b in feeder.buses if b.x is not None and b.y is not None}
    edges = [(line.terminal1.bus, line.terminal2.bus) for line in feeder.lines]
    edges += [(t.windings[0].terminal.bus, w.terminal.bus) for t in feeder.transformers for w in t.windings[1:]]
    kinds = [name for name, s in sim.agent_slices.items() for _ in range(s.stop - s.start)]
    return [
        plots.learning_curves(
            curves, references, out / "learning_curves.png", title=f"gridedge compare --preset {preset_name}: {title}"
        ),
        plots.voltage_envelopes(
            traces,
            node_phase,
            (sim.config.v_min_pu, sim.config.v_max_pu),
            step_h,
            out / "voltage_envelopes.png",
            title=f"Per-phase voltage envelopes, test day {int(next(iter(traces.values()))['day'])}"
            f" ({title}; dashed: limits)",
        ),
        plots.device_power(
            traces,
            slices,
            rating,
            step_h,
            out / "device_power.png",
            title=f"Device power by type, normalised by total rating ({title})",
        ),
        plots.feeder_map(
            bus_xy,
            edges,
            sim.agent_bus,
            sim.agent_phase.tolist(),
            kinds,
            out / "feeder_map.png",
            title=f"{title}: agents by type (colour) and phase (marker)",
        ),
    ]


# ----------------------------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------------------------


def _set_torch_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _train_all(trained: list[str], preset: Preset, out: Path, jobs: int, announce) -> dict[str, dict]:
    """Train every method; with ``jobs > 1``, that many at a time in worker processes, each with an equal share
    of the CPU cores as torch threads (every method still gets the same wall-clock budget and resources)."""
    if jobs == 1:
        summaries = {}
        for m in trained:
            announce(f"{m}: training for {preset.minutes:g} min", preset.minutes * 60)
            summaries[m] = _train(m, preset, preset.minutes, out)
        return summaries
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = _threads_per_method(jobs)
    announce(
        f"training {', '.join(trained)}: {jobs} at a time, {threads} torch thread(s) each, "
        f"{preset.minutes:g} min per method",
        preset.minutes * 60,
    )
    # spawn, not fork: a forked child would inherit this process's torch thread pools
    with ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_set_torch_threads,
        initargs=(threads,),
    ) as pool:
        futures = {m: pool.submit(_train, m, preset, preset.minutes, out) for m in trained}
        return {m: futures[m].result() for m in trained}


def run_compare(
    preset_name: str,
    out: Path,
    minutes: float | None = None,
    methods: list[str] | None = None,
    jobs: int = 1,
    device: str = "cpu",
) -> dict:
    """Run (or continue) a comparison; returns the results dict also written to ``out/results.json``.

    ``jobs``: trained methods run this many at a time (each with ``cpu_count // jobs`` torch threads).
    ``device``: where every method trains and is evaluated (a ValueError names a device this machine lacks)."""
    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; presets: {sorted(PRESETS)}")
    from gridedge_env.core import check_device

    check_device(device)  # before anything is written
    preset = dataclasses.replace(PRESETS[preset_name], device=device)
    if minutes is not None:
        if not (minutes > 0 and math.isfinite(minutes)):
            raise ValueError(f"--minutes must be a positive number, got {minutes}")
        preset = dataclasses.replace(preset, minutes=float(minutes))
    if not (isinstance(jobs, int) and jobs >= 1):
        raise ValueError(f"--jobs must be a positive integer, got {jobs!r}")
    wanted = list(methods) if methods else list(TRAINED_METHODS + REFERENCE_METHODS)
    unknown = [m for m in wanted if m not in TRAINED_METHODS + REFERENCE_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {list(TRAINED_METHODS + REFERENCE_METHODS)}")
    trainable, evaluable = _available_methods()
    skipped = [m for m in wanted if m not in (trainable if m in TRAINED_METHODS else evaluable)]
    for m in skipped:
        _say(f"warning: {m} is not available in this installation; it is left out and listed in the results")
    trained = [m for m in TRAINED_METHODS if m in wanted and m not in skipped]
    references = [m for m in REFERENCE_METHODS if m in wanted and m not in skipped]

    out = Path(out)
    options = {"preset": preset_name, **dataclasses.asdict(preset), "methods": wanted, "jobs": jobs}
    for sub in ("runs", "eval", "traces"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    saved_path = out / "compare.json"
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text())
        if saved != json.loads(json.dumps(options)):
            raise ValueError(f"{out} holds a comparison with other options ({saved_path}); use a new --out")
    else:
        atomic_write_text(json.dumps(options, indent=2), saved_path)

    started = time.monotonic()
    n_stages = (len(trained) if jobs == 1 else min(len(trained), 1)) + len(wanted) - len(skipped)
    stage = 0

    def announce(text: str, budget_s: float) -> None:
        nonlocal stage
        stage += 1
        left = max(math.ceil(len(trained) / jobs) - (stage - 1), 0) * preset.minutes * 60
        _say(
            f"{stage}/{n_stages} {text} | elapsed {fmt_time(time.monotonic() - started)} | "
            f"training time left about {fmt_time(left)}"
        )

    summaries = _train_all(trained, preset, out, jobs, announce)

    results = {}
    optimum_curve_cost = None
    for m in trained + references:
        announce(f"{m}: evaluating on {preset.test_days or 'all'} test days", 0.0)
        results[m] = _evaluate(m, preset, out, preset.test_days)
        r = results[m]
        _say(
            f"{m}: cost {r['cost']:.4g} $/day, violation share {r['violation_share']:.3%}, "
            f"worst {r['worst_violation_pu']:.4f} pu, pf failures {r['pf_failures']}"
        )
    if "oracle" in references:
        # the same days when the counts agree (both are evenly spaced over the test split): no second plan
        optimum_curve_cost = (
            results["oracle"]["cost"]
            if preset.curve_days == preset.test_days
            else _evaluate("oracle", preset, out, preset.curve_days, name="oracle_curve_days")["cost"]
        )

    curves = {m: _learning_curve(out / "runs" / m) for m in trained}
    optimum_cost = results["oracle"]["cost"] if "oracle" in results else None
    rows = []
    for m in trained + references:
        ttt = (
            time_to_target(curves[m], optimum_curve_cost) if (m in curves and optimum_curve_cost is not None) else None
        )
        rows.append(_row(m, results[m], optimum_cost, summaries.get(m), ttt))

    sim = make_sim(feeder=preset.feeder, n_agents=preset.agents, seed=preset.sim_seed, device=preset.device)
    plot_day = int(select_days("test", preset.test_days)[0])
    _say(f"traces of test day {plot_day} and figures")
    traces = {m: _trace(m, preset, sim, plot_day, out) for m in trained + references}
    header = {
        "preset": preset_name,
        "feeder": preset.feeder,
        "agents": preset.agents,
        "minutes_per_method": preset.minutes,
        "test_days": results[next(iter(results))]["days"] if results else 0,
        "curve_days": preset.curve_days,
        "optimum_cost_curve_days": optimum_curve_cost,
        "gradmap_speedup_over_gradma": speedup_to_level(curves["gradmap"], curves["gradma"])
        if {"gradmap", "gradma"} <= set(curves)
        else None,
        "machine": _machine(jobs),
        "jobs": jobs,
        "date": time.strftime("%Y-%m-%d"),
        "skipped": skipped,
        "wall_s": time.monotonic() - started,
    }
    _write_results(out, rows, header)
    refs = {m: {"cost": results[m]["cost"], "violation_share": results[m]["violation_share"]} for m in references}
    figures = _plots(out, sim, traces, curves, refs, preset_name)
    _say(f"done in {fmt_time(time.monotonic() - started)}: {out / 'results.md'}")
    return {**header, "results": rows, "figures": [str(f) for f in figures], "out": str(out)}
