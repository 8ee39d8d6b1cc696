"""`gridedge compare`: the smoke preset writes every file with every method in the table and resumes (integration
tier); argument errors and the time-to-target arithmetic (default suite)."""

from __future__ import annotations

import csv
import json
import time

import pytest

from gridedge_run.cli import main
from gridedge_run.compare import PRESETS, REFERENCE_METHODS, TRAINED_METHODS, speedup_to_level, time_to_target


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "smoke"
    start = time.monotonic()
    assert main(["compare", "--preset", "smoke", "--out", str(out), "--json"]) == 0
    return out, time.monotonic() - start


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_smoke_writes_every_file(smoke_dir):
    out, _ = smoke_dir
    for name in (
        "results.md",
        "results.csv",
        "results.json",
        "learning_curves.png",
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
        assert row["n_agents"] == PRESETS["smoke"].agents
        assert row["days"] == PRESETS["smoke"].test_days
        if row["kind"] == "trained":
            assert row["train_wall_s"] > 0 and row["iterations"] >= 1
    with (out / "results.csv").open() as f:
        assert [r["method"] for r in csv.DictReader(f)] == methods
    table = (out / "results.md").read_text()
    for m in methods:
        assert f"| {m} |" in table


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_smoke_is_resumable(smoke_dir):
    out, first_s = smoke_dir
    before = (out / "runs" / "gradmap" / "metrics.csv").read_text()
    start = time.monotonic()
    assert main(["compare", "--preset", "smoke", "--out", str(out), "--json"]) == 0
    # finished stages are skipped: no training, no evaluation, only the table and figures again
    assert time.monotonic() - start < 0.5 * first_s
    assert (out / "runs" / "gradmap" / "metrics.csv").read_text() == before


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_other_options_in_the_same_dir_are_refused(smoke_dir, capsys):
    out, _ = smoke_dir
    assert main(["compare", "--preset", "smoke", "--minutes", "0.2", "--out", str(out)]) == 2
    assert "other options" in capsys.readouterr().err


def test_bad_arguments(tmp_path, capsys):
    assert main(["compare", "--preset", "smoke", "--methods", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["compare", "--minutes", "-1", "--out", str(tmp_path / "y")]) == 2
    assert "--minutes" in capsys.readouterr().err
    assert main(["compare", "--jobs", "0", "--out", str(tmp_path / "z")]) == 2
    assert "--jobs" in capsys.readouterr().err


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
    for row in results["results"][:2]:
        assert row["iterations"] >= 1 and row["env_steps_per_s"] > 0
        assert (out / "runs" / row["method"] / "policies.pt").is_file()
    assert "(2 at a time)" in (out / "results.md").read_text()


def test_time_to_target():
    curve = {"wall_s": [10.0, 20.0, 30.0], "cost": [120.0, 104.0, 103.0], "violation_share": [0.001, 0.01, 0.004]}
    assert time_to_target(curve, optimum_cost=100.0) == 30.0  # 20 s: cost ok but violations too high
    assert time_to_target(curve, optimum_cost=90.0) is None


def test_speedup_to_level():
    fast = {"wall_s": [10.0, 20.0, 30.0], "cost": [150.0, 110.0, 100.0], "violation_share": [0.02, 0.005, 0.004]}
    slow = {"wall_s": [10.0, 40.0, 90.0], "cost": [140.0, 100.0, 105.0], "violation_share": [0.03, 0.006, 0.005]}
    result = speedup_to_level(fast, slow)
    # slow's final level (105 $, 0.5 %): slow at 90 s (at 40 s the share is still 0.6 %), fast at 30 s (at 20 s
    # the cost is 110 $)
    assert result["at_slow_final"]["fast_s"] == 30.0 and result["at_slow_final"]["slow_s"] == 90.0
    assert result["at_slow_final"]["speedup"] == 3.0
    # fast's final level (100 $, 0.4 %): slow never gets there, so only a bound: 90 s / 30 s
    never = result["at_fast_final"]
    assert never["slow_s"] is None and never["speedup"] is None and never["speedup_at_least"] == 3.0
    # slow's final share (0.5 %) at any cost: fast already at 20 s (0.5 %), slow at 90 s
    share_only = result["at_slow_final_share"]
    assert share_only["fast_s"] == 20.0 and share_only["slow_s"] == 90.0 and share_only["speedup"] == 4.5
    assert speedup_to_level({"wall_s": [], "cost": [], "violation_share": []}, slow) is None
