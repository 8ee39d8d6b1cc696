"""``gridedge compare``: train every method under the same budget, evaluate everything on the same test days,
and write tables and figures.

One run directory holds it all, each stage in its own file, so an interrupted comparison continues where it
stopped (finished stages are skipped, an interrupted training resumes from its checkpoint):

    DIR/compare.json                  the preset and options (a rerun must use the same ones)
    DIR/provenance.json               date, machine, torch version and git commit of the run
    DIR/runs/<method>/seed<s>/        `gridedge train <method> --seed s` (+ train_summary.json when done)
    DIR/eval/<method>/seed<s>.json    `gridedge evaluate --seed s` on the test days
    DIR/eval/oracle/validation.json   the optimum on the validation days of the learning curves
    DIR/traces/<method>.npz           voltages and device power over the plot day (the first seed's policies)
    DIR/results.{md,csv,json}         the table: median and 95 % bootstrap interval over seeds
    DIR/results_per_seed.csv          one row per method and seed
    DIR/results_snippet.md            the table as README.md and docs/results.md hold it (``--snippet``)
    DIR/*.png                         learning curves, cost against violations, voltage envelopes, device
                                      power, feeder map

Seeds: every trained method is trained once per seed (the trainer's seed) and evaluated with the same seed for
the household draws of the test days; the rules and the optimum are deterministic given those draws, so their
spread is over the evaluation seeds alone.

Every method goes through the same functions as `gridedge train` and `gridedge evaluate`
(`gridedge_run.commands.train_method`, `evaluate_run`, `evaluate_reference`).
Test days are scored once per final policy. Everything read off the learning curves uses validation days: the
periodic evaluations (``eval_*`` columns of metrics.csv, on `eval_days` evenly spaced validation days) and the
optimum on those same days. Every trained method is evaluated on the same wall-clock grid (every
`Preset.eval_every_s` seconds of training), whatever its time per iteration. The levels are fixed before any
training: violation share <= 0.5 % and cost within `Preset.target_cost_gap` of that optimum. "Time to target"
is the first training wall time (and iteration: the number of environment gradients, one rollout and one
backward each) at which a periodic evaluation meets both; a run that never gets there is "not reached", never a
ratio of budgets. The speed-up of GradMAP over GradMA and over SSL is the ratio of those times, per seed where
both reach the target, with the median and its bootstrap interval over those seeds (`speedup`); a second table
does the same for the violation level alone (`VIOLATION_LEVEL`), which needs no optimum.
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
from gridedge_env.metrics import DEVICE_METRIC_NAMES, VIOLATION_METRICS
from gridedge_run.commands import (
    evaluate_reference,
    evaluate_run,
    fmt_time,
    parse_assignments,
    train_method,
)
from gridedge_run.evaluate import obs_policy
from gridedge_run.methods import REFERENCE_POLICIES, TRAIN_METHODS
from gridedge_run.progress import counter
from gridedge_run.rundir import atomic_write_text, load_policies
from gridedge_run.stats import CONFIDENCE, median_ci, probability_of_improvement

__all__ = [
    "PRESETS",
    "Preset",
    "REFERENCE_METHODS",
    "TRAINED_METHODS",
    "provenance",
    "run_compare",
    "snippet_parts",
    "best_so_far",
    "map_in_workers",
    "speedup",
    "target_levels",
    "time_to_target",
    "write_snippet",
]

#: Methods trained under the budget, in table order.
TRAINED_METHODS = ("gradmap", "gradma", "ssl", "ssl-penalty", "ippo", "mappo")
#: Methods that need no training: rules and the perfect-foresight optimum.
REFERENCE_METHODS = ("noop", "price-seeking", "droop", "oracle")

TARGET_VIOLATION_SHARE = 0.005
#: The violation level alone (any cost): `time_to_target` to it gives the second speed-up table.
VIOLATION_LEVEL = {"cost": math.inf, "violation_share": TARGET_VIOLATION_SHARE}
#: Methods GradMAP's speed-up is measured against: its no-reuse variant, and self-supervised learning (the
#: paper's 3-5x claim).
SPEEDUP_AGAINST = ("gradma", "ssl")


@dataclasses.dataclass(frozen=True)
class Preset:
    """What a comparison runs: the task, the budget per trained method, the seeds and the evaluation."""

    feeder: str
    """Shipped feeder."""
    agents: int
    """Number of agents (default mix)."""
    minutes: float
    """Training wall-time budget per trained method and seed, minutes."""
    test_days: int | None
    """Test days of the final evaluation, evenly spaced (None: all of the test split)."""
    eval_every_s: float
    """Periodic evaluation (learning curves) every this many seconds of training, the same for every method."""
    target_cost_gap: float = 0.30
    """Cost level of "time to target": within this fraction of the optimum's cost on the validation days."""
    curve_days: int = 8
    """Test days of the periodic evaluations (the trainers' `eval_days`)."""
    sim_seed: int = 0
    """Seed of agent placement and device parameters."""
    seeds: tuple[int, ...] = (0,)
    """Default seeds: trainer seed and evaluation seed of each repetition (``--seeds`` replaces them)."""
    methods: tuple[str, ...] = ()
    """Default methods (empty: all of `TRAINED_METHODS` and `REFERENCE_METHODS`)."""
    sim_set: tuple[str, ...] = ()
    """``KEY=VALUE`` simulator (`gridedge_env.SimConfig`) settings of the task (``gridedge train --sim-set``)."""
    oracle_set: tuple[str, ...] = ()
    """``KEY=VALUE`` overrides of the optimum's `baselines.oracle.OracleConfig` (``gridedge evaluate --set``)."""
    method_set: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    """``KEY=VALUE`` config overrides per trained method (``gridedge train --set``)."""
    device: str = "cpu"
    """torch device of every simulator, policy and trainer (``gridedge compare --device``)."""

    def sim_options(self) -> dict:
        """The `make_sim` options of the task."""
        return {
            "feeder": self.feeder,
            "n_agents": self.agents,
            "seed": self.sim_seed,
            **parse_assignments(list(self.sim_set), "sim_set"),
            "device": self.device,
        }


