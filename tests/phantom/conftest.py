"""Fixtures for the phantom tests."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the project root; the test is skipped when it is absent."""
    if not (SHARED_DATA / "kits19-labels").is_dir():
        pytest.skip(f"{SHARED_DATA / 'kits19-labels'} not present")
    return SHARED_DATA
