"""Data parallelism (`gradmap_agent.distributed`): two gloo processes with a total batch of B train the same
policies, multipliers and normaliser as one process with batch B; the checkpoint they write resumes in one
process; only rank 0 writes the run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from baselines.ssl import ssl_config
from gradmap_agent import gradmap_config
from gradmap_agent.distributed import rank_rows, world
from gridedge_env import make_sim
from gridedge_run import train
from gridedge_run.rundir import CHECKPOINT_NAME, load_run_file

ROOT = Path(__file__).resolve().parents[1]
SIM = {"feeder": "ieee13", "n_agents": 20}
# minibatches=2 draws each minibatch from the whole batch, hard scenarios replay rows across the ranks
FIELDS = {"batch_days": 4, "hidden": 8, "hard_scenario_share": 0.5, "checkpoint_every": 1, "seed": 3}


def _gridedge(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "gridedge_run.cli", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def _assert_same_state(one: dict, two: dict) -> None:
    """Policies (float32: a sum in another order differs in the last bits), multipliers and normaliser."""
    for key in one["policy"]:
        torch.testing.assert_close(two["policy"][key], one["policy"][key], rtol=1e-5, atol=1e-6, msg=key)
    for key in ("device", "voltage"):
        torch.testing.assert_close(two["multipliers"][key], one["multipliers"][key], rtol=1e-6, atol=1e-9, msg=key)
    for key in ("count", "mean", "m2"):
        torch.testing.assert_close(two["normalizer"][key], one["normalizer"][key], rtol=1e-6, atol=1e-9, msg=key)


def test_one_process_is_rank_zero_of_one():
    assert world() == (0, 1)
    assert rank_rows(5) == slice(0, 5)


def test_two_processes_train_what_one_process_trains(tmp_path):
    sets = [item for key, value in FIELDS.items() for item in ("--set", f"{key}={value}")]
    two = tmp_path / "two"
    done = _gridedge(
        "train", "gradmap", "--feeder", "ieee13", "--agents", "20", "--iterations", "2", *sets,
        "--nproc", "2", "--out", str(two), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # rank 0's summary alone: exactly one JSON object
    assert summary["iterations"] == 2
    assert sorted(p.name for p in two.iterdir()) == [
        "checkpoint.pt",
        "config.json",
        "metrics.csv",
        "multipliers.png",
        "policies.pt",
    ]

    sim = make_sim(**SIM)
    out_one = tmp_path / "one"
    _, _, metrics = train(sim, gradmap_config(iterations=2, **FIELDS), out_dir=out_one)
    state_one = load_run_file(out_one / CHECKPOINT_NAME, "checkpoint")
    state_two = load_run_file(two / CHECKPOINT_NAME, "checkpoint")
    _assert_same_state(state_one, state_two)
    # the metrics of the whole batch, whichever rank reports them
    for key in ("violation_share", "pf_failures"):
        assert summary[f"final_{key}"] == pytest.approx(metrics["final"][key], rel=1e-9, abs=1e-12), key
    # the cost is linear in the float32 actions, whose last bits differ (gradients summed in another order):
    # about 1e-9 relative
    assert summary["final_cost"] == pytest.approx(metrics["final"]["cost"], rel=1e-7), "cost"
    # undelivered kW is the small difference of a request and what was delivered: the float32 policies'
    # last-bit differences (sums in another order) show in it at about 1e-8 relative
    for key in ("battery_undelivered_kwh", "heatpump_comfort_k_steps", "generator_undelivered_kwh"):
        assert summary[f"final_{key}"] == pytest.approx(metrics["final"][key], rel=1e-6, abs=1e-12), key
    # the same hard scenarios, gathered from both ranks
    torch.testing.assert_close(state_two["hard_scenarios"]["day"], state_one["hard_scenarios"]["day"])

    # the two-process checkpoint resumes in one process as the one-process run continues
    _, params_resumed, _ = train(sim, gradmap_config(iterations=3, **FIELDS), out_dir=two, resume=True)
    _, params_one, _ = train(sim, gradmap_config(iterations=3, **FIELDS), out_dir=out_one, resume=True)
    for key in params_one["policy"]:
        torch.testing.assert_close(params_resumed["policy"][key], params_one["policy"][key], rtol=1e-5, atol=1e-6)


def test_two_processes_train_ssl_as_one_process(tmp_path):
    """SSL's data parallelism: the rollout's backward on each rank's rows, the gradients summed."""
    two = tmp_path / "two"
    done = _gridedge(
        "train", "ssl", "--feeder", "ieee13", "--agents", "6", "--iterations", "2", "--set", "batch_days=2",
        "--set", "hidden=4", "--nproc", "2", "--out", str(two), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out_one = tmp_path / "one"
    config = ssl_config(iterations=2, batch_days=2, hidden=4)
    train(make_sim(feeder="ieee13", n_agents=6), config, out_dir=out_one, method="ssl")
    _assert_same_state(
        load_run_file(out_one / CHECKPOINT_NAME, "checkpoint"), load_run_file(two / CHECKPOINT_NAME, "checkpoint")
    )


def test_nproc_refuses_what_it_cannot_split(tmp_path, capsys):
    from gridedge_run.cli import main
    from gridedge_run.commands import check_data_parallel

    base = ["train", "gradmap", "--feeder", "ieee13", "--agents", "6", "--iterations", "1"]
    assert main([*base, "--out", str(tmp_path / "a"), "--nproc", "0"]) == 2
    assert "--nproc must be >= 1" in capsys.readouterr().err
    base[1] = "ippo"
    assert main([*base, "--out", str(tmp_path / "b"), "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert "ippo does not train data-parallel" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="batch_days=3 must be a multiple of the number of processes"):
        check_data_parallel("ssl", 2, batch_days=3)


def test_a_user_error_is_reported_by_rank_zero_alone(tmp_path, capsys, monkeypatch):
    from gridedge_run.cli import main

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("")
    argv = ["train", "gradmap", "--feeder", "ieee13", "--agents", "6", "--out", str(tmp_path / "taken")]
    assert main(argv) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")  # as torchrun starts rank 1: the same error, silent
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and capsys.readouterr().err == ""
