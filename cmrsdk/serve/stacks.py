"""Short-axis cines stored one series per slice, stacked at the node.

Many protocols (Siemens's among them) store a short-axis cine one series per slice, one
breath-hold each; judged alone, each is "not a short-axis stack". Such a one-slice cine waits
(:class:`StackGatherer`) in ``receiving`` until every waiting series of its study has been quiet
for the series timeout and no other series of the study is still arriving. Their files are then
linked into one folder that :func:`cmrsdk.io.read_dicom_study` reads as one stack (three or more
one-slice cine series of the study with the same orientation, pixel size and matrix), queued as
a series of its own (``stack.<hash>``, its results under that name); what does not stack is set
aside with the one-slice reason. The hard links keep the files while the members are purged; the
spool's byte count drops with the members' purge, before the stack's files are freed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from ..errors import CmrError
from .spool import Spool

__all__ = ["ONE_SLICE_REASON", "StackGatherer", "stack_uid", "study_of"]

#: the reason a one-slice series is set aside with when it stacks with nothing
ONE_SLICE_REASON = "not a short-axis stack: 1 slice position(s)"


def study_of(folder: Path) -> str:
    """StudyInstanceUID of a series folder's first instance ('' where none can be read)."""
    import pydicom

    for file in sorted(folder.glob("*.dcm")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return str(pydicom.dcmread(str(file), stop_before_pixels=True).get("StudyInstanceUID", "") or "")
        except Exception:  # an unreadable instance: try the next
            continue
    return ""


def stack_uid(members: list[str]) -> str:
    """The queue's name for a stack: ``stack.`` and a hash of the one-slice series gathered for it (UID-safe)."""
    return "stack." + hashlib.sha256("+".join(sorted(members)).encode()).hexdigest()[:24]


class StackGatherer:
    """The one-slice cine series waiting for their study, and the stacks made of them.

    Parameters
    ----------
    spool : the node's spool.
    timeout_s : the series timeout: a study is quiet when its waiting series have had no
        instance for this long and none of its other series is still receiving.
    on_final : called with each series UID set aside here.
    """

    def __init__(self, spool: Spool, timeout_s: float, on_final: Callable[[str], None]) -> None:
        self.spool, self.timeout_s, self.on_final = spool, timeout_s, on_final
        self.waiting: dict[str, str] = {}  # series UID -> its study UID
        self._studies: dict[str, str] = {}  # receiving series UID -> study UID (read once)

    def hold(self, series_uid: str) -> None:
        """Let a one-slice cine series wait for the rest of its study."""
        self.waiting[series_uid] = self._study(series_uid)

    def _study(self, series_uid: str) -> str:
        if series_uid not in self._studies:
            self._studies[series_uid] = study_of(self.spool.series_folder(series_uid))
        return self._studies[series_uid]

    def gather(self, now: float | None = None) -> list[str]:
        """Stack every quiet study's waiting series; returns the stacks queued."""
        if not self.waiting:
            return []
        now = time.time() if now is None else now
        rows = {r.series_uid: r for r in self.spool.all_series() if r.state == "receiving"}
        for uid in [u for u in self.waiting if u not in rows]:  # handled meanwhile (none today): forget it
            del self.waiting[uid]
        self._studies = {u: s for u, s in self._studies.items() if u in rows}
        arriving = {self._study(u) for u in rows if u not in self.waiting}
        queued = []
        for study in sorted(set(self.waiting.values())):
            members = sorted(u for u, s in self.waiting.items() if s == study)
            quiet = all(
                now - max(rows[u].last_instance_at or 0.0, rows[u].resumed_at or 0.0) >= self.timeout_s for u in members
            )
            if not quiet or study in arriving:
                continue
            made = self._stack(members)
            for uid in members:
                self.waiting.pop(uid, None)
                self._studies.pop(uid, None)
            if made is not None:
                queued.append(made)
        return queued

    def _stack(self, members: list[str]) -> str | None:
        """Link the members into one folder and queue it where it reads as a stack; set aside the rest."""
        from ..io import scan_dicom_series

        name = stack_uid(members)
        folder = self.spool.series_folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        for uid in members:
            for file in self.spool.series_folder(uid).glob("*.dcm"):
                target = folder / f"{uid}_{file.name}"  # '_' is in no UID: a member's links by prefix
                if not target.exists():  # a restart may find the links made before it
                    try:
                        os.link(file, target)
                    except OSError:  # a file system without hard links: a copy
                        shutil.copy2(file, target)
        try:
            best = scan_dicom_series(folder)[0]
        except (CmrError, IndexError):
            best = None
        stacked = [] if best is None or "+" not in best.series_uid or best.is_dynamic else best.series_uid.split("+")
        stacked = [uid for uid in stacked if uid in members]
        if len(stacked) >= 3:
            for uid in set(members) - set(stacked):  # same study, another geometry: not in this stack
                for link in folder.glob(f"{uid}_*"):
                    link.unlink()
            phases, slices = (best.n_phases, best.n_positions) if best is not None else (0, 0)
            if self.spool.queue_stack(name, stacked, phases=phases, slices=slices):
                for uid in stacked:
                    self.spool.purge_instances(uid)
                    self.on_final(uid)
            else:  # an instance came meanwhile: its series is judged again when quiet
                shutil.rmtree(folder, ignore_errors=True)
                return None
        else:
            shutil.rmtree(folder, ignore_errors=True)
            stacked = []
        for uid in sorted(set(members) - set(stacked)):
            row = self.spool.series(uid)
            quiet_since = 0.0 if row is None else max(row.last_instance_at or 0.0, row.resumed_at or 0.0)
            if self.spool.mark_complete(
                uid, queue=False, phases=None, slices=1, reason=ONE_SLICE_REASON, quiet_since=quiet_since
            ):
                self.spool.purge_instances(uid)
                self.on_final(uid)
        return name if stacked else None