#: The small feasible task (IEEE-13, 1,000 agents, light load, little PV, hourly steps) on which a coordinated
#: schedule without violations exists while every rule violates (tests/test_gradmap.py's learning test).
FEASIBLE_IEEE13 = ("load_scale=0.5", "pv_kwp_per_kw=1.0", "source_v_pu=1.0", "step_minutes=60")

PRESETS = {
    # a check that everything runs, in a few minutes on 2 cores: seconds of training per method, numbers that
    # mean nothing (every method, the optimum included, is far from converged)
    "smoke": Preset(
        feeder="ieee13",
        agents=20,
        minutes=0.1,
        test_days=4,
        curve_days=4,
        eval_every_s=1.0,
        oracle_set=("iterations=60",),
    ),
    # the benchmark's story in under 10 minutes on 2 cores (with --jobs 2): the feasible IEEE-13 task, 1,000
    # agents, GradMAP against IPPO, the rules and the optimum, three seeds. GradMAP on 4 days per iteration (twice
    # the iterations of its default 8 in the same minute); the optimum 100 of the planner's L-BFGS-B iterations
    # from price-seeking with a multiplier update every 15 (tests/test_baselines.py shows 60 remove price-seeking's
    # violations on this task; with one update per 100 the plan keeps 1.2 % of node-steps outside the band)
    "quick": Preset(
        feeder="ieee13",
        agents=1000,
        minutes=1.0,
        test_days=8,
        curve_days=8,
        seeds=(0, 1, 2),
        eval_every_s=5.0,
        target_cost_gap=0.05,
        sim_set=FEASIBLE_IEEE13,
        oracle_set=("iterations=100", "inner_iterations=15", "init=price-seeking"),
        method_set={"gradmap": ("batch_days=4",)},
        methods=("gradmap", "ippo", "noop", "price-seeking", "droop", "oracle"),
    ),
    # the benchmark: IEEE-123, 1,000 agents, 15 minutes per method and seed. Eight evenly spaced test days, the
    # same as the learning curves', because every L-BFGS iteration of the optimum costs a forward and backward
    # rollout of its days
    "paper": Preset(
        feeder="ieee123",
        agents=1000,
        minutes=15.0,
        test_days=8,
        curve_days=8,
        seeds=(0, 1, 2, 3, 4),
        eval_every_s=30.0,
    ),
}


class _Say:
    """Stage messages on stderr (silent with ``--quiet``)."""

    quiet = False

    def __call__(self, text: str) -> None:
        if not self.quiet:
            print(f"[compare] {text}", file=sys.stderr, flush=True)


_say = _Say()


def _reference_config(method: str, preset: Preset) -> dict:
    return parse_assignments(list(preset.oracle_set), "oracle_set") if method == "oracle" else {}


def _available_methods() -> tuple[set[str], set[str]]:
    return set(TRAIN_METHODS), set(REFERENCE_POLICIES)


# ----------------------------------------------------------------------------------------------------------
# stages
# ----------------------------------------------------------------------------------------------------------


def _run_dir(out: Path, method: str, seed: int) -> Path:
    return out / "runs" / method / f"seed{seed}"


def _train(method: str, seed: int, preset: Preset, out: Path, show: bool) -> dict:
    run_dir = _run_dir(out, method, seed)
    done = run_dir / "train_summary.json"
    if done.is_file():
        _say(f"{method} seed {seed}: trained already, skipped ({done})")
        return json.loads(done.read_text())
    fields = {"minutes": preset.minutes, "iterations": None}
    sim_options = {}
    resume = (run_dir / "checkpoint.pt").is_file()
    if resume:
        _say(f"{method} seed {seed}: resuming the interrupted training in {run_dir}")
    else:
        fields.update(parse_assignments(list(preset.method_set.get(method, ())), f"method_set[{method}]"))
        fields.update(seed=seed, eval_days=preset.curve_days, eval_every=0, eval_every_s=preset.eval_every_s)
        sim_options = preset.sim_options()
    sim_options["device"] = preset.device  # a resumed run may move to another device
    summary = train_method(
        method,
        run_dir,
        sim_options=sim_options,
        fields=fields,
        resume=resume,
        show_bar=show,
        label=f"{method} seed {seed}",
    )
    atomic_write_text(json_text(summary, indent=2, default=str), done)
    return summary


