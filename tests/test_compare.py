"""`gridedge compare`: the smoke preset writes every file with every method in the table and resumes (integration
tier); argument errors, the statistics over seeds, the snippet, and the time-to-target and speed-up arithmetic
(default suite)."""

from __future__ import annotations

import csv
import io
import json
import sys
import time

import numpy as np
import pytest

from gradmap_agent.config import RunConfig
from gridedge_run.cli import main
from gridedge_run.compare import (
    PRESETS,
    REFERENCE_METHODS,
    TARGET_VIOLATION_SHARE,
    TRAINED_METHODS,
    VIOLATION_LEVEL,
    best_so_far,
    speedup,
    target_levels,
    time_to_target,
    write_snippet,
)
from gridedge_run.loop import _evaluation_due
from gridedge_run.progress import show_progress
from gridedge_run.stats import median_ci, probability_of_improvement, seed_list


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "smoke"
    start = time.monotonic()
    assert main(["compare", "--preset", "smoke", "--seeds", "0,1", "--out", str(out), "--json"]) == 0
    return out, time.monotonic() - start


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_smoke_writes_every_file(smoke_dir):
    out, _ = smoke_dir
    for name in (
        "results.md",
        "results.csv",
        "results.json",
        "results_per_seed.csv",
        "results_snippet.md",
        "learning_curves.png",
        "cost_vs_violation.png",
        "voltage_envelopes.png",
        "device_power.png",
        "feeder_map.png",
    ):
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
    png = (out / "feeder_map.png").read_bytes()
    assert png.startswith(b"\x89PNG")


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_smoke_table_has_every_method_and_metric(smoke_dir):
    out, _ = smoke_dir
    results = json.loads((out / "results.json").read_text())
    methods = [row["method"] for row in results["results"]]
    expected = [m for m in TRAINED_METHODS + REFERENCE_METHODS if m not in results["skipped"]]
    assert methods == expected
    for row in results["results"]:
        assert row["seeds"] == [0, 1]
        if row["kind"] == "trained":
            assert row["train_wall_s"] > 0 and row["iterations"] >= 1
    for method, rows in results["per_seed"].items():
        assert [r["seed"] for r in rows] == [0, 1], method
        for r in rows:
            assert r["n_agents"] == PRESETS["smoke"].agents and r["days"] == PRESETS["smoke"].test_days
    # every table entry is the median of its seeds
    for row in results["results"]:
        seeds_cost = [r["cost"] for r in results["per_seed"][row["method"]]]
        assert row["cost"] == pytest.approx(float(np.median(seeds_cost)))
    assert set(results["probability_of_improvement"]) == set(methods) - {"gradmap"}
    with (out / "results.csv").open() as f:
        assert [r["method"] for r in csv.DictReader(f)] == methods
    table = (out / "results.md").read_text()
    for m in methods:
        assert f"| {m} |" in table
    assert (out / "results_snippet.md").read_text() in table
    # GradMAP's speed-up against GradMA and SSL, per seed, on levels fixed before training
    assert set(results["speedup"]) == set(results["speedup_violation_level"]) == {"gradma", "ssl"}
    for other in ("gradma", "ssl"):
        assert [r["seed"] for r in results["speedup"][other]["per_seed"]] == [0, 1]
        assert [r["seed"] for r in results["speedup_violation_level"][other]["per_seed"]] == [0, 1]
    assert "Speed-up of GradMAP to the violation level alone" in (out / "results_snippet.md").read_text()
    assert results["target_levels"]["violation_share"] == TARGET_VIOLATION_SHARE
    # one evaluation cadence for every method: an evaluation follows each iteration that passes a multiple of
    # eval_every_s seconds of training (and the last)
    step = PRESETS["smoke"].eval_every_s
    for method in results["best_so_far"]:
        with (out / "runs" / method / "seed0" / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        walls = [0.0] + [float(r["wall_s"]) for r in rows]
        for prev, row in zip(walls, rows, strict=False):
            passed = int(float(row["wall_s"]) // step) > int(prev // step)
            assert (row["eval_cost"] != "") == (passed or row is rows[-1]), method
    # time to target is read off validation days: the optimum was planned on them
    assert (out / "eval" / "oracle" / "validation.json").is_file()
    assert json.loads((out / "eval" / "oracle" / "validation.json").read_text())["split"] == "validation"


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_smoke_is_resumable(smoke_dir):
    out, first_s = smoke_dir
    before = (out / "runs" / "gradmap" / "seed1" / "metrics.csv").read_text()
    start = time.monotonic()
    assert main(["compare", "--preset", "smoke", "--seeds", "0-1", "--out", str(out), "--json"]) == 0
    # finished stages are skipped: no training, no evaluation, only the table and figures again
    assert time.monotonic() - start < 0.5 * first_s
    assert (out / "runs" / "gradmap" / "seed1" / "metrics.csv").read_text() == before


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_other_options_in_the_same_dir_are_refused(smoke_dir, capsys):
    out, _ = smoke_dir
    assert main(["compare", "--preset", "smoke", "--seeds", "0,1", "--minutes", "0.2", "--out", str(out)]) == 2
    assert "other options" in capsys.readouterr().err


def test_bad_arguments(tmp_path, capsys):
    assert main(["compare", "--preset", "smoke", "--methods", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["compare", "--minutes", "-1", "--out", str(tmp_path / "y")]) == 2
    assert "--minutes" in capsys.readouterr().err
    assert main(["compare", "--jobs", "0", "--out", str(tmp_path / "z")]) == 2
    assert "--jobs" in capsys.readouterr().err
    assert main(["compare", "--seeds", "4-1", "--out", str(tmp_path / "s")]) == 2
    assert "--seeds expects" in capsys.readouterr().err
    assert main(["compare", "--seeds", "a,b", "--out", str(tmp_path / "s")]) == 2
    assert "--seeds expects" in capsys.readouterr().err
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    assert main(["compare", "--snippet", str(readme), "--out", str(tmp_path / "n")]) == 2
    assert "needs one <!-- results:quick:begin -->" in capsys.readouterr().err
    assert not (tmp_path / "n").exists()  # refused before anything ran


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_parallel_training_jobs(tmp_path):
    """--jobs 2: two methods trained at once in worker processes, with the same files and table as one by one."""
    out = tmp_path / "jobs"
    assert (
        main(
            [
                "compare",
                "--preset",
                "smoke",
                "--minutes",
                "0.05",
                "--methods",
                "gradmap",
                "gradma",
                "noop",
                "--jobs",
                "2",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["jobs"] == 2 and [r["method"] for r in results["results"]] == ["gradmap", "gradma", "noop"]
    for method in ("gradmap", "gradma"):
        (row,) = results["per_seed"][method]
        assert row["iterations"] >= 1 and row["env_steps_per_s"] > 0
        assert (out / "runs" / method / "seed0" / "policies.pt").is_file()
    assert "2 trained at a time" in (out / "results.md").read_text()


def test_time_to_target_uses_levels_fixed_in_advance():
    levels = target_levels(100.0, 0.05)
    assert levels == {"cost": 105.0, "violation_share": TARGET_VIOLATION_SHARE}
    curve = {
        "wall_s": [10.0, 20.0, 30.0],
        "iteration": [5, 10, 15],
        "cost": [120.0, 104.0, 103.0],
        "violation_share": [0.001, 0.01, 0.004],
    }
    assert time_to_target(curve, levels) == {"wall_s": 30.0, "iteration": 15}  # 20 s: violations too high
    assert time_to_target(curve, target_levels(90.0, 0.05)) == {"wall_s": None, "iteration": None}
    # the violation level alone: the first evaluation at or below 0.5 %, whatever its cost
    assert time_to_target(curve, VIOLATION_LEVEL) == {"wall_s": 10.0, "iteration": 5}


def test_evaluation_cadence_in_training_seconds():
    run = RunConfig(eval_every_s=30.0)
    assert not _evaluation_due(run, 7, 10.0, 29.9)
    assert _evaluation_due(run, 8, 29.9, 30.4)  # passed 30 s
    assert _evaluation_due(run, 9, 59.0, 95.0)  # passed 60 and 90 s: one evaluation
    assert not _evaluation_due(RunConfig(eval_every=3), 2, 0.0, 100.0)
    assert _evaluation_due(RunConfig(eval_every=3), 3, 0.0, 1.0)


def test_best_so_far_on_a_common_grid():
    curve = {"wall_s": [12.0, 31.0, 50.0], "cost": [120.0, 130.0, 100.0], "violation_share": [0.02, 0.01, 0.03]}
    best = best_so_far(curve, [10.0, 20.0, 40.0, 60.0])
    assert best["cost"] == [None, 120.0, 120.0, 100.0]  # each metric its own running best
    assert best["violation_share"] == [None, 0.02, 0.01, 0.01]


def test_speedup_per_seed_median_and_not_reached():
    fast = {
        0: {"wall_s": 100.0, "iteration": 50},
        1: {"wall_s": 200.0, "iteration": 80},
        2: {"wall_s": 50.0, "iteration": 20},
    }
    slow = {
        0: {"wall_s": 300.0, "iteration": 300},
        1: {"wall_s": 500.0, "iteration": 400},
        2: {"wall_s": None, "iteration": None},
    }
    result = speedup(fast, slow)
    by_seed = {r["seed"]: r for r in result["per_seed"]}
    assert by_seed[0]["wall"] == 3.0 and by_seed[0]["gradients"] == 6.0
    assert by_seed[1]["wall"] == 2.5 and by_seed[1]["gradients"] == 5.0
    # seed 2: the slow run never reaches the target: no ratio, whatever its budget
    assert by_seed[2]["wall"] is None and by_seed[2]["gradients"] is None and by_seed[2]["fast_s"] == 50.0
    assert result["wall"]["median"] == 2.75 and result["wall"]["seeds_reached"] == 2
    lo, hi = result["wall"]["ci"]
    assert 2.5 <= lo <= hi <= 3.0
    never = speedup({0: {"wall_s": None, "iteration": None}}, {0: {"wall_s": 10.0, "iteration": 3}})
    assert never["wall"] == {"median": None, "ci": None, "seeds_reached": 0}


def test_seed_list():
    assert seed_list("0-4") == [0, 1, 2, 3, 4]
    assert seed_list("3,1,3") == [1, 3]
    assert seed_list("0-1,5") == [0, 1, 5]
    for bad in ("", "x", "2-1", "-1", "1.5"):
        with pytest.raises(ValueError, match="--seeds expects"):
            seed_list(bad)


def test_median_ci():
    mid, lo, hi = median_ci([5.0, 1.0, 3.0, 2.0, 4.0])
    assert mid == 3.0 and 1.0 <= lo < mid < hi <= 5.0
    assert median_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)  # no spread: a degenerate interval
    assert median_ci([7.0]) == (7.0, None, None)  # one seed: no interval


def test_probability_of_improvement_counts_pairs():
    # x below y in 3 + 3 + 2 of 9 pairs, and one tie (3 vs 3) counting one half: (8 + 0.5) / 9
    p, lo, hi = probability_of_improvement([1.0, 2.0, 3.0], [3.0, 4.0, 5.0])
    assert p == pytest.approx(8.5 / 9)
    assert lo <= p <= hi <= 1.0
    assert probability_of_improvement([1.0, 1.0], [1.0, 1.0])[0] == 0.5
    assert probability_of_improvement([5.0, 6.0], [1.0, 2.0])[0] == 0.0


def test_write_snippet(tmp_path):
    path = tmp_path / "README.md"
    other = "<!-- results:paper:begin -->\npaper table\n<!-- results:paper:end -->\n"
    path.write_text(f"intro\n<!-- results:quick:begin -->\nold table\n<!-- results:quick:end -->\n{other}after\n")
    write_snippet("| new | table |\n", path, "quick")
    expected = f"intro\n<!-- results:quick:begin -->\n| new | table |\n<!-- results:quick:end -->\n{other}after\n"
    assert path.read_text() == expected  # the other preset's table is left alone
    with pytest.raises(ValueError, match="README.md needs one <!-- results:smoke:begin -->"):
        write_snippet("x\n", path, "smoke")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_off_without_a_terminal_or_with_quiet(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert show_progress(quiet=False) is False
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert show_progress(quiet=True) is False
    assert show_progress(quiet=False) is True


def test_bars_go_to_stderr_and_json_stays_one_object(monkeypatch, capsys):
    """On a terminal the evaluation draws a bar on stderr; stdout holds the one JSON object of --json."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    args = ["evaluate", "--method", "noop", "--feeder", "ieee13", "--agents", "5", "--days", "2", "--batch", "1"]
    assert main(args + ["--json"]) == 0
    json.loads(capsys.readouterr().out)
    assert "evaluate" in terminal.getvalue() and "2/2" in terminal.getvalue()
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert main(args + ["--json", "--quiet"]) == 0
    json.loads(capsys.readouterr().out)
    assert quiet.getvalue() == ""
