"""Shared fixtures: the real data beside the checkout, skipped (saying so) where absent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/_bundles.py

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (ACDC, M&Ms, Sunnybrook); the test is skipped where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}: tests on real cases are skipped")
    return SHARED_DATA


@pytest.fixture(scope="session")
def routing_bundle(tmp_path_factory) -> Path:
    """A bundle whose models answer recognisably (tests/_bundles.py); built once per session."""
    pytest.importorskip("torch")
    from _bundles import build_routing_bundle

    return build_routing_bundle(tmp_path_factory.mktemp("bundles") / "routing")


@pytest.fixture(scope="session")
def segmented_phantom():
    """(study, result): the example phantom (seed 0, ED and ES only) and the demo bundle's segmentation of it."""
    pytest.importorskip("onnxruntime")
    from cmrsdk import DEMO_BUNDLE, Pipeline
    from cmrsdk.phantom import cine_phantom

    study = cine_phantom(0, n_phases=2)
    return study, Pipeline(DEMO_BUNDLE).segment_study(study)