def _evaluate(
    method: str, seed: int, preset: Preset, out: Path, days: int | None, show: bool, split: str = "test"
) -> dict:
    path = out / "eval" / method / (f"seed{seed}.json" if split == "test" else f"{split}.json")
    if path.is_file():
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    progress = counter(f"{method} seed {seed} evaluate", show, unit="day")
    if method in TRAINED_METHODS:
        result = evaluate_run(
            _run_dir(out, method, seed), split=split, days=days, seed=seed, device=preset.device, progress=progress
        )
    else:
        result = evaluate_reference(
            method,
            preset.sim_options(),
            config=_reference_config(method, preset),
            split=split,
            days=days,
            seed=seed,
            progress=progress,
            plan_progress=counter(f"{method} seed {seed} plan", show, unit="step"),
        )
    atomic_write_text(json_text(result, indent=2, default=str), path)
    return result


def _policy_fn(method: str, seed: int, preset: Preset, out: Path, show: bool):
    if method in TRAINED_METHODS:
        policy, _ = load_policies(_run_dir(out, method, seed), device=preset.device)
        return obs_policy(policy)
    return REFERENCE_POLICIES[method](
        progress=counter(f"{method} plan", show, unit="step"), **_reference_config(method, preset)
    )


def _trace(method: str, seed: int, preset: Preset, sim, day: int, out: Path, show: bool) -> dict:
    """Voltages [T, n] and device power [T, N] of `method` over test day `day` (the evaluation's episode of
    ``seed``), and the day's price [T]."""
    path = out / "traces" / f"{method}.npz"
    if path.is_file():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    policy = _policy_fn(method, seed, preset, out, show)
    state = reset_days(sim, "test", [day], seed)
    price = state.price_per_kwh[0].cpu().numpy()
    v, p = [], []
    with torch.no_grad():
        for _ in range(sim.n_steps):
            r = sim.step(state, policy(sim, state))
            state = r.state
            v.append(r.v_mag_pu[0].cpu().numpy())
            p.append(r.p_kw[0].cpu().numpy())
    trace = {"v_mag_pu": np.stack(v), "p_kw": np.stack(p), "price_per_kwh": price, "day": np.array(day)}
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **trace)
    tmp.replace(path)
    return trace


def _learning_curve(run_dir: Path) -> dict[str, list[float]]:
    curve = {"wall_s": [], "iteration": [], "cost": [], "violation_share": []}
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return curve
    with path.open() as f:
        for row in csv.DictReader(f):
            if row.get("eval_cost", "") not in ("", None):
                curve["wall_s"].append(float(row["wall_s"]))
                curve["iteration"].append(int(row["iteration"]))
                curve["cost"].append(float(row["eval_cost"]))
                curve["violation_share"].append(float(row["eval_violation_share"]))
    return curve


def _first(curve: dict[str, list[float]], cost: float, share: float) -> int | None:
    """Index of the curve's first evaluation whose cost and violation share are both at or below the level."""
    for i, (c, v) in enumerate(zip(curve["cost"], curve["violation_share"], strict=True)):
        if c <= cost and v <= share:
            return i
    return None


def target_levels(optimum_cost: float, cost_gap: float) -> dict[str, float]:
    """The levels of "time to target", fixed before training: violation share <= 0.5 % and cost within
    ``cost_gap`` of the optimum's cost on the validation days of the periodic evaluations."""
    return {"cost": optimum_cost + cost_gap * abs(optimum_cost), "violation_share": TARGET_VIOLATION_SHARE}


def time_to_target(curve: dict[str, list[float]], levels: dict[str, float]) -> dict[str, float | None]:
    """``{"wall_s", "iteration"}`` of the first periodic evaluation (validation days) at or below both
    `target_levels`: training wall time and number of iterations (environment gradients); None if never
    ("not reached")."""
    i = _first(curve, levels["cost"], levels["violation_share"])
    if i is None:
        return {"wall_s": None, "iteration": None}
    return {"wall_s": curve["wall_s"][i], "iteration": curve["iteration"][i]}


def best_so_far(curve: dict[str, list[float]], grid_s) -> dict[str, list[float | None]]:
    """The curve's best cost and best violation share among the evaluations at or before each time of
    ``grid_s`` (None before the first), each metric on its own: the curves every method shares a time grid on."""
    out: dict[str, list[float | None]] = {"wall_s": [float(g) for g in grid_s], "cost": [], "violation_share": []}
    for key in ("cost", "violation_share"):
        best = None
        i = 0
        for g in grid_s:
            while i < len(curve["wall_s"]) and curve["wall_s"][i] <= g:
                best = curve[key][i] if best is None else min(best, curve[key][i])
                i += 1
            out[key].append(best)
    return out


def speedup(fast: dict[int, dict], slow: dict[int, dict]) -> dict:
    """How many times sooner ``fast`` reaches the target than ``slow``, per seed (``fast``, ``slow``: seed ->
    `time_to_target`), in training wall time and in iterations (environment gradients), and the median with its
    95 % bootstrap interval over the seeds where both reach it. A seed where either never does has its ratio
    None ("not reached"): a budget is never turned into a ratio."""
    per_seed = []
    for seed in sorted(fast.keys() & slow.keys()):
        f, w = fast[seed], slow[seed]
        row = {"seed": seed, "fast_s": f["wall_s"], "slow_s": w["wall_s"]}
        row.update({"fast_iterations": f["iteration"], "slow_iterations": w["iteration"]})
        both = f["wall_s"] is not None and w["wall_s"] is not None
        row["wall"] = w["wall_s"] / f["wall_s"] if both and f["wall_s"] > 0 else None
        row["gradients"] = w["iteration"] / f["iteration"] if both and f["iteration"] > 0 else None
        per_seed.append(row)
    out = {"per_seed": per_seed}
    for key in ("wall", "gradients"):
        values = [r[key] for r in per_seed if r[key] is not None]
        mid, lo, hi = median_ci(values)
        out[key] = {
            "median": None if not values else mid,
            "ci": None if lo is None else [lo, hi],
            "seeds_reached": len(values),
        }
    return out


