"""The CPUs this process may use: its affinity mask (taskset, cpusets) and its cgroup's CPU quota
(a container's ``--cpus``, a Kubernetes CPU limit), whichever allows fewer.

A quota leaves the affinity mask whole: in a container limited to 2 CPUs on a 64-core host the
mask still lists 64, and a batch sized from it started 32 workers of one pipeline each."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

__all__ = ["cgroup_cpu_limit", "quota_threads", "usable_cores", "usable_cpus"]


def usable_cpus() -> int:
    """CPUs this process may run on: the affinity mask's count (``os.cpu_count()`` where the OS
    has none), capped by the cgroup quota (`cgroup_cpu_limit`); at least 1."""
    return _capped(_mask_cpus())


def usable_cores() -> int:
    """Physical cores this process may run on: the affinity mask's CPUs counted once per core
    (hyper-threads of one core share it; ``topology/core_cpus_list`` in sysfs, each CPU its own
    core where that cannot be read), capped by the cgroup quota; at least 1. ONNX Runtime's own
    default thread count is this count without the quota."""
    return _capped(len({_core_of(cpu) for cpu in _mask()}) or _mask_cpus())


def _capped(count: int) -> int:
    """``count`` capped by the cgroup quota; at least 1."""
    limit = _own_quota()
    return max(1, min(count, limit) if limit else count)


def _core_of(cpu: int) -> str:
    """The CPUs sharing ``cpu``'s core as sysfs lists them ("0,32"); the CPU alone where unreadable."""
    topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
    for name in ("core_cpus_list", "thread_siblings_list"):
        try:
            return (topology / name).read_text().strip()
        except OSError:
            continue
    return str(cpu)


def quota_threads() -> int | None:
    """The thread count for an inference runtime left to its default (ONNX Runtime, OpenVINO):
    the cgroup quota where it allows fewer CPUs than the affinity mask holds (the runtimes count
    the mask's cores), else None (the runtime's own default)."""
    limit = _own_quota()
    return limit if limit is not None and limit < _mask_cpus() else None


def _mask_cpus() -> int:
    """The affinity mask's CPU count (``os.cpu_count()`` where the OS gives no mask)."""
    return len(_mask()) or os.cpu_count() or 1


def _mask() -> list[int]:
    """The affinity mask's CPUs, read each time (taskset may change it while the process runs);
    empty where the OS gives none."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    try:
        return sorted(getaffinity(0)) if getaffinity is not None else []
    except OSError:
        return []


@functools.cache
def _own_quota() -> int | None:
    """This process's `cgroup_cpu_limit`, read once: the native kernels ask on every call."""
    return cgroup_cpu_limit()


def cgroup_cpu_limit(proc_cgroup: str | Path = "/proc/self/cgroup", root: str | Path = "/sys/fs/cgroup") -> int | None:
    """The CPUs the process's cgroup quota allows, rounded up: the tightest quota of its cgroup and
    of the cgroups above it, cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``); None where none is set or none can be read.

    ``proc_cgroup``: the process's cgroup list (``/proc/self/cgroup``); ``root``: where the
    cgroup file systems are mounted.
    """
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    root = Path(root)
    found: list[int] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2: one hierarchy, mounted at root (or at root/unified beside v1)
            for mount in (root, root / "unified"):
                found += [n for f in _upwards(mount, path) if (n := _v2_quota(f / "cpu.max"))]
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own hierarchy
            mount = root / controllers if (root / controllers).is_dir() else root / "cpu"
            found += [n for f in _upwards(mount, path) if (n := _v1_quota(f))]
    return min(found) if found else None


def _upwards(mount: Path, path: str) -> list[Path]:
    """``mount``/``path`` and each folder above it up to ``mount`` (a container sees its own
    cgroup at the mount's root, under whatever path the host gives it)."""
    relative = Path(path.strip().lstrip("/"))
    return [mount / relative, *(mount / p for p in relative.parents if p != Path("."))] + (
        [mount] if relative != Path(".") else []
    )


def _v2_quota(cpu_max: Path) -> int | None:
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return max(1, math.ceil(int(quota) / int(period))) if quota != "max" and int(period) > 0 else None
    except (OSError, ValueError):
        return None


def _v1_quota(folder: Path) -> int | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None
