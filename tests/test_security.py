"""Untrusted files are data: crafted checkpoints and policies files cannot run code when loaded."""

from __future__ import annotations

import pytest
import torch

from gradmap_agent import gradmap_config
from gridedge_env import make_sim
from gridedge_run import load_policies, train


class _Payload:
    """Unpickling this object runs ``exec``, which writes a marker file: the attack a shared file could carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def _crafted(path, marker, **fields) -> None:
    torch.save({**fields, "payload": _Payload(marker)}, path)


def test_crafted_policies_file_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    _crafted(tmp_path / "policies.pt", marker, format="gridedge-policies")
    with pytest.raises(ValueError, match=r"policies.pt: refused: .* holds objects other than tensors"):
        load_policies(tmp_path)
    assert not marker.exists()


def test_crafted_checkpoint_is_refused_on_resume_without_running(tmp_path):
    marker = tmp_path / "ran"
    _crafted(tmp_path / "checkpoint.pt", marker, format="gridedge-checkpoint")
    sim = make_sim(feeder="ieee13", n_agents=6)
    with pytest.raises(ValueError, match=r"checkpoint.pt: refused: .* holds objects other than tensors"):
        train(sim, gradmap_config(iterations=1, batch_days=1, hidden=4), out_dir=tmp_path, resume=True)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------
# OpenDSS models are scripts: importing one must not run programs or touch files outside its folder
# ----------------------------------------------------------------------------------------------------------

_CIRCUIT = """Clear
New Circuit.evil basekv=4.16 bus1=src phases=3
New Line.l1 bus1=src bus2=b phases=3 length=0.1 units=km
New Load.ld bus1=b phases=3 kv=4.16 kw=100 kvar=10
Set VoltageBases=[4.16]
CalcVoltageBases
"""


@pytest.fixture
def attack(tmp_path):
    """A model folder, a folder outside it, and a program that leaves a marker file when it runs."""
    model_dir, outside = tmp_path / "model", tmp_path / "outside"
    model_dir.mkdir()
    outside.mkdir()
    marker = outside / "program_ran"
    program = outside / "editor.sh"
    program.write_text(f"#!/bin/sh\ntouch {marker}\n")
    program.chmod(0o755)
    return model_dir, outside, program, marker


def _files(folder):
    return sorted(p.name for p in folder.rglob("*"))


@pytest.mark.parametrize(
    ("lines", "refused"),
    [
        ("Set Editor={program}\nShow Voltages LN Nodes\n", "option Set editor"),
        ("Solve\nExport Voltages {outside}/voltages.csv\n", "command 'export'"),
        ("Solve\nexp voltages {outside}/voltages.csv\n", "command 'export'"),  # OpenDSS resolves 'exp' to Export
        ("Save Circuit Dir={outside}/saved\n", "command 'save'"),
        ("Set DataPath={outside}\nSolve\nExport Voltages\n", "option Set datapath"),
        ("Redirect {outside}/evil.dss\n", "outside the model's folder"),
        ("Redirect ../outside/evil.dss\n", "outside the model's folder"),
        (
            "Redirect sub/nested.dss\n",
            "nested.dss, line 2: .*command 'export'",
        ),  # checked inside the redirected file too
        ("New Monitor.m element=Line.l1 terminal=1\nSolve\nMonitor.m.action=save\n", "writes a file"),
        ("New Loadshape.s npts=2 interval=1 mult=(file={outside}/evil.csv)\n", "outside the model's folder"),
        ("FileEdit {outside}/evil.csv\n", "command 'fileedit'"),
        # a load shape saves itself as '<name>_P.dbl' in the data folder: a positional action, or a name
        # that climbs out of the folder
        (
            "New Loadshape.s npts=3 interval=1 mult=(1 2 3)\nEdit Loadshape.s 3 1 (1 2 3) (0 1 2) 2 1 a b c dblsave\n",
            "without a property name",
        ),
        (
            "New Loadshape.x/../../outside/e npts=3 interval=1 mult=(1 2 3)\nLoadshape.x/../../outside/e.action=d\n",
            "refers to a parent folder",
        ),
        ("var @cmd=Export\n@cmd Voltages {outside}/v.csv\n", "command 'var'"),
        ("Set ed={program}\nShow Voltages\n", "option Set editor"),  # abbreviated option
    ],
)
def test_malicious_opendss_model_is_refused_and_touches_nothing(attack, lines, refused):
    from gridedge_env.network import FeederError, from_opendss

    model_dir, outside, program, marker = attack
    fill = {"program": program, "outside": outside}
    (outside / "evil.dss").write_text(f"Export Voltages {outside}/from_redirect.csv\n")
    (outside / "evil.csv").write_text("1\n2\n")
    (model_dir / "sub").mkdir()
    (model_dir / "sub" / "nested.dss").write_text(f"Solve\nExport Voltages {outside}/nested.csv\n")
    master = model_dir / "master.dss"
    master.write_text(_CIRCUIT + lines.format(**fill))
    before_model, before_outside = _files(model_dir), _files(outside)
    with pytest.raises(FeederError, match=refused) as info:
        from_opendss(master)
    assert "line " in str(info.value)  # names the line
    assert not marker.exists()
    assert _files(model_dir) == before_model and _files(outside) == before_outside


def test_trusted_model_runs_with_the_editor_hook_off(attack):
    """A trusted model's `Show` writes its report but starts no program (the editor hook is off)."""
    from gridedge_env.network import from_opendss

    model_dir, outside, program, marker = attack
    master = model_dir / "master.dss"
    master.write_text(_CIRCUIT + f"Set Editor={program}\nSolve\nShow Voltages LN Nodes\n")
    feeder = from_opendss(master, trusted=True)
    assert [ld.name for ld in feeder.loads] == ["ld"]
    assert not marker.exists()