# ----------------------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------------------

#: Per-seed metrics summarised over seeds (median and 95 % bootstrap interval), lower is better for each.
METRICS = (
    "cost",
    "violation_share",
    "worst_violation_pu",
    *VIOLATION_METRICS.values(),
    "time_to_target_s",
    "iterations_to_target",
)
#: Per-seed metrics where a run may never get there (None, "not reached").
TO_TARGET = ("time_to_target_s", "iterations_to_target")
#: Headings of `METRICS` in results.md.
HEADINGS = {
    "cost": "cost, $/day",
    "violation_share": "violation share",
    "worst_violation_pu": "worst excursion, pu",
    "battery_undelivered_kwh": "battery undelivered, kWh/day",
    "heatpump_comfort_k_steps": "heat-pump comfort, K-steps/day",
    "generator_undelivered_kwh": "generator undelivered, kWh/day",
    "time_to_target_s": "time to target",
    "iterations_to_target": "environment gradients to target",
}
#: The evaluation's metrics kept per seed.
EVAL_COLUMNS = (
    "cost",
    "violation_share",
    "worst_violation_pu",
    "violation_sum_pu",
    *DEVICE_METRIC_NAMES,
    "pf_failures",
    "n_agents",
    "days",
)
PER_SEED_COLUMNS = ("method", "kind", "seed", "train_wall_s", "iterations", "env_steps_per_s", *TO_TARGET)
PER_SEED_COLUMNS += EVAL_COLUMNS


def _kind(method: str) -> str:
    return "trained" if method in TRAINED_METHODS else ("optimum" if method == "oracle" else "rule")


def _per_seed_row(method: str, seed: int, result: dict, summary: dict | None, ttt: dict | None) -> dict:
    return {
        "method": method,
        "kind": _kind(method),
        "seed": seed,
        "train_wall_s": summary.get("wall_s") if summary else None,
        "iterations": summary.get("iterations") if summary else None,
        "env_steps_per_s": summary.get("env_steps_per_s") if summary else None,
        "time_to_target_s": ttt["wall_s"] if ttt else None,
        "iterations_to_target": ttt["iteration"] if ttt else None,
        **{k: result[k] for k in EVAL_COLUMNS},
    }


def _summary_row(method: str, rows: list[dict]) -> dict:
    """Median and 95 % bootstrap interval over seeds of every metric in `METRICS`. Time to target: a run that
    never reaches the target counts as later than every run that does (median inf when most never do); the
    interval only when every run reaches it."""
    out = {"method": method, "kind": _kind(method), "seeds": [r["seed"] for r in rows]}
    for key in METRICS:
        if key in TO_TARGET:
            if method not in TRAINED_METHODS:
                continue
            values = [math.inf if r[key] is None else r[key] for r in rows]
            out["reached_target"] = sum(v != math.inf for v in values)
            if out["reached_target"] < len(values):
                out[key] = float(np.median(values))
                out[f"{key}_ci"] = None
                continue
        else:
            values = [r[key] for r in rows]
        mid, lo, hi = median_ci(values)
        out[key], out[f"{key}_ci"] = mid, (None if lo is None else [lo, hi])
    out["train_wall_s"] = float(np.median([r["train_wall_s"] for r in rows])) if rows[0]["train_wall_s"] else None
    out["iterations"] = float(np.median([r["iterations"] for r in rows])) if rows[0]["iterations"] else None
    out["pf_failures"] = int(sum(r["pf_failures"] for r in rows))
    return out


def _improvement(per_seed: dict[str, list[dict]], learner: str = "gradmap") -> dict[str, dict]:
    """P(a run of ``learner`` scores lower than a run of each other method), on violation share and on cost."""
    if learner not in per_seed:
        return {}
    mine = per_seed[learner]
    result = {}
    for other, rows in per_seed.items():
        if other == learner:
            continue
        result[other] = {}
        for key in ("violation_share", "cost"):
            p, lo, hi = probability_of_improvement([r[key] for r in mine], [r[key] for r in rows])
            result[other][key] = {"p": p, "ci": None if lo is None else [lo, hi]}
    return result


def _fmt(value, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == math.inf:
        return "not reached"
    if key == "violation_share":
        return f"{100 * value:.2f} %"
    if key in ("train_wall_s", "time_to_target_s"):
        return f"{value / 60:.1f} min"
    if key == "probability":
        return f"{value:.2f}"
    if isinstance(value, float):
        return "0" if abs(value) < 1e-12 else f"{value:.4g}"  # float noise of an exact zero is no number
    return str(value)


def _cell(row: dict, key: str) -> str:
    if key not in row:
        return "-"
    text = _fmt(row[key], key)
    ci = row.get(f"{key}_ci")
    if ci is not None:
        text += f" [{_fmt(ci[0], key)}, {_fmt(ci[1], key)}]"
    if key in TO_TARGET and row.get("reached_target", 0) < len(row["seeds"]):
        text += f" ({row['reached_target']}/{len(row['seeds'])} seeds)"
    return text


def provenance(jobs: int = 1) -> dict:
    """What the numbers depend on: the date and time (UTC), the machine, the torch version and the git commit
    of the code (``-dirty`` with uncommitted changes; "unknown" outside a git checkout)."""
    import os
    import platform
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        commit += "-dirty" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {_threads_per_method(jobs)} torch thread(s) "
        "per trained method",
        "torch": torch.__version__,
        "commit": commit,
    }


