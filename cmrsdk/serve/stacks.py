"""Short-axis cines stored one series per slice (or per few slices), stacked at the node.

Many protocols (Siemens's among them) store a short-axis cine one series per slice, one
breath-hold each; judged alone, each is "not a short-axis stack". Others store two or three
slices per breath-hold, each part a short stack that alone would give a fraction of the
ventricles. Such a part (one or two slices, or a short-axis cine spanning less than
`cmrsdk.serve.worker.PART_SPAN_MM`) waits (:class:`StackGatherer`) in ``receiving`` until every
waiting series of its study has been quiet for the series timeout and no other series of the
study is still arriving. Their files are then linked into one folder that
:func:`cmrsdk.io.read_dicom_study` reads as one stack (parts of the study with the same
orientation, pixel size, matrix and phase count, at different positions, three or more in all),
queued as a series of its own (``stack.<hash>``, its results under that name); a part of three
or more slices that stacks with nothing is segmented alone, the rest is set aside with its
reason. A one-image series waits too (one file of a cine whose every file has its own
SeriesInstanceUID); where each file has its own StudyInstanceUID as well, such series are
gathered by patient (PatientID and PatientName) instead of study. The hard links keep the files while the members are purged; the
spool's byte count drops with the members' purge, before the stack's files are freed.

A stack's folder is kept for the spool's reopen window after its result. One-slice series of
the study arriving in that time (a scanner sending each breath-hold as it is reconstructed, with
a pause longer than the timeout; a slice acquired again) are stacked with the earlier stack's
members into a new stack, judged as a whole (where a slice position comes twice, the later
series is read, see :func:`cmrsdk.io.read_dicom_study`); the earlier stack's unsent results are
superseded. So is a member that gets a new instance in that time (a phase sent again after a
failed transfer): the spool reopens it with its earlier files (:meth:`Spool.store_instance`),
and it waits here like a new one-slice series.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import CmrError
from .spool import NOT_A_STACK, RELEASED_PART, STUDY_CUT, SeriesRow, Spool, printable, uid_file_name
from .._warn import quiet

__all__ = ["ONE_SLICE_REASON", "STUDY_CUT", "StackGatherer", "stack_uid", "study_of"]

#: the reason a one-slice series is set aside with when it stacks with nothing
ONE_SLICE_REASON = f"{NOT_A_STACK}1 slice position(s)"

#: the prefix of a group of one-image series gathered by patient, not study (`StackGatherer._groups`)
_PATIENT = "patient:"

#: in the reason of a series failed after an aborted transfer (`cmrsdk.serve.worker.Worker`)
NOT_SENT_AGAIN = "not sent again within"


def study_of(folder: Path) -> str:
    """StudyInstanceUID of a series folder's first instance ('' where none can be read)."""
    return _first_header(folder, "StudyInstanceUID")


def patient_of(folder: Path) -> str:
    """'PatientID | PatientName' of a series folder's first instance (' | ' where none can be read)."""
    return f"{_first_header(folder, 'PatientID')} | {_first_header(folder, 'PatientName')}"


def _first_header(folder: Path, keyword: str) -> str:
    import pydicom

    for file in sorted(folder.glob("*.dcm")):
        try:
            with quiet():
                return str(pydicom.dcmread(str(file), stop_before_pixels=True).get(keyword, "") or "").strip()
        except Exception:  # an unreadable instance: try the next
            continue
    return ""


def stack_uid(members: list[str], after: str | None = None) -> str:
    """The queue's name for a stack: ``stack.`` and a hash of the one-slice series gathered for it
    and of the stack it replaces, ``after`` (a member reopened by a new instance stacks again with
    the same members), UID-safe."""
    key = "+".join(sorted(members)) + (f"@{after}" if after else "")
    return "stack." + hashlib.sha256(key.encode()).hexdigest()[:24]


