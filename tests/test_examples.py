"""The core-install examples run (in-process, on a small task); the integration examples are run by
tests/test_integrations.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _main(script: str):
    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), EXAMPLES / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_train_gradmap_example(tmp_path):
    threads = torch.get_num_threads()
    try:
        summary = _main("train_gradmap.py")(["--feeder", "ieee13", "--agents", "10", "--iterations", "2",
                                             "--days", "2", "--out", str(tmp_path / "run"), "--threads", "1"])
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