def _run_provenance(out: Path, jobs: int) -> dict:
    """`provenance` of the comparison in ``out``: as of its first start, with the commit of every later start
    whose code differed appended (``a + b``: the run was continued, or its tables regenerated, with other code)."""
    path = out / "provenance.json"
    now = provenance(jobs)
    if not path.is_file():
        atomic_write_text(json_text(now, indent=2), path)
        return now
    saved = json.loads(path.read_text())
    commits = saved["commit"].split(" + ")
    if now["commit"] not in commits:
        saved["commit"] = " + ".join([*commits, now["commit"]])
        atomic_write_text(json_text(saved, indent=2), path)
    return saved


def _stamp(header: dict) -> str:
    methods = f" --methods {' '.join(header['methods'])}" if header.get("methods") else ""
    return (
        f"{header['date']} | {header['machine']} | torch {header['torch']} | commit {header['commit']} | "
        f"gridedge compare --preset {header['preset']} --seeds {','.join(map(str, header['seeds']))}{methods}"
    )


def _table(summary: list[dict], improvement: dict, header: dict) -> list[str]:
    """The Markdown table, the probability of improvement and GradMAP's speed-ups (what README.md,
    docs/results.md and docs/gradmap.md hold)."""
    n = len(header["seeds"])
    task = f" ({', '.join(header['sim_set'])})" if header["sim_set"] else ""
    lines = [
        f"{header['feeder']}{task}, {header['agents']} agents, {header['minutes_per_method']:g} min of training per "
        f"method and seed, {n} seed(s) ({', '.join(map(str, header['seeds']))}), {header['test_days']} test "
        f"days per seed. Median over seeds [{100 * CONFIDENCE:.0f} % bootstrap interval].",
        "",
        "| method | training iterations | " + " | ".join(HEADINGS[k] for k in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for row in summary:
        iterations = f"{row['iterations']:.0f}" if row["iterations"] else "-"
        lines.append(f"| {row['method']} | {iterations} | " + " | ".join(_cell(row, k) for k in METRICS) + " |")
    if improvement:
        lines += [
            "",
            "Probability that a GradMAP run beats a run of each method [95 % bootstrap interval]:",
            "",
            "| against | lower violation share | lower cost |",
            "|---|---|---|",
        ]
        for other, p in improvement.items():
            cells = [
                _fmt(p[k]["p"], "probability") + (f" [{p[k]['ci'][0]:.2f}, {p[k]['ci'][1]:.2f}]" if p[k]["ci"] else "")
                for k in ("violation_share", "cost")
            ]
            lines.append(f"| {other} | " + " | ".join(cells) + " |")
    lines += _speedup_lines(header.get("speedup") or {}, "the target")
    lines += _speedup_lines(
        header.get("speedup_violation_level") or {},
        f"the violation level alone, a violation share of at most {100 * TARGET_VIOLATION_SHARE:g} % whatever the cost",
    )
    lines += [
        "",
        f"Generated by `{_stamp(header).split(' | ')[-1]}`: {header['date']}, {header['machine']}, "
        f"torch {header['torch']}, commit {header['commit']}.",
    ]
    return lines


def _write_results(
    out: Path, summary: list[dict], per_seed: dict[str, list[dict]], improvement: dict, header: dict
) -> str:
    """results.json, results.csv (summary), results_per_seed.csv, results.md and results_snippet.md; returns
    the snippet."""
    atomic_write_text(
        json_text(
            {**header, "results": summary, "per_seed": per_seed, "probability_of_improvement": improvement}, indent=2
        ),
        out / "results.json",
    )
    columns = (
        ["method", "kind", "seeds"]
        + [c for k in METRICS for c in (k, f"{k}_lo", f"{k}_hi")]
        + ["reached_target", "train_wall_s", "iterations", "pf_failures", "date", "machine", "torch", "commit"]
    )
    for name, rows, fields in (
        ("results.csv", summary, columns),
        (
            "results_per_seed.csv",
            [r for rs in per_seed.values() for r in rs],
            list(PER_SEED_COLUMNS) + ["date", "machine", "torch", "commit"],
        ),
    ):
        tmp = out / f"{name}.tmp"
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                flat = {**row, **{k: header[k] for k in ("date", "machine", "torch", "commit")}}
                if "seeds" in flat:
                    flat["seeds"] = " ".join(map(str, flat["seeds"]))
                for k in METRICS:
                    ci = row.get(f"{k}_ci")
                    flat[f"{k}_lo"], flat[f"{k}_hi"] = ci if ci else (None, None)
                writer.writerow(flat)
        tmp.replace(out / name)
    table = _table(summary, improvement, header)
    snippet = "\n".join(table) + "\n"
    atomic_write_text(snippet, out / "results_snippet.md")
    lines = [f"# gridedge compare --preset {header['preset']}", "", *table]
    if header.get("skipped"):
        lines += ["", "Not run (not available in this installation): " + ", ".join(header["skipped"])]
    lines += [
        "",
        f"Trained methods: {header['jobs']} trained at a time. Per-seed numbers: results_per_seed.csv.",
        f"Target: violation share <= 0.5 % and cost within {100 * header['target_cost_gap']:g} % of the optimum "
        f"(`time to target`: training wall time and environment gradients, on the {header['curve_days']} "
        f"validation days of the periodic evaluations, every {header['eval_every_s']:g} s of training for every "
        "method; 'not reached' when a run never gets there). Worst excursion: the largest distance "
        "of a node voltage outside 0.95-1.05 pu. Device violation: the devices' own constraint violations "
        "(comfort, state of charge), per agent-step.",
        "Figures: learning_curves.png, cost_vs_violation.png, voltage_envelopes.png, device_power.png, feeder_map.png.",
    ]
    atomic_write_text("\n".join(lines) + "\n", out / "results.md")
    return snippet


def _speedup_lines(speedups: dict[str, dict], level: str) -> list[str]:
    """A speed-up table: GradMAP over each method of `SPEEDUP_AGAINST` to ``level`` (its description), per seed
    and as the median."""
    if not speedups:
        return []
    lines = [
        "",
        f"Speed-up of GradMAP to {level} (the other method's time over GradMAP's; 'not reached' names the run "
        "that never got there), in training wall time and in environment gradients:",
        "",
        "| against | seed | GradMAP | other | wall-clock speed-up | gradient speed-up |",
        "|---|---|---|---|---|---|",
    ]

    def when(seconds, iterations) -> str:
        return "not reached" if seconds is None else f"{seconds / 60:.1f} min, {iterations} gradients"

    for other, result in speedups.items():
        for r in result["per_seed"]:
            cells = [when(r["fast_s"], r["fast_iterations"]), when(r["slow_s"], r["slow_iterations"])]
            cells += [_ratio(r["wall"]), _ratio(r["gradients"])]
            lines.append(f"| {other} | {r['seed']} | " + " | ".join(cells) + " |")
        median = [
            _ratio(result[k]["median"])
            + (f" [{_ratio(result[k]['ci'][0])}, {_ratio(result[k]['ci'][1])}]" if result[k]["ci"] else "")
            + f" ({result[k]['seeds_reached']}/{len(result['per_seed'])} seeds)"
            for k in ("wall", "gradients")
        ]
        lines.append(f"| {other} | median [95 % interval] | | | " + " | ".join(median) + " |")
    return lines


def _ratio(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.2f}x"


def snippet_parts(path: Path, name: str) -> tuple[str, str]:
    """The text of ``path`` before the line ``<!-- results:NAME:begin -->`` (included) and after the line
    ``<!-- results:NAME:end -->`` (included); an error names the file when the markers are missing or out of
    order (checked before a long run starts, so that it is not lost to a typo). ``gridedge compare`` names its
    tables by preset (``paper``), ``gridedge tune`` by ``tune-`` and the preset."""
    path = Path(path)
    begin, end = f"<!-- results:{name}:begin -->", f"<!-- results:{name}:end -->"
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"--snippet: cannot read {path}: {exc.strerror}") from None
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"{path} needs one {begin} line followed by one {end} line around the results table")
    before, rest = text.split(begin)
    return before + begin + "\n", end + rest.split(end)[1]