def test_benign_model_with_redirects_and_comments_imports(tmp_path):
    from gridedge_env.network import from_opendss

    (tmp_path / "codes").mkdir()
    (tmp_path / "codes" / "load.dss").write_text("New Load.ld bus1=b phases=3 kv=4.16 kw=100 kvar=10\n")
    head, tail = _CIRCUIT.split("New Load", 1)
    tail = tail.split("\n", 1)[1]
    master = tmp_path / "master.dss"
    master.write_text(head + "Redirect codes/load.dss  ! loads\n// Show Voltages\n/*\nExport Voltages /x\n*/\n" + tail)
    assert [ld.name for ld in from_opendss(master).loads] == ["ld"]


# ----------------------------------------------------------------------------------------------------------
# A JSON feeder reaches the OpenDSS script that `to_opendss` writes: names and values cannot add commands
# ----------------------------------------------------------------------------------------------------------


def _injected_name(outside) -> str:
    return f"ld bus1=671.1.2.3 kw=1\nSolve\nExport Voltages {outside}/injected.csv\n! "


def test_json_feeder_with_a_command_in_a_name_is_refused(tmp_path):
    import dataclasses
    import json

    from gridedge_env.network import Feeder, FeederError, load_feeder

    outside = tmp_path / "outside"
    outside.mkdir()
    feeder = load_feeder("ieee13")
    load = dataclasses.replace(feeder.loads[0], name=_injected_name(outside))
    data = feeder.replace(loads=(load, *feeder.loads[1:])).to_dict()
    path = tmp_path / "feeder.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FeederError, match=r"loads\[0\]\.name = .* is not a valid name"):
        Feeder.load(path)


def test_to_opendss_and_validate_refuse_injected_names_and_write_nothing(tmp_path):
    """A feeder built in code (never validated) still cannot inject commands into the script that `validate`
    compiles, and a feeder name cannot place the script outside its temporary folder."""
    import dataclasses
    import tempfile

    from gridedge_env.network import FeederError, load_feeder
    from gridedge_env.validation import validate

    outside = tmp_path / "outside"
    outside.mkdir()
    feeder = load_feeder("ieee13")
    load = dataclasses.replace(feeder.loads[0], name=_injected_name(outside))
    injected = feeder.replace(loads=(load, *feeder.loads[1:]))
    with pytest.raises(FeederError, match=r"loads\[0\]\.name = .* is not a valid name"):
        injected.to_opendss(tmp_path / "model.dss")
    with pytest.raises(FeederError, match=r"is not a valid name"):
        validate(injected, samples=1)
    assert not (tmp_path / "model.dss").exists() and _files(outside) == []

    scratch = tmp_path / "a" / "b"
    scratch.mkdir(parents=True)
    tempfile.tempdir, saved = str(scratch), tempfile.tempdir
    try:
        with pytest.raises(FeederError, match=r"name = '\.\./\.\./x' is not a valid name"):
            validate(feeder.replace(name="../../x"), samples=1)
    finally:
        tempfile.tempdir = saved
    assert not list(tmp_path.rglob("x.dss"))


def test_a_model_path_cannot_inject_commands(attack):
    """The model's own file name is quoted into OpenDSS's Compile command: a quote or newline in it is refused."""
    from gridedge_env.network import FeederError, from_opendss

    model_dir, _, _, _ = attack
    (model_dir / "m.dss").write_text(_CIRCUIT)  # what the quoted part of the crafted name would compile
    master = model_dir / 'm.dss"\nSolve\nExport Voltages\n!.dss'
    master.write_text(_CIRCUIT)
    with pytest.raises(FeederError, match="quotes or control characters"):
        from_opendss(master, trusted=True)
    assert _files(model_dir) == sorted(["m.dss", master.name])
