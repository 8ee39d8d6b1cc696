"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

# the OpenDSS reference models sit beside the repository, in ../shared/data (not shipped with gridedge)
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of `../shared/data`; the test is skipped (with a message) when that folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present: reference OpenDSS models unavailable")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def sb3_log_dir(tmp_path_factory):
    """Stable-Baselines3 makes a folder in the system temp dir (SB3-<date>) for every `learn` unless
    `SB3_LOGDIR` names one; point it at pytest's temp dir so the suite leaves nothing behind (examples run as
    subprocesses inherit it)."""
    with pytest.MonkeyPatch.context() as patch:  # restores the variable (or its absence) at the end
        patch.setenv("SB3_LOGDIR", str(tmp_path_factory.mktemp("sb3_logs")))
        yield
