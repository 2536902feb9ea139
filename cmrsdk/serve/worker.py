"""The worker: decides when a series is complete, and segments queued series one at a time.

One thread, one :class:`cmrsdk.Pipeline` loaded once. Results are written into a hidden
folder beside the final one and renamed into place, so an output folder either holds a whole
result or does not exist; a series killed mid-segmentation is segmented again after restart.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import CmrError
from ..study import _remove_stale
from .spool import NO_INSTANCES, NOT_A_STACK, Spool, printable, result_name
from .stacks import NOT_SENT_AGAIN, StackGatherer
from .._warn import quiet

__all__ = ["Worker", "SeriesVerdict", "judge_series", "write_study", "warm_up_writers"]

log = logging.getLogger("cmrsdk.serve")

#: ImageType values of localisers and other non-diagnostic images (DICOM PS3.3 C.8.16.1 and vendors').
_LOCALIZER_WORDS = ("LOCALIZER", "SCOUT", "SURVEY")


def write_study(pipeline: Any, source: Path, out_dir: Path) -> dict:
    """Read, segment and write one study: the one place the node calls the per-study writer.

    Every DICOM file it leaves in ``out_dir`` (SEG per phase, SR where written) is forwarded.
    The overlay and the HTML page are left out: a node answers with DICOM, and they would
    lengthen the time from the last instance to the result.
    """
    from ..study import segment_one

    # the report names the folder as the node's log does, not by the node machine's own path
    spooled = f"<spool>/{source.parent.name}/{source.name}"
    return segment_one(pipeline, source, out_dir, overlay=False, report_html=False, source_name=spooled)


def warm_up_writers() -> None:
    """Import what :func:`write_study` writes with (highdicom, matplotlib: seconds each on a busy
    CPU) at start-up, so that the first series' latency does not pay for it."""
    import importlib

    for module in ("highdicom", "cmrsdk.report", "cmrsdk.io.writers", "cmrsdk.io.sr"):
        importlib.import_module(module)


#: a short-axis cine covering less than this (mm, first to last slice) is taken for a part of a
#: cine split over series: a left ventricle is 70-100 mm long, so no whole stack is this short,
#: and a whole one taken for a part only waits for its study before it is segmented alone
PART_SPAN_MM = 50.0


@dataclass(frozen=True)
class SeriesVerdict:
    """What the intake decided of a complete series."""

    queue: bool
    reason: str | None
    phases: int | None
    slices: int | None
    #: a part of a cine split over series (one or two slices, or a short stack): it waits for its
    #: study, to be stacked with the other parts (cmrsdk.serve.stacks); ``queue`` says whether it
    #: is segmented alone where it stacks with nothing
    stackable: bool = False


def judge_series(folder: Path) -> SeriesVerdict:
    """Is the series in ``folder`` a short-axis cine worth segmenting? Reads headers only.

    Set aside, with the reason: other modalities than MR, localisers, fewer than 3 slice
    positions (long-axis views, single slices; a one- or two-slice cine is ``stackable``: it
    waits for the other parts of its study, as does a one-image series, which may be one file of
    a cine stored a SeriesInstanceUID per file), fewer than 2 phases (not a cine), dynamic series
    (perfusion, mapping: one cardiac phase repeated), and series
    whose headers cannot be read or lack the geometry. A short-axis cine spanning less than
    `PART_SPAN_MM` is queued and ``stackable``: a part of a cine split over series of a few
    slices, it waits for the others and is segmented alone where none comes.
    """
    import pydicom

    from ..io import scan_dicom_series

    files = sorted(folder.glob("*.dcm"))
    if not files:
        return SeriesVerdict(False, NO_INSTANCES, None, None)
    try:
        with quiet():  # invalid UIDs and other vendor quirks
            header = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
            modality = str(header.get("Modality", ""))
            image_type = [str(v).upper() for v in (header.get("ImageType") or [])]
    except Exception as exc:  # any header pydicom cannot parse is a reason, never a crash
        return SeriesVerdict(False, f"header of {files[0].name} cannot be read ({type(exc).__name__})", None, None)
    if modality != "MR":
        return SeriesVerdict(False, f"'Modality' (0008,0060) is '{modality}', not 'MR'", None, None)
    if any(word in image_type for word in _LOCALIZER_WORDS):
        value = "\\".join(image_type)
        return SeriesVerdict(False, f"localizer: 'ImageType' (0008,0008) is {value}", None, None)
    try:
        summaries = scan_dicom_series(folder)
    except CmrError as exc:
        return SeriesVerdict(False, f"cannot be read: {exc}", None, None)
    best = summaries[0]
    phases, slices = best.n_phases, best.n_positions
    if slices == 0:
        return SeriesVerdict(False, "no usable geometry (ImagePositionPatient / ImageOrientationPatient)", None, None)
    if slices < 3:
        # one image: perhaps one file of a cine whose files each got their own SeriesInstanceUID
        # (a de-identification tool); its study's one-image series are regrouped as the reader does
        part = (phases >= 2 or best.n_images == 1) and not best.is_dynamic
        return SeriesVerdict(False, f"{NOT_A_STACK}{slices} slice position(s)", phases, slices, part)
    if phases < 2:
        return SeriesVerdict(False, f"not a cine: {phases} phase per slice position", phases, slices)
    why = best.dynamic_reason or best.image_type_reason
    if why:  # perfusion, mapping, PSIR: refused by the reader too (cmrsdk.io.dicom)
        return SeriesVerdict(False, f"not a cine: {why}", phases, slices)
    if best.apex_cos is not None and not best.is_short_axis:
        # an axial or coronal stack, a long-axis set: segmented, it sent volumes of no short-axis stack
        angle = math.degrees(math.acos(min(1.0, best.apex_cos)))
        return SeriesVerdict(
            False,
            f"{NOT_A_STACK}its slice normal lies {angle:.0f} degrees from the heart's usual long axis "
            "(over 46; 'ImageOrientationPatient' (0020,0037)); cmrsdk segment --series reads it where it is one",
            phases,
            slices,
        )
    extent = best.extent_mm
    part = best.is_short_axis and extent is not None and abs(extent[1] - extent[0]) < PART_SPAN_MM
    return SeriesVerdict(True, None, phases, slices, part)


