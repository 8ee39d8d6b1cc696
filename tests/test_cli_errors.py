"""The command line: standard JSON output, exit code 2 with a one-line message for user errors."""

from __future__ import annotations

import json

import pytest

from gridedge_env.cli import _emit, json_text


def _strict(text: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_json_output_is_standard_json(capsys):
    result = {"worst_violation_pu": float("inf"), "cost": float("nan"), "rows": [1.0, float("-inf")], "ok": 0.5}
    _emit(result, as_json=True)
    out = capsys.readouterr().out
    assert _strict(out) == {"worst_violation_pu": None, "cost": None, "rows": [1.0, None], "ok": 0.5}
    assert _strict(json_text({"nested": {"x": float("nan")}})) == {"nested": {"x": None}}


def test_text_output_tables_rows_with_different_keys(capsys):
    # compare's rows differ: learners have training columns the rules lack (a KeyError ended compare before)
    result = {"methods": [{"method": "gradmap", "reached_target": False}, {"method": "noop"}], "jobs": 2}
    _emit(result, as_json=False)
    out = capsys.readouterr().out
    assert "| method | reached_target |" in out
    assert "| gradmap | False |" in out and "| noop | - |" in out


def test_strict_parser_refuses_what_json_dumps_writes_by_default():
    with pytest.raises(ValueError, match="non-standard"):
        _strict(json.dumps({"x": float("inf")}))


# ----------------------------------------------------------------------------------------------------------
# user errors: exit code 2, one line naming the file or option, no traceback
# ----------------------------------------------------------------------------------------------------------

TINY = [
    "--feeder",
    "ieee13",
    "--agents",
    "6",
    "--set",
    "batch_days=1",
    "--set",
    "hidden=4",
    "--set",
    "checkpoint_every=1",
]


def gridedge(capsys, *argv):
    from gridedge_run.cli import main

    code = main(list(map(str, argv)))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from gridedge_run.cli import main

    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "gradmap", *TINY, "--iterations", "2", "--out", str(out)]) == 0
    return out


def _one_line_error(code, err, *expected):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--set", "lr=abc"], "optim.lr must be a number, got 'abc'"),
        (["--set", "hidden=2.5"], "policy.hidden must be an integer, got 2.5"),
        (["--set", "iterations=many"], "run.iterations must be an integer or none"),
        (["--sim-set", "dtype=bogus"], "dtype must be 'float64' or 'float32', got 'bogus'"),
    ],
)
def test_bad_settings_exit_2_naming_the_option(capsys, tmp_path, extra, expected):
    code, _, err = gridedge(capsys, "train", "gradmap", *TINY, "--out", tmp_path / "r", *extra)
    _one_line_error(code, err, "gridedge train: error:", expected)


