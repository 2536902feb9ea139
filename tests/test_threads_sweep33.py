"""Sweep 33: `--threads` caps the networks too, not only the native kernels.

ONNX Runtime and OpenVINO size their pools from the machine's cores, whatever OMP_NUM_THREADS
says: `cmrsdk segment --threads 1` ran the networks on every core (openvino 1.495 s against
1.502 s for the default), so a node sharing its machine had no way to cap them.
"""

from __future__ import annotations

import pytest

from cmrsdk import DEMO_BUNDLE, Pipeline, load_bundle
from cmrsdk.cpus import usable_cores


def test_a_pipelines_threads_reach_onnx_runtimes_pool():
    pipeline = Pipeline(DEMO_BUNDLE, backend="onnx", threads=1)
    (engine,) = {id(e): e for e in pipeline._engines.values()}.values()
    assert engine._session.get_session_options().intra_op_num_threads == 1
    default = Pipeline(DEMO_BUNDLE, backend="onnx")._engines["baseline"]
    # one per core, as the runtime would choose, but given: left to choose it pins them (0.14.10)
    assert default._session.get_session_options().intra_op_num_threads == usable_cores()


def test_a_pipelines_threads_reach_openvinos_pool():
    pytest.importorskip("openvino")
    engine = Pipeline(DEMO_BUNDLE, backend="openvino", threads=1)._engines["baseline"]
    assert int(engine._compiled.get_property("INFERENCE_NUM_THREADS")) == 1


def test_an_engine_option_given_wins_over_threads():
    engine = load_bundle(DEMO_BUNDLE).engine("baseline", backend="onnx", threads=1, intra_op_threads=2)
    assert engine._session.get_session_options().intra_op_num_threads == 2
