"""``gridedge tune``: the same small tuning budget for every learner, on validation days.

Every learner gets the same number of configurations (its defaults, then random draws from its search space
in `SEARCH_SPACES`), each trained for the same minutes on the same seeds of the task of a `gridedge compare`
preset, and scored on the preset's validation days (never on test days). The chosen configuration is the
cheapest whose median violation share over the seeds is at most `TARGET_VIOLATION_SHARE` (0.5 %), or, when
none is, the one with the lowest median violation share. ``gridedge compare --tuned DIR`` then trains every
method with its chosen settings.

    DIR/tune.json                    the options, and per method every configuration, its scores and the choice
    DIR/tune.{md,csv}                the search and its result as one table
    DIR/tune_snippet.md              that table as docs/gradmap.md holds it (``--snippet``)
    DIR/runs/<method>/config<i>/seed<s>/   the training runs (+ validation.json when scored; reruns skip them)

The search spaces hold every trick each learner supports that is not proximal reuse (margins, replay,
averaging, the quadratic term, normalisation, clipping, learning rate and its schedule, the BPTT window);
GradMAP's adds K and the trust region.
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import numpy as np

from gridedge_env.cli import json_text
from gridedge_run.commands import evaluate_run, train_method
from gridedge_run.compare import PRESETS, TARGET_VIOLATION_SHARE, TRAINED_METHODS, map_in_workers, provenance
from gridedge_run.rundir import atomic_write_text

__all__ = ["SEARCH_SPACES", "chosen_settings", "draw_configs", "run_tune"]

#: Tricks every gradient-based learner supports (GradMAP, GradMA, SSL, SSL-penalty; replay and averaging are
#: `gradmap_agent.replay`): field -> candidate values.
_GRADIENT_SHARED = {
    "lr": [1e-3, 3e-3, 1e-2],
    "lr_schedule": ["constant", "cosine"],
    "voltage_margin_pu": [0.005, 0.01, 0.015],
    "voltage_quadratic": [0.0, 1e7, 1e8],
    "normalize_obs": [True, False],
    "max_grad_norm": [0.5, 1.0, None],
    "init_log_std": [-5.0, -3.5, -2.0],
    "hard_scenario_share": [0.0, 0.5],
    "policy_average": [0.0, 0.99],
    # how many policies in a row a gradient passes through (1: later actions held fixed)
    "bptt_window": [1, 2, 4, 8],
}

#: method -> field -> candidate values (the fields of `gridedge train METHOD --set`).
SEARCH_SPACES: dict[str, dict[str, list]] = {
    "gradmap": {**_GRADIENT_SHARED, "reuse": [2, 4, 8], "clip_radius": [0.05, 0.1, 0.2]},
    "gradma": _GRADIENT_SHARED,
    "ssl": _GRADIENT_SHARED,
    "ssl-penalty": {**_GRADIENT_SHARED, "voltage_penalty": [1e3, 1e4, 1e5]},
    "ippo": {
        "lr": [3e-4, 1e-3, 3e-3],
        "voltage_margin_pu": [0.005, 0.01, 0.015],
        "normalize_obs": [True, False],
        "max_grad_norm": [0.5, 1.0],
        "init_log_std": [-1.0, -0.5],
    },
}
SEARCH_SPACES["mappo"] = SEARCH_SPACES["ippo"]


def draw_configs(method: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` configurations of ``method``: its defaults (``{}``), then ``n - 1`` distinct random draws from its
    search space (seeded, so every rerun draws the same)."""
    if method not in SEARCH_SPACES:
        raise ValueError(f"no search space for {method!r}; known: {sorted(SEARCH_SPACES)}")
    if n < 1:
        raise ValueError(f"--configs must be >= 1, got {n}")
    space = SEARCH_SPACES[method]
    rng = random.Random(f"{seed}:{method}")
    configs, seen = [{}], set()
    for _ in range(1000 * n):
        if len(configs) == n:
            break
        draw = {k: rng.choice(values) for k, values in space.items()}
        key = json.dumps(draw, sort_keys=True)
        if key not in seen:
            seen.add(key)
            configs.append(draw)
    return configs


def _choose(rows: list[dict]) -> int:
    """Index of the chosen configuration: the cheapest within the violation target, else the least violating."""
    within = [r for r in rows if r["violation_share"] <= TARGET_VIOLATION_SHARE]
    best = min(within, key=lambda r: r["cost"]) if within else min(rows, key=lambda r: r["violation_share"])
    return rows.index(best)


def _assignment(key: str, value) -> str:
    return f"{key}={'none' if value is None else str(value).lower() if isinstance(value, bool) else value}"


