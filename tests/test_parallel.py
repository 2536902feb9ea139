"""cmr::parallel_for (csrc/native/parallel.hpp) and the process-wide budget of native threads
(cmrsdk.preprocess, "Threads"): blocks, failures while starting threads, defaults, sharing."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cmrsdk import _native
from cmrsdk import preprocess as pp

ROOT = Path(__file__).resolve().parents[1]


def blocks(n: int, grain: int) -> list[tuple[int, int]]:
    return [(b, min(n, b + grain)) for b in range(0, n, grain)]


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("n,grain", [(1, 1), (10, 3), (12, 4), (37, 5), (5, 100)])
def test_every_call_covers_exactly_one_block(threads: int, n: int, grain: int) -> None:
    calls, started = _native._parallel_for_probe(n, threads, grain, 0, "none", -1)
    assert calls == blocks(n, grain)
    assert started == min(threads, len(blocks(n, grain))) - 1


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_refused_thread_leaves_the_work_to_the_running_ones(fail_at: int) -> None:
    calls, started = _native._parallel_for_probe(40, 4, 1, fail_at, "system_error", -1)
    assert calls == blocks(40, 1)
    assert started == fail_at - 1


def test_an_exception_in_a_block_is_rethrown_after_the_join() -> None:
    with pytest.raises(RuntimeError, match="block failed"):
        _native._parallel_for_probe(40, 4, 1, 0, "none", 7)
    with pytest.raises(RuntimeError, match="block failed"):
        _native._parallel_for_probe(40, 1, 1, 0, "none", 7)


# In a child process: a regression would call std::terminate, which must fail this test, not
# abort the test run.
CHILD = """
from cmrsdk import _native
for failure, error in (("bad_alloc", MemoryError), ("runtime_error", RuntimeError)):
    for fail_at in (1, 2, 4):
        try:
            _native._parallel_for_probe(64, 6, 1, fail_at, failure, -1)
        except error:
            pass
        else:
            raise SystemExit(f"{failure} at thread {fail_at} was not rethrown")
print("ok")
"""


def test_a_failed_thread_start_joins_the_started_threads_and_rethrows() -> None:
    child = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == "ok"


def test_default_threads_follow_the_cpu_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 9}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert pp.usable_cpus() == 3
    with pp._NATIVE_THREADS.take(None) as n:
        assert n == 3
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert pp.usable_cpus() == 64


def test_a_default_call_takes_the_free_cpus_and_waits_when_none_is_free(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pp, "usable_cpus", lambda: 4)
    budget = pp._NativeThreads()
    with budget.take(None) as first:
        assert first == 4
        with budget.take(2) as explicit:  # an explicit count never waits
            assert explicit == 2 and budget.in_use == 6
        got: list[int] = []

        def wait() -> None:
            with budget.take(None) as n:
                got.append(n)

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.2)
        assert got == []  # every CPU is busy: it waits
    waiter.join(timeout=10)
    assert got == [4] and budget.in_use == 0
    with budget.take(1), budget.take(None) as rest:
        assert rest == 3


def test_concurrent_default_calls_never_oversubscribe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pp, "usable_cpus", lambda: 3)
    budget = pp._NativeThreads()
    monkeypatch.setattr(pp, "_NATIVE_THREADS", budget)
    rng = np.random.default_rng(71)
    pixels = rng.integers(0, 3000, size=(8, 150, 130)).astype(np.int16)

    def work() -> np.ndarray:
        return pp.prepare_slices(pixels, (1.5, 1.4), target_spacing=(1.25, 1.25), size=(96, 96))[0]

    serial = work()
    results: list[np.ndarray] = []
    callers = [threading.Thread(target=lambda: results.append(work())) for _ in range(6)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(results) == 6
    for result in results:
        np.testing.assert_array_equal(result, serial)
    assert budget.peak <= 3 and budget.in_use == 0
