"""Shared fixtures: the real data beside the checkout, skipped (saying so) where absent."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/_bundles.py

# DCMTK (Orthanc's DICOM server, storescu, echoscu) leaves Nagle's algorithm on unless TCP_NODELAY
# is set: each C-STORE into Orthanc then waited for a delayed ACK, 50 ms an image (a 240-image cine
# took 14 s to fill the test PACS, 1 s with it). The tests' PACS and tools run with it set, as
# PACS deployments commonly do; the node (pynetdicom) needs nothing: 60 images from storescu
# without it took 0.65 s.
os.environ.setdefault("TCP_NODELAY", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (ACDC, M&Ms, Sunnybrook); the test is skipped where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}: tests on real cases are skipped")
    return SHARED_DATA


@pytest.fixture(scope="session")
def routing_bundle(tmp_path_factory) -> Path:
    """A bundle whose models answer recognisably (tests/_bundles.py); built once for the run and
    shared by the pytest-xdist workers (`built_once`: 8.6 s of exports each built), read only."""
    pytest.importorskip("torch")
    from _bundles import build_routing_bundle, built_once

    return built_once(tmp_path_factory, "routing-bundle", lambda folder: build_routing_bundle(folder / "routing")) / (
        "routing"
    )


@pytest.fixture(scope="session")
def segmented_phantom():
    """(study, result): the example phantom (seed 0, ED and ES only) and the demo bundle's segmentation of it."""
    pytest.importorskip("onnxruntime")
    from cmrsdk import DEMO_BUNDLE, Pipeline
    from cmrsdk.phantom import cine_phantom

    study = cine_phantom(0, n_phases=2)
    return study, Pipeline(DEMO_BUNDLE).segment_study(study)


@pytest.fixture(scope="session")
def region_demo_bundle(tmp_path_factory) -> Path:
    """The demo bundle with region U-Nets: its one U-Net also named "base" and "apex" (the same
    files, so the same hashes) and routed to at the base and the apex, as 0.3.0's three were.
    The shipped 0.7.0 bundle routes every region to its one U-Net; this keeps the second pass of
    the routed pipeline under test on real weights."""
    import json
    import shutil

    from cmrsdk import DEMO_BUNDLE

    out = tmp_path_factory.mktemp("bundles") / "region_demo"
    shutil.copytree(DEMO_BUNDLE, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for name in ("base", "apex"):
        manifest["models"][name] = manifest["models"]["baseline"]
    manifest["routing"] = {"0": "baseline", "1": "base", "2": "baseline", "3": "apex"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A private Orthanc (tests/_dicom_node.py) knowing this node as CMRSDK, one per test module;
    the test is skipped where Orthanc is not installed."""
    from _dicom_node import ORTHANC, Orthanc, free_port

    if ORTHANC is None:
        pytest.skip("Orthanc (Debian package 'orthanc') is not installed")
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), {"cmrsdk": ("CMRSDK", free_port())})
    yield server
    server.close()