def run_tune(
    preset_name: str,
    out: Path,
    methods: list[str],
    configs: int,
    seeds: list[int],
    minutes: float,
    quiet: bool = False,
    jobs: int = 1,
) -> dict:
    """Tune ``methods`` with ``configs`` configurations x ``seeds`` x ``minutes`` each on the task of the compare
    preset ``preset_name``, ``jobs`` training runs at a time (each with ``cpu_count // jobs`` torch threads, as
    ``gridedge compare --jobs``); returns what ``out/tune.json`` holds."""
    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; presets: {sorted(PRESETS)}")
    unknown = [m for m in methods if m not in TRAINED_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {list(TRAINED_METHODS)}")
    if not minutes > 0:
        raise ValueError(f"--minutes must be a positive number, got {minutes}")
    if not (isinstance(jobs, int) and jobs >= 1):
        raise ValueError(f"--jobs must be a positive integer, got {jobs!r}")
    preset = PRESETS[preset_name]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    options = {"preset": preset_name, "methods": methods, "configs": configs, "seeds": seeds, "minutes": minutes}
    saved = out / "tune_options.json"
    if saved.is_file() and json.loads(saved.read_text()) != options:
        raise ValueError(f"{out} holds a tuning with other options ({saved}); use a new --out")
    atomic_write_text(json.dumps(options, indent=2), saved)
    result = {**options, "validation_days": preset.curve_days, **provenance(jobs), "methods_tuned": {}}
    drawn = {method: draw_configs(method, configs) for method in methods}
    calls = [
        (method, i, fields, seed, preset, minutes, out, quiet)
        for method in methods
        for i, fields in enumerate(drawn[method])
        for seed in seeds
    ]
    if jobs == 1:
        results = [_train_and_score(*call) for call in calls]
    else:
        results = map_in_workers(_train_and_score, calls, jobs)
    scored = {call[:2] + (call[3],): score for call, score in zip(calls, results, strict=True)}
    for method in methods:
        rows = []
        for i, fields in enumerate(drawn[method]):
            scores = [scored[(method, i, s)] for s in seeds]
            rows.append(
                {
                    "config": i,
                    "set": [_assignment(k, v) for k, v in fields.items()],
                    "per_seed": scores,
                    "cost": float(np.median([r["cost"] for r in scores])),
                    "violation_share": float(np.median([r["violation_share"] for r in scores])),
                    "worst_violation_pu": float(np.median([r["worst_violation_pu"] for r in scores])),
                    "iterations": float(np.median([r["iterations"] for r in scores])),
                }
            )
        chosen = _choose(rows)
        result["methods_tuned"][method] = {"configs": rows, "chosen": chosen, "set": rows[chosen]["set"]}
    atomic_write_text(json_text(result, indent=2), out / "tune.json")
    _write_tables(out, result)
    return result


def _train_and_score(
    method: str, index: int, fields: dict, seed: int, preset, minutes: float, out: Path, quiet: bool
) -> dict:
    run_dir = out / "runs" / method / f"config{index}" / f"seed{seed}"
    scored = run_dir / "validation.json"
    if scored.is_file():
        return json.loads(scored.read_text())
    if not quiet:
        print(f"[tune] {method} config {index} seed {seed}: {fields or 'defaults'}", file=sys.stderr, flush=True)
    resume = (run_dir / "checkpoint.pt").is_file()  # an interrupted tuning continues its run
    summary = train_method(
        method,
        run_dir,
        sim_options=preset.sim_options(),
        fields={**fields, "seed": seed, "minutes": minutes, "iterations": None, "eval_every": 0},
        resume=resume,
        restart=run_dir.is_dir() and not resume,
    )
    ev = evaluate_run(run_dir, split="validation", days=preset.curve_days, seed=0, device=preset.device)
    score = {k: ev[k] for k in ("cost", "violation_share", "worst_violation_pu")}
    score.update(seed=seed, iterations=summary["iterations"])
    atomic_write_text(json_text(score, indent=2), scored)
    return score


def _write_tables(out: Path, result: dict) -> None:
    """tune.md, tune_snippet.md (tune.md without its title: the block that ``--snippet`` copies) and tune.csv."""
    lines = [
        f"{result['configs']} configurations per method (config 0: the defaults), seeds "
        f"{', '.join(map(str, result['seeds']))}, {result['minutes']:g} min of training each, scored on "
        f"{result['validation_days']} validation days (median over seeds). Chosen: the cheapest configuration "
        f"with violation share <= {100 * TARGET_VIOLATION_SHARE:g} %, else the least violating. {result['date']}, "
        f"{result['machine']}, torch {result['torch']}, commit {result['commit']}.",
        "",
        "| method | config | chosen | settings | iterations | cost, $/day | violation share | worst excursion, pu |",
        "|---|---|---|---|---|---|---|---|",
    ]
    flat = []
    for method, tuned in result["methods_tuned"].items():
        for row in tuned["configs"]:
            chosen = row["config"] == tuned["chosen"]
            settings = " ".join(row["set"]) or "defaults"
            lines.append(
                f"| {method} | {row['config']} | {'yes' if chosen else ''} | {settings} | {row['iterations']:.0f} | "
                f"{row['cost']:.4g} | {100 * row['violation_share']:.3f} % | {row['worst_violation_pu']:.4f} |"
            )
            flat.append({"method": method, **{k: row[k] for k in row if k != "per_seed"}, "chosen": chosen})
    table = "\n".join(lines) + "\n"
    atomic_write_text(f"# gridedge tune --preset {result['preset']}\n\n" + table, out / "tune.md")
    atomic_write_text(table, out / "tune_snippet.md")
    tmp = out / "tune.csv.tmp"
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(flat[0]) if flat else ["method"])
        writer.writeheader()
        for row in flat:
            writer.writerow({**row, "set": " ".join(row["set"])})
    tmp.replace(out / "tune.csv")


def chosen_settings(tune_dir: Path) -> dict[str, tuple[str, ...]]:
    """method -> the chosen ``KEY=VALUE`` settings of a finished tuning (``gridedge compare --tuned DIR``)."""
    path = Path(tune_dir) / "tune.json"
    if not path.is_file():
        raise ValueError(f"--tuned: no tune.json in {tune_dir} (run gridedge tune --out {tune_dir} first)")
    tuned = json.loads(path.read_text())["methods_tuned"]
    return {method: tuple(t["set"]) for method, t in tuned.items()}