def test_an_out_that_cannot_be_created_exits_2(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, err = gridedge(capsys, "train", "gradmap", *TINY, "--iterations", "1", "--out", blocker / "run")
    _one_line_error(code, err, f"cannot create the run directory --out {blocker / 'run'}")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupted_policies_and_checkpoints_are_named(capsys, tmp_path, run_dir, damage):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    for name in ("policies.pt", "checkpoint.pt"):
        data = (copy / name).read_bytes()
        (copy / name).write_bytes(
            {"truncate": data[: len(data) // 3], "garbage": b"not a torch file\n", "empty": b""}[damage]
        )
    code, _, err = gridedge(capsys, "evaluate", copy, "--days", "1")
    _one_line_error(code, err, f"{copy / 'policies.pt'}: cannot read the policies file")
    code, _, err = gridedge(capsys, "train", "gradmap", "--out", copy, "--resume", "--iterations", "3")
    _one_line_error(code, err, f"{copy / 'checkpoint.pt'}: cannot read the checkpoint")


def test_a_damaged_run_config_is_named(capsys, tmp_path, run_dir):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "config.json").write_text("{not json")
    code, _, err = gridedge(capsys, "train", "gradmap", "--out", copy, "--resume", "--iterations", "3")
    _one_line_error(code, err, f"{copy / 'config.json'}: cannot read the run's config")


# ----------------------------------------------------------------------------------------------------------
# resume: --sim-set is refused, --eval-every honoured; checkpoints name their method; evaluate names the feeder
# ----------------------------------------------------------------------------------------------------------


def test_resume_refuses_sim_set_and_honours_eval_every(capsys, tmp_path, run_dir):
    import csv
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    code, _, err = gridedge(
        capsys, "train", "gradmap", "--out", copy, "--resume", "--iterations", "3", "--sim-set", "dtype=float32"
    )
    _one_line_error(code, err, "--sim-set cannot change a resumed run")
    code, _, err = gridedge(
        capsys,
        "train",
        "gradmap",
        "--out",
        copy,
        "--resume",
        "--iterations",
        "3",
        "--eval-every",
        "1",
        "--set",
        "eval_days=1",
    )
    assert code == 0, err
    rows = list(csv.DictReader((copy / "metrics.csv").open()))
    assert [r["eval_cost"] != "" for r in rows] == [False, False, True]  # the resumed iteration was evaluated


def test_checkpoints_record_their_method(run_dir):
    import torch

    from gradmap_agent import gradmap_config
    from gridedge_run import train

    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["method"] == "gradmap"
    with pytest.raises(ValueError, match="was written by 'gradmap', not 'gradma'"):
        train(
            {"feeder": "ieee13", "n_agents": 6},
            gradmap_config(iterations=3),
            out_dir=run_dir,
            resume=True,
            method="gradma",
        )


def test_evaluate_names_the_feeder(capsys, run_dir):
    code, out, _ = gridedge(capsys, "evaluate", run_dir, "--days", "1", "--json")
    assert code == 0 and json.loads(out)["feeder"] == "ieee13" and json.loads(out)["n_agents"] == 6
    code, out, _ = gridedge(
        capsys, "evaluate", "--method", "noop", "--feeder", "ieee13", "--agents", "6", "--days", "1", "--json"
    )
    assert code == 0 and json.loads(out)["feeder"] == "ieee13"


# ----------------------------------------------------------------------------------------------------------
# a run interrupted before its first checkpoint says so and can be restarted
# ----------------------------------------------------------------------------------------------------------


def test_interrupted_before_the_first_checkpoint_reports_it_and_restarts(capsys, tmp_path, monkeypatch):
    import gridedge_run.loop

    def interrupted(*args, **kwargs):  # Ctrl-C right after config.json is written, before any checkpoint
        raise KeyboardInterrupt

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(gridedge_run.loop, "write_metrics_csv", interrupted)
        with pytest.raises(SystemExit) as info:
            gridedge(capsys, "train", "gradmap", *TINY, "--iterations", "1", "--out", out)
    err = capsys.readouterr().err
    assert info.value.code == 130
    assert "stopped before the first checkpoint" in err and "--restart" in err and "checkpoint written" not in err
    assert (out / "config.json").is_file() and not (out / "checkpoint.pt").exists()

    code, _, err = gridedge(capsys, "train", "gradmap", *TINY, "--iterations", "1", "--out", out)
    _one_line_error(code, err, "it holds no checkpoint: pass --restart")
    code, _, err = gridedge(capsys, "train", "gradmap", "--out", out, "--resume", "--iterations", "1")
    _one_line_error(code, err, "holds no checkpoint.pt", "--restart")
    code, _, err = gridedge(capsys, "train", "gradmap", *TINY, "--iterations", "1", "--out", out, "--restart")
    assert code == 0, err
    assert (out / "checkpoint.pt").is_file()
    code, _, err = gridedge(capsys, "train", "gradmap", *TINY, "--iterations", "1", "--out", out, "--restart")
    _one_line_error(code, err, "cannot restart", "holds a checkpoint.pt")
