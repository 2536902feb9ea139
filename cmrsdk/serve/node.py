"""The node: SCP, worker and forwarder over one spool, started and stopped together."""

from __future__ import annotations

import logging
import signal
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .forward import Destination, Forwarder
from .scp import ScpOptions, StorageScp
from .spool import NO_INSTANCES, Spool, printable
from .worker import Worker

__all__ = ["NodeConfig", "Node", "series_log_line"]

log = logging.getLogger("cmrsdk.serve")


@dataclass(frozen=True)
class NodeConfig:
    """Everything ``cmrsdk serve`` is given."""

    spool: Path
    output: Path
    scp: ScpOptions = field(default_factory=ScpOptions)
    series_timeout_s: float = 10.0
    reopen_window_s: float = 600.0
    abort_hold_s: float = 600.0
    forward: Destination | None = None
    bundle: str | Path | None = None
    device: str = "cpu"
    backend: str = "auto"
    max_spool_bytes: int | None = None
    min_free_bytes: int = 0
    backoff_cap_s: float = 60.0
    forward_attempts: int = 10
    forward_tls: ssl.SSLContext | None = None
    #: `Pipeline`'s keyword arguments besides bundle, backend and device (mode, precision, threads, mirroring, ...)
    pipeline: Mapping[str, Any] = field(default_factory=dict)


def series_log_line(spool: Spool, series_uid: str) -> str:
    """The one patient-free line logged per series: UID, shape, latency, outcome."""
    row = spool.series(series_uid)
    shown = printable(series_uid)  # a sender's text: no forged lines in the log
    if row is None:
        return f"series {shown}: unknown"
    shape = f"{row.phases} phases x {row.slices} slices" if row.phases else "shape unknown"
    # the result's latency apart from the forwarding's: a slow or absent PACS is not slow segmentation
    end = row.result_at or row.finished_at or time.time()
    latency = f"{end - row.last_instance_at:.1f} s from last instance to result" if row.last_instance_at else ""
    if row.result_at and row.finished_at and latency and spool.delivery_counts(series_uid)[1]:
        latency += f", {row.finished_at - row.result_at:.1f} s forwarding"
    outcome = row.state.replace("_", " ")
    if row.state == "done":
        sent, total = spool.delivery_counts(series_uid)
        outcome = f"done, {sent}/{total} result files forwarded" if total else "done"
    if row.reason:
        outcome += f" ({printable(row.reason)})"
    if row.reopened:
        outcome += f"; judged {row.reopened + 1} times (instances came after a verdict), results in {row.output}"
    return f"series {shown}: {row.n_instances} instances, {shape}, {latency}, {outcome}"


