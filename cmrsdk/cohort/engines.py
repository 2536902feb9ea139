"""Where the studies run: a local process pool or Ray actors, behind one scheduler.

Both engines keep one `StudyWorker` (one loaded pipeline) per worker, keep a bounded number
of studies in flight per worker (so a cohort of 100,000 is never queued at once), and yield
results as they finish. A study that kills its worker (a native crash, the OOM killer) is
found by re-running the studies that were in flight one at a time: the one that kills a
worker alone is failed, the others carry on.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..cpus import usable_cpus
from ..errors import CmrError, InputError
from .discover import StudySource
from .worker import PipelineSpec, StudyResult, StudyWorker

__all__ = ["BatchEngine", "LocalEngine", "RayEngine", "WorkerLost", "create_engine", "cpu_count", "ENGINES"]

ENGINES = ("local", "ray")


def cpu_count() -> int:
    """Cores this process may use: the affinity mask (taskset, cpusets), capped by the cgroup's
    CPU quota (a container's --cpus; `cmrsdk.cpus.usable_cpus`)."""
    return usable_cpus()


class WorkerLost(Exception):
    """The worker running a study died (crash, kill) before answering."""


def _failed(study: StudySource, error: str) -> StudyResult:
    return StudyResult(
        study.study_id,
        {"study_id": study.study_id, "source": study.source, "status": "failed", "error": error, "seconds": None},
    )


class BatchEngine(ABC):
    """Runs studies on ``workers`` workers; `run` yields each `StudyResult` as it finishes.

    Parameters
    ----------
    spec : the pipeline every worker loads once.
    workers : number of workers (processes or actors).
    threads : math-library threads per worker.
    """

    name = "engine"
    in_flight_per_worker = 2  # one running, one queued: no worker waits on the driver

    def __init__(self, spec: PipelineSpec, workers: int, threads: int) -> None:
        if workers < 1:
            raise InputError(f"'--workers' must be at least 1, got {workers}")
        if threads < 1:
            raise InputError(f"'--threads' must be at least 1, got {threads}")
        self.spec, self.workers, self.threads = spec, workers, threads
        self.startup_s = 0.0
        #: where workers segment; `run_batch` sets OUT/.tmp before `start` (None: the system's temporary folder)
        self.scratch: str | None = None

    def start(self) -> None:
        """Start the workers and wait until each has loaded its pipeline (timed in `startup_s`).

        Raises
        ------
        CmrError : a worker cannot load the pipeline (the message is the worker's error).
        """
        t0 = time.perf_counter()
        self._start()
        self.startup_s = time.perf_counter() - t0

    def run(self, studies: Iterable[StudySource]) -> Iterator[StudyResult]:
        """Yield one `StudyResult` per study, in the order they finish."""
        pending = iter(studies)
        suspects: deque[StudySource] = deque()
        in_flight: dict[Any, StudySource] = {}
        isolating = False  # a suspect runs alone: nothing else is in flight
        exhausted = False
        while True:
            if suspects and not in_flight:
                study = suspects.popleft()
                in_flight[self._submit(study)] = study
                isolating = True
            while (
                not suspects
                and not isolating
                and not exhausted
                and len(in_flight) < self.workers * self.in_flight_per_worker
            ):
                upcoming = next(pending, None)
                if upcoming is None:
                    exhausted = True
                    break
                in_flight[self._submit(upcoming)] = upcoming
            if not in_flight:
                return
            lost = False
            for handle, outcome in self._wait(list(in_flight)):
                study = in_flight.pop(handle)
                if isinstance(outcome, WorkerLost):
                    lost = True
                    if isolating:
                        yield _failed(study, f"the worker segmenting it died ({outcome}), also when it ran alone")
                    else:
                        suspects.append(study)
                elif isinstance(outcome, Exception):
                    yield _failed(
                        study, str(outcome) if isinstance(outcome, CmrError) else f"{type(outcome).__name__}: {outcome}"
                    )
                else:
                    yield outcome
            if not in_flight:
                isolating = False
            if lost:
                self._recover()

    @abstractmethod
    def _start(self) -> None: ...

    @abstractmethod
    def _submit(self, study: StudySource) -> Any: ...

    @abstractmethod
    def _wait(self, handles: list[Any]) -> list[tuple[Any, StudyResult | Exception]]:
        """Block until at least one handle is done; return every done one with its outcome.

        The outcome is the `StudyResult`, `WorkerLost` when the worker died, or another
        exception the engine raised for the study.
        """

    @abstractmethod
    def _recover(self) -> None:
        """Replace dead workers."""

    @abstractmethod
    def close(self) -> None:
        """Stop the workers (studies in flight are abandoned)."""


# -- local: a process pool ------------------------------------------------------------------
_WORKER: StudyWorker | None = None
_WORKER_ERROR: str | None = None


def _watch_parent(parent: int) -> None:
    # a SIGKILLed batch cannot shut its pool down: its workers leave on their own
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(spec: PipelineSpec, threads: int, parent: int, scratch: str | None = None) -> None:
    global _WORKER, _WORKER_ERROR
    # Ctrl-C reaches the whole process group: the driver alone handles it and stops the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    try:
        _WORKER = StudyWorker(spec, threads, scratch)
    except Exception as exc:  # reported by _ready, so that the batch stops with the reason
        _WORKER_ERROR = str(exc) if isinstance(exc, CmrError) else f"{type(exc).__name__}: {exc}"


def _ready() -> tuple[int, str | None]:
    return os.getpid(), _WORKER_ERROR


def _run(study: StudySource) -> StudyResult:
    if _WORKER is None:
        raise CmrError(f"worker cannot load the pipeline: {_WORKER_ERROR}")
    return _WORKER.run(study)


class LocalEngine(BatchEngine):
    """A pool of ``workers`` processes on this machine, each with ``threads`` threads and one pipeline."""

    name = "local"

    def _make_pool(self) -> Any:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: a forked copy of a process holding thread pools (ONNX Runtime,
        # OpenMP) can deadlock
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.spec, self.threads, os.getpid(), self.scratch),
        )

    def _start(self) -> None:
        try:
            self._pool = self._make_pool()
            errors = [future.result()[1] for future in [self._pool.submit(_ready) for _ in range(self.workers)]]
        except (OSError, RuntimeError) as exc:  # a pipe, a process or a thread refused (BrokenProcessPool too)
            self.close()
            n = self.workers
            raise CmrError(
                f"cannot start {n} worker process{'es' if n > 1 else ''} ({type(exc).__name__}: {exc}); the "
                "limits on open files or processes (ulimit -n, ulimit -u) may be too low: lower --workers "
                "or raise them"
            ) from exc
        error = next((e for e in errors if e), None)
        if error:
            self.close()
            raise CmrError(f"a worker cannot load the pipeline: {error}")

    def _submit(self, study: StudySource) -> Any:
        return self._pool.submit(_run, study)

    def _wait(self, handles: list[Any]) -> list[tuple[Any, StudyResult | Exception]]:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        out: list[tuple[Any, StudyResult | Exception]] = []
        for future in done:
            try:
                out.append((future, future.result()))
            except BrokenProcessPool as exc:
                out.append((future, WorkerLost(f"process pool broken: {exc}")))
            except Exception as exc:
                out.append((future, exc))
        return out

    def _recover(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._make_pool()

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            processes = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:  # studies in flight are abandoned, not waited for
                if process.is_alive():
                    process.terminate()
            self._pool = None


# -- ray: one actor per worker ---------------------------------------------------------------
def _source_checkout() -> str | None:
    """The folder holding this cmrsdk when it runs from a source tree (not an installed package)."""
    package = Path(__file__).resolve().parents[1]
    return None if "site-packages" in package.parts else str(package.parent)


class RayEngine(BatchEngine):
    """``workers`` Ray actors, each with one pipeline; on the cluster at ``address``, else a local instance.

    Parameters
    ----------
    address : "auto", a ``ray://host:port`` client address or a GCS address; None starts (or
        reuses, when this process already has one) a local Ray instance.
    gpus_per_worker : GPUs each actor reserves (1 with ``--device cuda``).

    Studies' sources must be readable at the same path on every node; outputs come back to the
    driver, which alone writes the output folder.
    """

    name = "ray"

    def __init__(
        self,
        spec: PipelineSpec,
        workers: int,
        threads: int,
        *,
        address: str | None = None,
        gpus_per_worker: float = 0.0,
    ) -> None:
        super().__init__(spec, workers, threads)
        self.address = address
        self.gpus_per_worker = gpus_per_worker
        self._started_ray = False
        self._actors: list[Any] = []
        self._load: dict[Any, int] = {}
        self._where: dict[Any, Any] = {}

    def _start(self) -> None:
        try:
            import ray
        except ImportError:
            raise CmrError("--engine ray needs Ray: pip install 'cmrsdk[cohort]' (or pip install ray)") from None
        self._ray = ray
        if not ray.is_initialized():
            # ray.init replaces this process's SIGTERM handler (Python's with sys.exit, then its C++
            # core's, which prints a stack and exits 1): the caller's is put back once it returns,
            # so that `run_batch` ends a stopped run as it does on the local engine (exit 130, table)
            main = threading.current_thread() is threading.main_thread()
            sigterm = signal.getsignal(signal.SIGTERM) if main else None
            checkout = _source_checkout()
            # workers import this same cmrsdk, also when it runs from a source checkout
            runtime_env = {"env_vars": {"PYTHONPATH": checkout}} if checkout else None
            try:
                if self.address:
                    ray.init(
                        address=self.address,
                        runtime_env=runtime_env,
                        log_to_driver=False,
                        logging_level=logging.WARNING,
                    )
                else:
                    ray.init(
                        num_cpus=max(cpu_count(), self.workers * self.threads),
                        include_dashboard=False,
                        runtime_env=runtime_env,
                        log_to_driver=False,
                        logging_level=logging.WARNING,
                    )
            except Exception as exc:
                raise CmrError(
                    f"--address {self.address or '(local instance)'}: Ray could not start or connect "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
            finally:
                if sigterm is not None:
                    signal.signal(signal.SIGTERM, sigterm)
            self._started_ray = True
        self._actor_class = ray.remote(num_cpus=self.threads, num_gpus=self.gpus_per_worker)(StudyWorker)
        self._actors = [self._new_actor() for _ in range(self.workers)]
        try:
            ray.get([actor.ready.remote() for actor in self._actors])
        except ray.exceptions.RayError as exc:
            self.close()
            raise CmrError(f"a Ray worker cannot load the pipeline: {exc}") from exc

    def _new_actor(self) -> Any:
        actor = self._actor_class.remote(self.spec, self.threads, self.scratch)
        self._load[actor] = 0
        return actor

    def _submit(self, study: StudySource) -> Any:
        actor = min(self._actors, key=lambda a: self._load[a])
        ref = actor.run.remote(study)
        self._load[actor] += 1
        self._where[ref] = actor
        return ref

    def _wait(self, handles: list[Any]) -> list[tuple[Any, StudyResult | Exception]]:
        ray = self._ray
        done, _ = ray.wait(handles, num_returns=1)
        done, _ = ray.wait(handles, num_returns=len(handles), timeout=0) if len(handles) > 1 else (done, None)
        out: list[tuple[Any, StudyResult | Exception]] = []
        for ref in done:
            actor = self._where.pop(ref)
            self._load[actor] = self._load.get(actor, 1) - 1
            try:
                out.append((ref, ray.get(ref)))
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                self._dead = getattr(self, "_dead", set()) | {actor}
                out.append((ref, WorkerLost(f"Ray actor died: {type(exc).__name__}")))
            except ray.exceptions.RayError as exc:
                out.append((ref, exc))
        return out

    def _recover(self) -> None:
        for actor in getattr(self, "_dead", set()):
            if actor in self._actors:
                self._actors.remove(actor)
                self._load.pop(actor, None)
                self._ray.kill(actor, no_restart=True)
                self._actors.append(self._new_actor())
        self._dead = set()

    def close(self) -> None:
        ray = getattr(self, "_ray", None)
        if ray is None:
            return
        for actor in self._actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self._actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False


def create_engine(
    name: str, spec: PipelineSpec, *, workers: int | None = None, threads: int | None = None, address: str | None = None
) -> BatchEngine:
    """The engine ``name`` ("local" or "ray") sized for this machine when ``workers``/``threads`` are None.

    Local: ``workers`` defaults to half the cores (at least 1), ``threads`` to cores / workers, so
    that workers x threads never exceeds the cores. Ray: one actor per GPU with ``--device cuda``
    (``workers`` defaults to 1 then), otherwise like local on this machine's cores.
    """
    if name not in ENGINES:
        raise InputError(f"'--engine' must be one of {', '.join(ENGINES)}, got {name!r}")
    if address and name != "ray":
        raise InputError(f"'--address' {address!r} is for '--engine ray' only")
    cores = cpu_count()
    workers = workers if workers is not None else max(1, cores // 2)
    threads = threads if threads is not None else max(1, cores // max(1, workers))
    if name == "local":
        return LocalEngine(spec, workers, threads)
    return RayEngine(spec, workers, threads, address=address, gpus_per_worker=1.0 if spec.device == "cuda" else 0.0)
