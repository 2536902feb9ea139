"""Shared fixtures: the real data beside the checkout, skipped (saying so) where absent."""
from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (ACDC, M&Ms, Sunnybrook); the test is skipped where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}: tests on real cases are skipped")
    return SHARED_DATA