def write_snippet(snippet: str, path: Path, name: str) -> None:
    """Replace the table between the ``results:NAME`` markers of ``path`` (README.md, docs/results.md,
    docs/gradmap.md) with ``snippet``, a run's results_snippet.md or tune_snippet.md."""
    before, after = snippet_parts(path, name)
    atomic_write_text(before + snippet + after, path)


def _grid(preset: Preset) -> list[float]:
    """The common time grid of the best-so-far curves: every `eval_every_s` seconds up to the budget."""
    return [preset.eval_every_s * k for k in range(1, int(60.0 * preset.minutes / preset.eval_every_s) + 1)]


def _threads_per_method(jobs: int) -> int:
    """Torch threads of each trained method: this process's with one job, else an equal share of the cores."""
    import os

    return torch.get_num_threads() if jobs == 1 else max(1, (os.cpu_count() or 1) // jobs)


def _plots(
    out: Path, sim, traces: dict, curves: dict, validation: dict[str, dict], per_seed: dict, header: dict
) -> list[Path]:
    from gridedge_env.network import Feeder, load_feeder
    from gridedge_run import plots

    stamp = _stamp(header)
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
    day = int(next(iter(traces.values()))["day"]) if traces else None
    envelope = {m: traces[m] for m in ("gradmap", "noop", "oracle") if m in traces} or traces
    figures = [
        plots.learning_curves(
            curves,
            validation,
            out / "learning_curves.png",
            title=f"gridedge compare --preset {header['preset']}: {title}",
            stamp=stamp,
        ),
        plots.cost_vs_violation(
            per_seed,
            out / "cost_vs_violation.png",
            title=f"Test cost against voltage violations, one marker per method and seed ({title})",
            stamp=stamp,
        ),
    ]
    if traces:
        figures += [
            plots.voltage_envelopes(
                envelope,
                node_phase,
                (sim.config.v_min_pu, sim.config.v_max_pu),
                step_h,
                out / "voltage_envelopes.png",
                title=f"Per-phase voltage envelopes, test day {day} ({title}; dashed: limits)",
                stamp=stamp,
            ),
            plots.device_power(
                traces,
                slices,
                rating,
                step_h,
                out / "device_power.png",
                title=f"Device power by type, normalised by total rating, and the price, test day {day} ({title})",
                stamp=stamp,
            ),
        ]
    figures.append(
        plots.feeder_map(
            bus_xy,
            edges,
            sim.agent_bus,
            sim.agent_phase.tolist(),
            kinds,
            out / "feeder_map.png",
            title=f"{title}: agents by type (colour) and phase (marker)",
            stamp=stamp,
        )
    )
    return figures


# ----------------------------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------------------------


def _set_torch_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def map_in_workers(fn, calls: list[tuple], jobs: int) -> list:
    """``[fn(*args) for args in calls]``, ``jobs`` calls at a time in spawned worker processes that each get an equal
    share of the CPU cores as torch threads (every run keeps the same wall-clock budget and resources). ``fn`` must
    be a module-level function; results come back in the order of ``calls``."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: a forked child would inherit this process's torch thread pools
    with ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_set_torch_threads,
        initargs=(_threads_per_method(jobs),),
    ) as pool:
        futures = [pool.submit(fn, *args) for args in calls]
        return [f.result() for f in futures]


def _train_all(
    trained: list[str], seeds: list[int], preset: Preset, out: Path, jobs: int, show: bool, announce
) -> dict[tuple[str, int], dict]:
    """Train every method once per seed; with ``jobs > 1``, that many at a time in worker processes
    (`map_in_workers`), without progress bars."""
    runs = [(m, s) for s in seeds for m in trained]
    if jobs == 1:
        summaries = {}
        for i, (m, s) in enumerate(runs):
            announce(f"{m} seed {s}: training for {preset.minutes:g} min", len(runs) - i)
            summaries[(m, s)] = _train(m, s, preset, out, show)
        return summaries
    announce(
        f"training {len(runs)} runs ({', '.join(trained)} x seeds {seeds}): {jobs} at a time, "
        f"{_threads_per_method(jobs)} torch thread(s) each, {preset.minutes:g} min per run",
        len(runs),
    )
    results = map_in_workers(_train, [(m, s, preset, out, False) for m, s in runs], jobs)
    return dict(zip(runs, results, strict=True))


def _evaluate_all(
    evaluations: list[tuple[str, int, int | None, str]], preset: Preset, out: Path, jobs: int, show: bool, announce
) -> dict[tuple[str, int, str], dict]:
    """Evaluate every ``(method, seed, days, split)``; with ``jobs > 1``, that many at a time in worker processes
    (`map_in_workers`: the optimum's plans dominate and run in parallel over seeds), without progress bars."""
    if jobs == 1:
        done = {}
        for m, s, days, split in evaluations:
            what = f"{m} seed {s}" if split == "test" else m
            announce(f"{what}: evaluating on {days or 'all'} {split} days")
            done[(m, s, split)] = _evaluate(m, s, preset, out, days, show, split)
        return done
    announce(f"evaluating {len(evaluations)} methods and seeds on their days: {jobs} at a time")
    evaluations = sorted(evaluations, key=lambda e: e[0] != "oracle")  # the longest first: the workers finish together
    calls = [(m, s, preset, out, days, False, split) for m, s, days, split in evaluations]
    results = map_in_workers(_evaluate, calls, jobs)
    return {(m, s, split): r for (m, s, _, split), r in zip(evaluations, results, strict=True)}


def run_compare(
    preset_name: str,
    out: Path,
    minutes: float | None = None,
    methods: list[str] | None = None,
    jobs: int = 1,
    seeds: list[int] | None = None,
    show: bool = False,
    quiet: bool = False,
    device: str = "cpu",
    tuned: dict[str, tuple[str, ...]] | None = None,
) -> dict:
    """Run (or continue) a comparison; returns the results dict also written to ``out/results.json``.

    Args:
        preset_name: A key of `PRESETS`.
        out: The comparison directory (rerun with the same options to continue it).
        minutes: Training budget per method and seed (default: the preset's).
        methods: A subset of the methods (default: the preset's).
        jobs: Runs trained, then methods and seeds evaluated, at a time (each with ``cpu_count // jobs`` torch
            threads).
        seeds: Seeds (default: the preset's); every trained method is trained once per seed.
        show: Draw progress bars on stderr (`gridedge_run.progress.show_progress`).
        quiet: No stage messages on stderr either.
        device: Where every method trains and is evaluated (a ValueError names a device this machine lacks).
        tuned: method -> ``KEY=VALUE`` settings chosen by ``gridedge tune`` (`gridedge_run.tune.chosen_settings`),
            applied after the preset's own.
    """
    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; presets: {sorted(PRESETS)}")
    from gridedge_env.core import check_device

    check_device(device)  # before anything is written
    preset = dataclasses.replace(PRESETS[preset_name], device=device)
    if tuned:
        merged = {m: (*preset.method_set.get(m, ()), *tuned.get(m, ())) for m in {*preset.method_set, *tuned}}
        preset = dataclasses.replace(preset, method_set=merged)
    if minutes is not None:
        if not (minutes > 0 and math.isfinite(minutes)):
            raise ValueError(f"--minutes must be a positive number, got {minutes}")
        preset = dataclasses.replace(preset, minutes=float(minutes))
    if not (isinstance(jobs, int) and jobs >= 1):
        raise ValueError(f"--jobs must be a positive integer, got {jobs!r}")
    seeds = sorted(set(seeds)) if seeds else list(preset.seeds)
    if any(not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"--seeds must be non-negative integers, got {seeds}")
    _say.quiet = quiet
    default_methods = list(preset.methods or TRAINED_METHODS + REFERENCE_METHODS)
    wanted = list(methods) if methods else default_methods
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
    options = {"preset": preset_name, **dataclasses.asdict(preset), "methods": wanted, "jobs": jobs, "seeds": seeds}
    for sub in ("runs", "eval", "traces"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    saved_path = out / "compare.json"
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text())
        if saved != json.loads(json.dumps(options)):
            raise ValueError(f"{out} holds a comparison with other options ({saved_path}); use a new --out")
    else:
        atomic_write_text(json.dumps(options, indent=2), saved_path)

    run_provenance = _run_provenance(out, jobs)
    started = time.monotonic()
    n_train = len(trained) * len(seeds)
    n_evaluations = len(seeds) * (len(trained) + len(references)) + (len(references) if trained else 0)
    n_stages = (n_train if jobs == 1 else min(n_train, 1)) + (n_evaluations if jobs == 1 else 1)
    stage = 0

    def announce(text: str, runs_to_train: int = 0) -> None:
        """A stage message; ``runs_to_train``: trained runs not yet finished, this stage's included."""
        nonlocal stage
        stage += 1
        left = math.ceil(runs_to_train / jobs) * preset.minutes * 60
        _say(
            f"{stage}/{n_stages} {text} | elapsed {fmt_time(time.monotonic() - started)} | "
            f"training time left about {fmt_time(left)}"
        )

    summaries = _train_all(trained, seeds, preset, out, jobs, show, announce)

    # the references also on the days of the learning curves: the periodic evaluations' validation days and
    # household draws (evaluation seed 0)
    evaluations = [(m, s, preset.test_days, "test") for s in seeds for m in trained + references]
    if trained:
        evaluations += [(m, 0, preset.curve_days, "validation") for m in references]
    done = _evaluate_all(evaluations, preset, out, jobs, show, announce)
    results = {(m, s): done[(m, s, split)] for m, s, _, split in evaluations if split == "test"}
    for (m, s), r in results.items():
        _say(
            f"{m} seed {s}: cost {r['cost']:.4g} $/day, violation share {r['violation_share']:.3%}, "
            f"worst {r['worst_violation_pu']:.4f} pu, pf failures {r['pf_failures']}"
        )
    validation = {m: done[(m, s, split)] for m, s, _, split in evaluations if split == "validation"}
    optimum_curve_cost = validation["oracle"]["cost"] if "oracle" in validation else None
    levels = target_levels(optimum_curve_cost, preset.target_cost_gap) if optimum_curve_cost is not None else None

    curves = {m: {s: _learning_curve(_run_dir(out, m, s)) for s in seeds} for m in trained}
    per_seed = {}
    for m in trained + references:
        per_seed[m] = [
            _per_seed_row(
                m,
                s,
                results[(m, s)],
                summaries.get((m, s)),
                time_to_target(curves[m][s], levels) if m in curves and levels is not None else None,
            )
            for s in seeds
        ]
    summary = [_summary_row(m, per_seed[m]) for m in trained + references]

    def speedups_to(level: dict[str, float]) -> dict[str, dict]:
        """GradMAP's `speedup` to ``level`` over each method of `SPEEDUP_AGAINST` that was trained."""
        times = {m: {s: time_to_target(curves[m][s], level) for s in seeds} for m in curves}
        return {
            other: speedup(times["gradmap"], times[other])
            for other in SPEEDUP_AGAINST
            if {"gradmap", other} <= set(curves)
        }

    improvement = _improvement(per_seed)

    sim = make_sim(**preset.sim_options())
    plot_day = int(select_days("test", preset.test_days)[0])
    _say(f"traces of test day {plot_day} (seed {seeds[0]}) and figures")
    traces = {m: _trace(m, seeds[0], preset, sim, plot_day, out, show) for m in trained + references}
    header = {
        "preset": preset_name,
        "methods": None if wanted == default_methods else wanted,  # --methods, where not the preset's
        "feeder": preset.feeder,
        "agents": preset.agents,
        "sim_set": list(preset.sim_set),
        "minutes_per_method": preset.minutes,
        "seeds": seeds,
        "test_days": results[next(iter(results))]["days"] if results else 0,
        "curve_days": preset.curve_days,
        "optimum_cost_validation_days": optimum_curve_cost,
        "target_cost_gap": preset.target_cost_gap,
        "eval_every_s": preset.eval_every_s,
        "target_levels": levels,
        "speedup": speedups_to(levels) if levels is not None else {},
        # the same on the violation level alone, which needs no optimum: where nobody reaches the cost level
        # it still shows which method gets its violations down first
        "speedup_violation_level": speedups_to(VIOLATION_LEVEL),
        "best_so_far": {m: {s: best_so_far(curves[m][s], _grid(preset)) for s in seeds} for m in trained},
        **run_provenance,
        "jobs": jobs,
        "skipped": skipped,
        "wall_s": time.monotonic() - started,
    }
    snippet = _write_results(out, summary, per_seed, improvement, header)
    figures = _plots(out, sim, traces, curves, validation, per_seed, header)
    _say(f"done in {fmt_time(time.monotonic() - started)}: {out / 'results.md'}")
    return {
        **header,
        "results": summary,
        "per_seed": per_seed,
        "probability_of_improvement": improvement,
        "snippet": snippet,
        "figures": [str(f) for f in figures],
        "out": str(out),
    }
