"""benchmarks/gradmap_ieee123.sh --smoke: the benchmark's pipeline (tune on validation days, compare with the
choice, profile) end to end on the smoke task (integration tier: a few minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
@pytest.mark.timeout(3600)
def test_benchmark_script_smoke(tmp_path):
    out = tmp_path / "bench"
    env = {
        **os.environ,
        "OUT": str(out),
        "GRIDEDGE": f"{sys.executable} -m gridedge_run.cli",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gradmap_ieee123.sh"), "--smoke"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    tune = json.loads((out / "tune" / "tune.json").read_text())
    learners = ["gradmap", "gradma", "ssl", "ssl-penalty", "ippo", "mappo"]
    assert list(tune["methods_tuned"]) == learners
    assert {len(t["configs"]) for t in tune["methods_tuned"].values()} == {2}  # the same budget for every one
    results = json.loads((out / "compare" / "results.json").read_text())
    chosen = {m: tuple(t["set"]) for m, t in tune["methods_tuned"].items()}
    for method in learners:  # every learner trained with its chosen settings
        config = json.loads((out / "compare" / "runs" / method / "seed0" / "config.json").read_text())["config"]
        flat = {k: v for section in config.values() if isinstance(section, dict) for k, v in section.items()}
        flat.update({k: v for k, v in config.items() if not isinstance(v, dict)})
        for item in chosen[method]:
            key, value = item.split("=", 1)
            assert str(flat[key]).lower() == value.lower() or flat[key] == json.loads(value), (method, key)
    assert set(results["speedup"]) == {"gradma", "ssl"}
    assert "Speed-up of GradMAP" in (out / "compare" / "results.md").read_text()
    assert results["commit"] and results["torch"] and results["machine"]
    for method in ("gradmap", "gradma"):
        profile = json.loads((out / f"profile_{method}.json").read_text())
        assert profile["iteration_s"] > 0 and profile["method"] == method