class StackGatherer:
    """The one-slice cine series waiting for their study, and the stacks made of them.

    Parameters
    ----------
    spool : the node's spool.
    timeout_s : the series timeout: a study is quiet when its waiting series have had no
        instance for this long and none of its other series is still receiving.
    on_final : called with each series UID set aside here.
    abort_hold : whether the node holds a series whose transfer was aborted (``--abort-hold``
        above 0): a waiting series whose association is aborted then leaves the wait, to be
        held (`cmrsdk.serve.worker.Worker`) rather than stacked with the study's other parts.
    """

    def __init__(
        self, spool: Spool, timeout_s: float, on_final: Callable[[str], None], *, abort_hold: bool = False
    ) -> None:
        self.spool, self.timeout_s, self.on_final, self.abort_hold = spool, timeout_s, on_final, abort_hold
        self.waiting: dict[str, str] = {}  # series UID -> its study UID
        # waiting series -> (segmented alone where it stacks with nothing, phases, slice positions)
        self._parts: dict[str, tuple[bool, int | None, int]] = {}
        self._studies: dict[str, str] = {}  # receiving series UID -> study UID (read once)
        self._patients: dict[str, str] = {}  # receiving series UID -> patient (read once, where asked)
        self._stack_studies: dict[str, str] = {}  # kept stack -> its study UID (read once)
        self._earlier_keys: dict[str, tuple[str, str]] = {}  # judged series -> (study, patient) (read once)

    def hold(self, series_uid: str, *, queue: bool = False, phases: int | None = None, slices: int | None = 1) -> None:
        """Let a part of a cine wait for the rest of its study; with ``queue`` it is segmented alone
        (``phases`` x ``slices``) where it stacks with nothing, otherwise set aside."""
        self.waiting[series_uid] = self._study(series_uid)
        self._parts[series_uid] = (queue, phases, slices or 1)

    def _study(self, series_uid: str) -> str:
        if series_uid not in self._studies:
            self._studies[series_uid] = study_of(self.spool.series_folder(series_uid))
        return self._studies[series_uid]

    def gather(self, now: float | None = None) -> list[str]:
        """Stack every quiet study's waiting series; returns the stacks queued."""
        if not self.waiting:
            return []
        now = time.time() if now is None else now
        rows = {r.series_uid: r for r in self.spool.receiving_series()}
        for uid in [u for u in self.waiting if u not in rows]:  # handled meanwhile (none today): forget it
            del self.waiting[uid]
            self._parts.pop(uid, None)
        for uid in [u for u in self.waiting if self.abort_hold and rows[u].interrupted]:
            # quiet before its association was aborted (a cine's first files): held, not stacked
            del self.waiting[uid]
            self._parts.pop(uid, None)
        self._studies = {u: s for u, s in self._studies.items() if u in rows}
        self._patients = {u: p for u, p in self._patients.items() if u in rows}
        others = [u for u in rows if u not in self.waiting]
        arriving = {self._study(u) for u in others}
        queued = []
        for group, members in sorted(self._groups().items()):
            quiet = all(
                now - max(rows[u].last_instance_at or 0.0, rows[u].resumed_at or 0.0) >= self.timeout_s for u in members
            )
            if not quiet or any(self.waiting[u] in arriving for u in members):
                continue
            if group.startswith(_PATIENT) and group[len(_PATIENT) :] in {self._patient(u) for u in others}:
                continue  # more of the patient's files are still arriving
            previous = None if group.startswith(_PATIENT) else self._previous_stack(group)
            if previous is not None and previous.state in ("queued", "processing"):
                continue  # stacked with its result, once there is one
            aside, cut = self._earlier(group)
            if cut:  # the rest of a cine whose transfer was aborted: no whole heart (sweep 46)
                self._fail(members, cut, now)
                made = []
            else:
                made = self._stack(members, previous, aside)
            for uid in members:
                self.waiting.pop(uid, None)
                self._studies.pop(uid, None)
                self._patients.pop(uid, None)
            queued += made
        return queued

    def _groups(self) -> dict[str, list[str]]:
        """The waiting series by study. A study of one waiting one-image series and no earlier stack
        (every file its own StudyInstanceUID too: ``dcmodify -gst -gse``) joins its patient's
        others, keyed `_PATIENT` + `patient_of`; the reader regroups them by geometry, patient
        and series attributes, and refuses two acquisitions that collide."""
        by_study: dict[str, list[str]] = {}
        for uid, study in self.waiting.items():
            by_study.setdefault(study, []).append(uid)
        stacked = self._previous_stacks()
        groups: dict[str, list[str]] = {}
        for study, members in by_study.items():
            lone = len(members) == 1 and self._parts.get(members[0], (False, None, 1))[1] == 1  # one image
            if lone and study not in stacked:
                groups.setdefault(_PATIENT + self._patient(members[0]), []).extend(members)
            else:
                groups.setdefault(study, []).extend(members)
        return {group: sorted(members) for group, members in groups.items()}

    def _earlier(self, group: str) -> tuple[list[str], list[str]]:
        """Series of ``group`` (a study, or `_PATIENT` and a patient) judged before, their files
        kept for the reopen window: (parts to stack with the waiting ones, series cut off).

        Parts: set aside as stacking with nothing (a cine's first slices, judged before the rest
        came; a transfer cut off and sent again whole makes the resent copies of those slices
        duplicates: sweep 45 lost them and stacked the rest as a whole heart), or failed because
        their study was cut off (`STUDY_CUT`). Cut off: failed after an aborted transfer
        (``--abort-hold``), whose slices the rest of the study lacks (sweep 46: the other 200
        images of a per-file cine reported done, LVEF 26.4 % for 31.7), or a part of the study
        released for space within the reopen window (`RELEASED_PART`; by study, not patient)."""
        parts: list[str] = []
        cut: list[str] = []
        window_from = time.time() - self.spool.reopen_window_s
        for row in self.spool.possible_parts(released_since=window_from):
            reason = row.reason or ""
            if row.state == "failed" and reason.startswith(RELEASED_PART):
                # a part whose files went for space (`Spool._release_kept`): its slices are gone,
                # and within the reopen window its study's rest is not a whole heart either
                if f"(study {group})" in reason and (row.finished_at or 0.0) >= window_from:
                    cut.append(row.series_uid)
                continue
            part = (row.state == "set_aside" and reason.startswith(NOT_A_STACK)) or (
                row.state == "failed" and reason.startswith(STUDY_CUT)
            )
            aborted = row.state == "failed" and NOT_SENT_AGAIN in reason
            if not (part or aborted):
                continue
            folder = self.spool.series_folder(row.series_uid)
            if not any(folder.glob("*.dcm")):
                continue
            if row.series_uid not in self._earlier_keys:
                self._earlier_keys[row.series_uid] = (study_of(folder), patient_of(folder))
            study, patient = self._earlier_keys[row.series_uid]
            if group in (study, _PATIENT + patient):
                (parts if part else cut).append(row.series_uid)
        return parts, cut

    def _fail(self, members: list[str], cut: list[str], now: float) -> None:
        """Fail the waiting ``members`` of a study whose series ``cut`` failed after an aborted
        transfer or were released for space; their files stay, so the study sent again whole
        reopens and stacks them all."""
        rows = [self.spool.series(uid) for uid in cut]
        released = all(row is not None and (row.reason or "").startswith(RELEASED_PART) for row in rows)
        how = ", released for space while it waited" if released else " by an aborted transfer"
        reason = (
            f"{STUDY_CUT}{how} ({len(cut)} series failed, {printable(cut[0])} among them): part of a cine gives "
            "wrong volumes; send the study again whole"
        )
        for uid in members:
            self._parts.pop(uid, None)
            if self.spool.give_up(uid, reason, quiet_since=now - self.timeout_s):
                self.on_final(uid)

    def _patient(self, series_uid: str) -> str:
        if series_uid not in self._patients:
            self._patients[series_uid] = patient_of(self.spool.series_folder(series_uid))
        return self._patients[series_uid]

    def _previous_stack(self, study: str) -> SeriesRow | None:
        """The latest stack of ``study`` whose files are kept (a failed one too: the slice it lacked
        may be what came), or None."""
        return self._previous_stacks().get(study)

    def _previous_stacks(self) -> dict[str, SeriesRow]:
        """`_previous_stack` of every study that has one."""
        found = {}
        for row in self.spool.kept_stacks(since=time.time() - self.spool.reopen_window_s):
            if (row.reason or "").startswith("stacked again into"):
                continue
            if row.series_uid not in self._stack_studies:
                self._stack_studies[row.series_uid] = study_of(self.spool.series_folder(row.series_uid))
            found[self._stack_studies[row.series_uid]] = row
        return found

    def _stack(self, members: list[str], previous: SeriesRow | None = None, aside: Sequence[str] = ()) -> list[str]:
        """Link the members (and the ``previous`` stack's files, and the set-aside parts ``aside``)
        into one folder and queue it where it reads as a stack, and any other short-axis cine of the
        members in a folder of its own (two patients' per-file cines in one study); set aside the
        rest. Returns the stacks queued."""
        from ..io import scan_dicom_series

        earlier: list[str] = []
        if previous is not None:
            earlier = self.spool.stacked_into(previous.series_uid)
        name = stack_uid([*members, *earlier, *aside], after=previous.series_uid if previous is not None else None)
        folder = self.spool.series_folder(name)
        self._link(folder, [*members, *aside], previous)
        try:
            summaries = scan_dicom_series(folder)
        except CmrError:
            summaries = []
        best = summaries[0] if summaries else None
        stacked = [] if best is None or len(best.parts) < 2 or best.is_dynamic else list(best.parts)
        # a slice position acquired twice: the later series is read, the earlier still belongs to the stack
        restacked = tuple(earlier) if set(earlier) & set(stacked) else ()
        rejoined = tuple(uid for uid in stacked if uid in aside)
        stacked = [uid for uid in stacked if uid in members]
        made: list[str] = []
        # three slice positions in all, from two series or more (a stack's parts, or one-slice series)
        if (
            best is not None
            and best.n_positions >= 3
            and len(stacked) + len(restacked) + len(rejoined) >= 2
            and stacked
        ):
            for uid in set(members) - set(stacked) | set(aside) - set(rejoined):  # another geometry: not in it
                # exactly its links: a glob of its prefix also matched a member named '<its name>_...'
                for file in self.spool.series_folder(uid).glob("*.dcm"):
                    (folder / f"{uid_file_name(uid)}_{file.name}").unlink(missing_ok=True)
            if self.spool.queue_stack(
                name,
                stacked,
                phases=best.n_phases,
                slices=best.n_positions,
                previous=previous.series_uid if restacked and previous else None,
                restacked=restacked,
                rejoined=rejoined,
            ):
                for uid in [*stacked, *rejoined]:
                    self.spool.purge_instances(uid)
                    self.on_final(uid)
                if restacked and previous is not None:
                    self.spool.purge_instances(previous.series_uid)  # its files are linked into the new stack
                made.append(name)
            else:  # an instance came meanwhile: its series is judged again when quiet
                shutil.rmtree(folder, ignore_errors=True)
                return []
        else:
            shutil.rmtree(folder, ignore_errors=True)
            stacked = []
        taken, pending = set(stacked), set[str]()
        for other in summaries[1:]:  # another patient's cine, each file its own series, in the same study
            parts = [uid for uid in other.parts if uid in members and uid not in taken | pending]
            if len(parts) < 2 or len(parts) != len(other.parts) or not (other.is_sax_cine and other.is_short_axis):
                continue
            queued = self._stack_alone(parts, other.n_phases, other.n_positions)
            if queued is None:  # an instance came meanwhile: judged again when quiet
                pending.update(parts)
            else:
                made.append(queued)
                taken.update(parts)
        for uid in sorted(set(members) - taken - pending):
            row = self.spool.series(uid)
            quiet_since = 0.0 if row is None else max(row.last_instance_at or 0.0, row.resumed_at or 0.0)
            alone, part_phases, part_slices = self._parts.pop(uid, (False, None, 1))
            if alone:  # a short stack that stacked with nothing: segmented as it is
                self.spool.mark_complete(
                    uid, queue=True, phases=part_phases, slices=part_slices, reason=None, quiet_since=quiet_since
                )
                continue
            reason = f"{NOT_A_STACK}{part_slices} slice position(s)"  # ONE_SLICE_REASON for one
            if self.spool.mark_complete(
                uid, queue=False, phases=None, slices=part_slices, reason=reason, quiet_since=quiet_since
            ):
                if self.spool.reopen_window_s <= 0:  # else kept: the rest of its cine may come (`_set_aside_parts`)
                    self.spool.purge_instances(uid)
                self.on_final(uid)
        for uid in taken:
            self._parts.pop(uid, None)
        return made

    def _stack_alone(self, parts: list[str], phases: int, slices: int) -> str | None:
        """Queue ``parts`` as a stack of their own (their files linked into its folder); None where
        one of them got an instance meanwhile."""
        name = stack_uid(parts)
        folder = self.spool.series_folder(name)
        self._link(folder, parts, None)
        if not self.spool.queue_stack(name, parts, phases=phases, slices=slices):
            shutil.rmtree(folder, ignore_errors=True)
            return None
        for uid in parts:
            self.spool.purge_instances(uid)
            self.on_final(uid)
        return name

    def _link(self, folder: Path, members: list[str], previous: SeriesRow | None) -> None:
        """Hard-link the members' files (and the ``previous`` stack's) into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        # a member's links by prefix, its UID's file name (a UID is a sender's text: '/' or '..' in it)
        sources = [(self.spool.series_folder(uid).glob("*.dcm"), f"{uid_file_name(uid)}_") for uid in members]
        if previous is not None:  # its links are named <member>_<file> already
            sources.append((self.spool.series_folder(previous.series_uid).glob("*.dcm"), ""))
        for files, prefix in sources:
            for file in files:
                target = folder / f"{prefix}{file.name}"
                if not target.exists():  # a restart may find the links made before it
                    try:
                        os.link(file, target)
                    except OSError:  # a file system without hard links: a copy
                        shutil.copy2(file, target)