class Node:
    """A running ``cmrsdk serve``: :meth:`start`, then :meth:`wait` until SIGTERM/SIGINT or :meth:`stop`."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.stop_event = threading.Event()
        self.spool = Spool(
            config.spool,
            max_bytes=config.max_spool_bytes,
            min_free_bytes=config.min_free_bytes,
            reopen_window_s=config.reopen_window_s,
        )
        self.scp = StorageScp(self.spool, config.scp, abort_hold_s=config.abort_hold_s)
        self.worker = Worker(
            self.spool,
            config.output,
            self._load_pipeline,
            series_timeout_s=config.series_timeout_s,
            forward=config.forward is not None,
            stop=self.stop_event,
            on_final=self._series_final,
            abort_hold_s=config.abort_hold_s,
        )
        self.forwarder = (
            Forwarder(
                self.spool,
                config.forward,
                ae_title=config.scp.ae_title,
                stop=self.stop_event,
                on_final=self._series_final,
                backoff_cap_s=config.backoff_cap_s,
                max_attempts=config.forward_attempts,
                tls=config.forward_tls,
            )
            if config.forward
            else None
        )

    def _load_pipeline(self) -> Any:
        from .. import DEMO_BUNDLE
        from ..pipeline import Pipeline

        from .worker import warm_up_writers

        t0 = time.perf_counter()
        options = dict(self.config.pipeline)
        if options.get("threads"):
            from ..cohort.worker import set_thread_count

            set_thread_count(options["threads"])  # torch's pool (TorchScript, AOTInductor) is the process's
        pipeline = Pipeline(
            self.config.bundle or DEMO_BUNDLE, backend=self.config.backend, device=self.config.device, **options
        )
        warm_up_writers()
        log.info(
            "ready: pipeline and writers loaded in %.1f s (%s, %s), precision %s",
            time.perf_counter() - t0,
            pipeline.mode,
            ", ".join(sorted(set(pipeline.provenance.get("backends", {}).values()))),
            pipeline.provenance.get("precision", "fp32"),
        )
        return pipeline

    def _series_final(self, series_uid: str) -> None:
        row = self.spool.series(series_uid)
        # a stack's members at DEBUG: the stack's own line counts them (a per-file cine gave 240 lines)
        stacked = row is not None and (row.reason or "").startswith("stacked into ")
        level = logging.DEBUG if stacked else logging.INFO
        if log.isEnabledFor(level):  # the line queries the spool: not for 800 members unlogged
            log.log(level, series_log_line(self.spool, series_uid))

    def start(self) -> None:
        """Recover the spool, listen, start the worker and the forwarder. Where any of it fails (a
        --host that is no address here, a port in use) what was started is stopped and the spool
        closed (its lock file was left open, a ResourceWarning at exit) before the error goes up."""
        try:
            self._start()
        except BaseException:
            self.stop_event.set()
            for part in (self.worker, self.forwarder):
                if part is not None and part.is_alive():
                    part.join()
            self.spool.close()
            raise

    def _start(self) -> None:
        recovered = self.spool.recover()
        if recovered["requeued"]:
            log.info("recovered after a crash: %d series queued again", recovered["requeued"])
        if recovered.get("series_renamed"):
            log.info(
                "%d series spooled by an older version moved to this version's folder names",
                recovered["series_renamed"],
            )
        if recovered.get("reopened_whole"):
            log.warning(
                "%d series judged by 0.14.5 to 0.14.7 without the instances an older version had spooled of them: "
                "judged again with all of them when quiet (results in OUT/<UID>_<n>/, the earlier ones superseded)",
                recovered["reopened_whole"],
            )
        if recovered.get("judged_again"):
            log.info(
                "%d series judged on an empty folder by 0.14.5 to 0.14.7 (their instances were under an older name): "
                "judged again when quiet",
                recovered["judged_again"],
            )
        if recovered.get("released_unjudged"):
            log.warning(
                "%d series set aside by 0.14.5 to 0.14.7 as '%s' had their instances released unjudged: now "
                "failed (--status names them); send them again",
                recovered["released_unjudged"],
                NO_INSTANCES,
            )
        rebased = self.spool.rebase_deliveries(self.config.output)
        if rebased:
            log.info("%d result file(s) recorded at another path found under %s", rebased, self.config.output)
        self.scp.start()
        self.worker.start()
        if self.forwarder:
            self.forwarder.start()
        o = self.config.scp
        log.info(
            "listening as %s on %s:%d%s; spool %s; output %s%s",
            o.ae_title,
            o.host,
            self.scp.port,
            " (TLS)" if o.ssl_context else "",
            self.config.spool,
            self.config.output,
            f"; forwarding to {self.config.forward}{' (TLS)' if self.config.forward_tls else ''}"
            if self.config.forward
            else "",
        )

    def install_signal_handlers(self) -> None:
        """SIGTERM, SIGINT and SIGHUP (the terminal gone; not where ignored, as under nohup) stop
        the node cleanly (the current write and segmentation finish)."""
        from ..study import stop_signals

        def handler(signum: int, _frame: Any) -> None:
            log.info("%s received: stopping after the current work", signal.Signals(signum).name)
            self.stop_event.set()

        for s in (*stop_signals(), signal.SIGINT):
            signal.signal(s, handler)

    def wait(self) -> int:
        """Block until stopped; then stop every part; returns the exit status (1 when the worker died)."""
        while not self.stop_event.wait(0.5):
            pass
        return self.stop()

    def stop(self) -> int:
        self.stop_event.set()
        self.scp.stop()
        # the worker finishes the series it is segmenting (its output is renamed into place whole)
        self.worker.join()
        if self.forwarder:
            self.forwarder.wake.set()
            self.forwarder.join()
        self.spool.close()
        if self.worker.error is not None:
            log.error("worker stopped: %s: %s", type(self.worker.error).__name__, self.worker.error)
            return 1
        log.info("stopped cleanly")
        return 0
