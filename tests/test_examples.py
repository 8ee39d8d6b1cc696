"""The core-install examples run (in-process, on a small task); the integration examples are run by
tests/test_integrations.py."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _main(script: str):
    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), EXAMPLES / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _train_tiny_run(out):
    """examples/train_gradmap.py on IEEE-13 with 10 agents, 2 iterations, 2 test days, one thread."""
    args = ["--feeder", "ieee13", "--agents", "10", "--iterations", "2", "--days", "2", "--out", str(out)]
    return _main("train_gradmap.py")([*args, "--threads", "1"])


def test_train_gradmap_example(tmp_path):
    threads = torch.get_num_threads()
    try:
        summary = _train_tiny_run(tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    assert summary["agents"] == 10 and summary["iterations"] == 2 and summary["test_days"] == 2
    for method in ("gradmap", "noop", "price-seeking"):
        assert 0.0 <= summary[f"{method} violation_share"] <= 1.0
    assert (tmp_path / "run" / "metrics.csv").is_file() and (tmp_path / "run" / "policies.pt").is_file()


def test_custom_feeder_example(tmp_path):
    out = tmp_path / "feeder.json"
    summary = _main("custom_feeder.py")(["--agents", "10", "--samples", "5", "--out", str(out)])
    assert summary["max_abs_err_pu"] < 1e-6 and summary["agents"] == 10
    assert out.is_file()


def test_worst_step_example(tmp_path):
    """The diagnostic finds the run's worst node-step and the sensitivities there; the oracle's plan of that
    day reports its own worst excursion."""
    threads = torch.get_num_threads()
    try:
        _train_tiny_run(tmp_path / "run")
        summary = _main("worst_step.py")([str(tmp_path / "run"), "--days", "3", "--oracle", "--oracle-iterations", "3"])
    finally:
        torch.set_num_threads(threads)
    assert summary["excursion_pu"] >= 0.0 and 0 <= summary["step"] < 96
    assert set(summary["dv_daction_pu"]) == {"battery", "heatpump", "generator"}
    assert all(len(v) == 3 and all(torch.isfinite(torch.tensor(v))) for v in summary["dv_daction_pu"].values())
    # a battery's or generator's action +1 means more consumption (charge at full power, generator off): on
    # the worst node's own phase that cannot raise its voltage (heat pumps are left out: a < 0 is cooling)
    phase = int(summary["node"].split(".")[1])
    dv = summary["dv_daction_pu"]
    assert dv["battery"][phase - 1] + dv["generator"][phase - 1] <= 0.0
    assert any(x != 0.0 for values in dv.values() for x in values)
    assert math.isfinite(summary["oracle"]["worst_violation_pu"])