#: the result file that withdraws a series' earlier results from the PACS (cmrsdk.io.rejection)
REJECTION_NOTE = "rejection_note.dcm"


def _write_rejection_note(folder: Path, rejected: list[str]) -> list[str]:
    """Write ``folder/rejection_note.dcm`` withdrawing the ``rejected`` files still on disk; returns
    those it withdraws (none where it cannot be written: the node goes on, and says so)."""
    from ..io.rejection import write_rejection_note

    present = [path for path in rejected if Path(path).is_file()]
    if not present:
        return []
    try:
        write_rejection_note(folder / REJECTION_NOTE, present)
    except CmrError as exc:
        log.warning("rejection note not written, earlier results stay in the PACS: %s", exc)
        return []
    return present


class Worker(threading.Thread):
    """Promotes quiet series to the queue and segments the queue in order, until ``stop`` is set.

    Parameters
    ----------
    spool : the node's spool.
    output : folder under which each series' results go, in a folder named by its series UID.
    load_pipeline : builds the pipeline (called once, in this thread, before the first series);
        the node's also imports the writers (:func:`warm_up_writers`).
    series_timeout_s : a series is complete after this many seconds without a new instance.
    forward : whether results are to be forwarded (the series then waits in ``forwarding``).
    on_final : called with the series UID when a series reaches a final state (for the log line).
    abort_hold_s : a series whose sender aborted its transfer (`Spool.mark_interrupted`) waits
        this long after its last instance to be sent again, then fails unsegmented: what arrived
        is part of a study, and its volumes would be wrong (0: judged on what arrived when quiet).
    """

    def __init__(
        self,
        spool: Spool,
        output: Path,
        load_pipeline: Callable[[], Any],
        *,
        series_timeout_s: float,
        forward: bool,
        stop: threading.Event,
        on_final: Callable[[str], None],
        poll_s: float = 0.25,
        abort_hold_s: float = 600.0,
    ) -> None:
        super().__init__(name="cmrsdk-worker", daemon=True)
        self.spool, self.output, self.load_pipeline = spool, Path(output), load_pipeline
        self.series_timeout_s, self.forward, self.stop, self.on_final = series_timeout_s, forward, stop, on_final
        self.poll_s, self.abort_hold_s = poll_s, float(abort_hold_s)
        self.stacks = StackGatherer(spool, series_timeout_s, on_final, abort_hold=self.abort_hold_s > 0)
        self.pipeline: Any = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self._next_sweep = 0.0

    def run(self) -> None:
        try:
            self.output.mkdir(parents=True, exist_ok=True)
            # a segmentation killed half-way: our folder, and the study writer's own transient ones
            # (an earlier result retired by a swap the kill cut short goes back to its name)
            for partial in self.output.glob(".*.partial"):
                shutil.rmtree(partial, ignore_errors=True)
            _remove_stale(self.output, older_than_s=0.0)
            self.pipeline = self.load_pipeline()
            self.ready.set()
            while not self.stop.is_set():
                self.promote_quiet_series()
                series_uid = self.spool.next_queued()
                if series_uid is None:
                    self.stop.wait(self.poll_s)
                    continue
                self.process(series_uid)
        except BaseException as exc:  # the node stops when its worker cannot go on (logged by the node)
            self.error = exc
            self.ready.set()
            self.stop.set()

    def promote_quiet_series(self) -> None:
        """Queue every series quiet for the timeout, or set it aside saying why."""
        now = time.time()
        for series_uid in self.spool.quiet_series(self.series_timeout_s, now):
            if series_uid in self.stacks.waiting or self._held(series_uid, now):
                continue
            try:
                verdict = judge_series(self.spool.series_folder(series_uid))
            except Exception as exc:  # one sender's odd series must not stop the node
                verdict = SeriesVerdict(False, f"cannot be judged ({type(exc).__name__}: {exc})", None, None)
            if verdict.stackable:  # a part of a cine split over series: waits for its study
                self.stacks.hold(series_uid, queue=verdict.queue, phases=verdict.phases, slices=verdict.slices)
                continue
            if self.spool.mark_complete(
                series_uid,
                queue=verdict.queue,
                phases=verdict.phases,
                slices=verdict.slices,
                reason=verdict.reason,
                quiet_since=now - self.series_timeout_s,
            ):
                if not verdict.queue:
                    self.on_final(series_uid)
        self.stacks.gather(now)
        if now >= self._next_sweep:  # set aside or done, and no longer reopenable
            self.spool.purge_expired()
            self._next_sweep = now + min(self.spool.reopen_window_s, 5.0)

    def _held(self, series_uid: str, now: float) -> bool:
        """Whether a quiet series is held after an aborted transfer (`abort_hold_s`); one held
        past that fails here, unsegmented, saying why."""
        row = self.spool.series(series_uid)
        if row is None or not row.interrupted or self.abort_hold_s <= 0:
            return False
        quiet_since = now - self.abort_hold_s
        if max(row.last_instance_at or 0.0, row.resumed_at or 0.0) > quiet_since:
            return True
        cut = (
            f"{row.refused} of its instances were refused for space (0xA700, --max-spool-mb or --min-free-mb) and "
            if row.refused
            else f"its transfer was aborted after {row.n_instances} instance(s) and "
        )
        reason = (
            f"{cut}{NOT_SENT_AGAIN} {self.abort_hold_s:g} s: not segmented (part of a study gives wrong "
            "volumes); send the series again whole"
        )
        if self.spool.give_up(series_uid, reason, quiet_since=quiet_since):
            self.on_final(series_uid)
        return True

    def process(self, series_uid: str) -> None:
        """Segment one series and record its results; its failure is recorded, never raised.

        The results of a series judged again after new instances reopened it go to a folder of
        their own (`result_name`): the earlier ones were possibly forwarded already."""
        row = self.spool.series(series_uid)
        final = self.output / result_name(series_uid, row.reopened if row else 0)
        partial = self.output / f".{final.name}.partial"
        try:
            withdrawn = self.spool.sent_and_superseded(series_uid) if self.forward else []
            if not final.is_dir():  # a result renamed into place before a crash is kept, not redone
                shutil.rmtree(partial, ignore_errors=True)
                write_study(self.pipeline, self.spool.series_folder(series_uid), partial)
                withdrawn = _write_rejection_note(partial, withdrawn)
                partial.rename(final)
            elif not (final / REJECTION_NOTE).is_file():
                withdrawn = []
        except Exception as exc:  # a bug in a writer must not stop the node: the series fails, the next goes on
            shutil.rmtree(partial, ignore_errors=True)
            reason = str(exc) if isinstance(exc, CmrError) else f"{type(exc).__name__}: {exc}"
            if self.spool.mark_failed(series_uid, reason.replace(str(self.spool.directory), "<spool>")) == "failed":
                self.on_final(series_uid)
            else:
                log.info(
                    "series %s: instances arrived while it was segmented: judged again when quiet",
                    printable(series_uid),
                )
            return
        deliveries = sorted(final.glob("*.dcm")) if self.forward else []
        state = self.spool.mark_segmented(series_uid, output=final, deliveries=deliveries, withdrawn=withdrawn)
        if withdrawn and state != "receiving":
            log.info(
                "series %s: %d earlier result file(s) withdrawn by %s",
                printable(series_uid),
                len(withdrawn),
                REJECTION_NOTE,
            )
        self.spool.purge_expired()
        if state == "done":
            self.on_final(series_uid)
        elif state == "receiving":
            log.info(
                "series %s: instances arrived while it was segmented: its result %s is superseded, judged again "
                "when quiet",
                printable(series_uid),
                final.name,
            )
