"""The CPUs a batch, the node's native kernels and their thread pools size themselves by: the
affinity mask and the cgroup's CPU quota (a container's ``--cpus``), whichever allows fewer.

Before 0.14.9 only the mask counted: in a container limited to 2 CPUs on a 64-core host `cmrsdk
batch` started 32 workers, each loading its own pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cmrsdk.cpus import cgroup_cpu_limit, usable_cores, usable_cpus

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_v2_quota_counts_the_tightest_of_the_cgroup_and_those_above_it(tmp_path: Path):
    proc = tmp_path / "self_cgroup"
    proc.write_text("0::/kubepods/pod7/c1\n")
    root = tmp_path / "fs"
    _write(root / "kubepods" / "pod7" / "c1" / "cpu.max", "max 100000\n")
    _write(root / "kubepods" / "pod7" / "cpu.max", "250000 100000\n")  # a pod limit of 2.5 CPUs: 3 usable
    _write(root / "kubepods" / "cpu.max", "800000 100000\n")
    assert cgroup_cpu_limit(proc, root) == 3
    _write(root / "kubepods" / "pod7" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(proc, root) == 8


def test_a_v1_quota_seen_from_inside_a_container(tmp_path: Path):
    """A container sees its own cgroup at the mount's root, under the host's path in /proc/self/cgroup."""
    proc = tmp_path / "self_cgroup"
    proc.write_text("5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    mount = tmp_path / "fs" / "cpu,cpuacct"
    _write(mount / "cpu.cfs_quota_us", "150000\n")
    _write(mount / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(proc, tmp_path / "fs") == 2
    _write(mount / "cpu.cfs_quota_us", "-1\n")  # no quota
    assert cgroup_cpu_limit(proc, tmp_path / "fs") is None


@pytest.mark.parametrize("text", ["", "max\n", "garbage 100000\n", "100000 0\n"])
def test_no_quota_or_an_unreadable_one_limits_nothing(tmp_path: Path, text: str):
    proc = tmp_path / "self_cgroup"
    proc.write_text("0::/\n")
    _write(tmp_path / "fs" / "cpu.max", text)
    assert cgroup_cpu_limit(proc, tmp_path / "fs") is None
    assert cgroup_cpu_limit(tmp_path / "absent", tmp_path / "fs") is None


def test_without_a_quota_the_affinity_mask_counts():
    if cgroup_cpu_limit() is None:
        assert usable_cpus() == len(os.sched_getaffinity(0))


def test_cores_count_the_cpus_of_a_core_once():
    """ONNX Runtime's default is a thread per physical core: hyper-threads of one core count once."""
    mask = os.sched_getaffinity(0)
    cores = {Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/core_cpus_list").read_text() for cpu in mask}
    limit = cgroup_cpu_limit()
    assert usable_cores() == min(len(cores), limit or len(cores)) <= usable_cpus()


_SIZES = """
import numpy as np
from cmrsdk import DEMO_BUNDLE, preprocess
from cmrsdk.engines import create_engine as engine_for
from cmrsdk.cohort.engines import cpu_count, create_engine
from cmrsdk.cohort.worker import PipelineSpec
engine = create_engine("local", PipelineSpec(bundle="unused"))
preprocess.prepare_slices(
    np.ones((8, 96, 96), np.float32), (1.5, 1.5), target_spacing=(1.25, 1.25), size=(64, 64), normalization="zscore"
)
onnx = engine_for(DEMO_BUNDLE / "baseline.onnx", "onnx")._session.get_session_options().intra_op_num_threads
openvino = engine_for(DEMO_BUNDLE / "baseline.onnx", "openvino")._compiled.get_property("INFERENCE_NUM_THREADS")
print(cpu_count(), engine.workers, engine.threads, preprocess._NATIVE_THREADS.peak, onnx, openvino)
"""


def test_a_process_in_a_cgroup_of_one_cpu_sizes_its_batch_for_one(tmp_path: Path):
    """A real cgroup (v1 cpu controller, as root) with a quota of one CPU: the batch's default
    workers and threads, the threads of a native call left to its default, and ONNX Runtime's and
    OpenVINO's threads where none are given, are those of one CPU; outside it, the mask's (ONNX
    Runtime's: one per physical core of the mask)."""
    mount = Path("/sys/fs/cgroup/cpu")
    if os.geteuid() != 0 or not (mount / "cpu.cfs_quota_us").is_file() or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs root, a writable cgroup v1 cpu controller and two CPUs or more")
    group = mount / f"cmrsdk-test-{os.getpid()}"
    try:
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("100000")
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup here: {exc}")
    try:
        script = f'echo $$ > {group}/cgroup.procs && exec "{sys.executable}" -c "$0"'
        done = subprocess.run(
            ["sh", "-c", script, _SIZES],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split() == ["1", "1", "1", "1", "1", "1"]
        free = subprocess.run(
            [sys.executable, "-c", _SIZES],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        cpus = str(len(os.sched_getaffinity(0)))
        sizes = free.stdout.split()
        assert sizes[::3] == [cpus, cpus] and sizes[4] == str(usable_cores())  # outside: every CPU
    finally:
        group.rmdir()
