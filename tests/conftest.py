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
