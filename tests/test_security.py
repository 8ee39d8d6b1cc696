"""Untrusted files are data: crafted checkpoints and policies files cannot run code when loaded."""

from __future__ import annotations

import pickle

import pytest
import torch

from gradmap_agent import GradMAPConfig, load_policies, train
from gridedge_env import make_sim


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
    with pytest.raises(pickle.UnpicklingError):
        load_policies(tmp_path)
    assert not marker.exists()


def test_crafted_checkpoint_is_refused_on_resume_without_running(tmp_path):
    marker = tmp_path / "ran"
    _crafted(tmp_path / "checkpoint.pt", marker, format="gridedge-checkpoint")
    sim = make_sim(feeder="ieee13", n_agents=6)
    with pytest.raises(pickle.UnpicklingError):
        train(sim, GradMAPConfig(iterations=1, batch_days=1, hidden=4), out_dir=tmp_path, resume=True)
    assert not marker.exists()
