"""Every trainer and command takes its device from the config (``--device``, ``SimConfig.device``); a device
this machine lacks is a one-line error with exit code 2, never a traceback."""

from __future__ import annotations

import json

import pytest
import torch

from gridedge_env import make_sim
from gridedge_run.commands import train_method
from gridedge_run.methods import TRAIN_METHODS
from gridedge_run.rundir import CHECKPOINT_NAME, load_run_file

TINY_FIELDS = {
    "gradmap": {"batch_days": 2, "hidden": 4},
    "gradma": {"batch_days": 2, "hidden": 4},
    "ssl": {"batch_days": 2, "hidden": 4},
    "ssl-penalty": {"batch_days": 2, "hidden": 4},
    "ippo": {"num_envs": 2, "hidden": 4},
    "mappo": {"num_envs": 2, "hidden": 4},
}
NO_CUDA = not torch.cuda.is_available()


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _tensors(value)
    elif isinstance(tree, list | tuple):
        for value in tree:
            yield from _tensors(value)


@pytest.mark.parametrize("method", list(TRAIN_METHODS))
def test_every_trainer_keeps_its_state_on_the_configured_device(method, tmp_path):
    assert set(TINY_FIELDS) == set(TRAIN_METHODS)
    sim_options = {"feeder": "ieee13", "n_agents": 6, "device": "cpu"}
    fields = {"iterations": 1, **TINY_FIELDS[method]}
    summary = train_method(method, tmp_path / method, sim_options=sim_options, fields=fields, progress=lambda row: None)
    assert summary["iterations"] == 1
    saved = json.loads((tmp_path / method / "config.json").read_text())
    assert saved["sim_config"]["device"] == "cpu"
    state = torch.load(tmp_path / method / CHECKPOINT_NAME, weights_only=True)  # where the trainer kept them
    devices = {t.device for t in _tensors({k: v for k, v in state.items() if k != "rng"})}
    assert devices == {torch.device("cpu")}, devices


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize(
    "argv",
    [
        ["train", "gradmap", "--feeder", "ieee13", "--agents", "6", "--iterations", "1", "--device", "cuda"],
        ["train", "ippo", "--feeder", "ieee13", "--agents", "6", "--iterations", "1", "--device", "cuda"],
        ["evaluate", "--method", "noop", "--feeder", "ieee13", "--agents", "6", "--days", "1", "--device", "cuda"],
        ["compare", "--preset", "smoke", "--device", "cuda"],
        ["bench", "sim", "--feeder", "ieee13", "--agents", "6", "--batch", "2", "--device", "cuda"],
        ["bench", "powerflow", "--feeder", "ieee13", "--batch", "2", "--device", "cuda"],
    ],
    ids=["train", "train-ppo", "evaluate", "compare", "bench-sim", "bench-powerflow"],
)
def test_cuda_without_cuda_is_a_one_line_error(argv, tmp_path, capsys):
    from gridedge_run.cli import main

    if argv[0] in ("train", "compare"):
        argv = [*argv, "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "CUDA is not available on this machine" in lines[0], lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_bad_device_name_is_named():
    with pytest.raises(ValueError, match="device must be a torch device such as 'cpu' or 'cuda', got 'gpu0'"):
        make_sim(feeder="ieee13", n_agents=6, device="gpu0")


def test_resume_may_move_a_run_to_another_device(tmp_path):
    """The device is not part of what a resume checks: a run continues wherever it is resumed."""
    out = tmp_path / "run"
    options = {"feeder": "ieee13", "n_agents": 6}
    fields = {"iterations": 1, "batch_days": 2, "hidden": 4, "checkpoint_every": 1}
    train_method("gradma", out, sim_options=options, fields=fields, progress=lambda row: None)
    config = json.loads((out / "config.json").read_text())
    config["sim_config"]["device"] = "cpu:0"  # as if written on another device
    (out / "config.json").write_text(json.dumps(config))
    state = load_run_file(out / CHECKPOINT_NAME, "checkpoint")
    state["sim_config"]["device"] = "cpu:0"
    torch.save(state, out / CHECKPOINT_NAME)
    summary = train_method(
        "gradma", out, sim_options={"device": "cpu"}, fields={"iterations": 2}, resume=True, progress=lambda r: None
    )
    assert summary["iterations"] == 2
    assert json.loads((out / "config.json").read_text())["sim_config"]["device"] == "cpu"
