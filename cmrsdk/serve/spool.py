"""The spool: received instances on disk and the queue's state in SQLite, both crash-safe.

Layout under the spool directory::

    queue.sqlite            series, instances and deliveries (WAL, synchronous=FULL)
    lock                    held (flock) by the one node that owns the spool
    instances/<series>/     <sop>.dcm files, each fsync'ed before its row is committed (UIDs as
                            file names: :func:`uid_file_name`, one name per UID; files an older
                            version named otherwise are moved there at start, :meth:`Spool.recover`)
    incoming/               instances being received, written as they arrive, renamed into
                            instances/ when stored (:attr:`Spool.incoming`)

A series moves through these states (``--status`` prints them)::

    receiving -> queued -> processing -> forwarding -> done
         \\-> set_aside (not a short-axis cine)      \\-> failed (could not be segmented)

A series whose sender aborted its association, or one with instances refused for space
(``refused``), stays in ``receiving``, held (``interrupted``), until a transfer of it ends
normally; the worker fails it unsegmented after ``--abort-hold``.

A series judged on part of its instances (a transfer cut off and resent after the series
timeout) is judged again: an instance new to a series whose files are still in the spool
(``reopen_window_s`` after its result or verdict) reopens it, and any instance of a failed
series, new or sent before, does so even after its files were released (back to ``receiving``;
result files not yet forwarded are superseded, never sent), and its next result goes to a
folder of its own (:func:`result_name`). Later ones are recorded as late.

A short-axis cine stored one series per slice waits in ``receiving`` until its study is quiet;
the worker then links its files into one stack folder, queued as a series of its own
(``stack.<hash>``), and sets the one-slice series aside as stacked into it
(:meth:`Spool.queue_stack`, :mod:`cmrsdk.serve.stacks`). A new instance of such a member while
its stack's folder is kept (a phase whose transfer failed, sent again) reopens the member with
its earlier files linked back from the stack; it is stacked again with the stack's other members.

Every transition is one committed transaction, so a ``kill -9`` at any moment leaves a state
from which :meth:`Spool.recover` and the worker finish the work: ``processing`` goes back to
``queued``; ``forwarding`` resends the deliveries not yet acknowledged. A delivery acknowledged
by the peer but killed before its row was committed is sent again after restart: it is the same
file with the same SOP Instance UID, so the PACS stores it once.
"""

from __future__ import annotations

import errno
import fcntl
import filecmp
import glob
import hashlib
import os
import re
import shutil
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import CmrError, InputError

__all__ = [
    "Spool",
    "SpoolFull",
    "SpoolBusy",
    "SeriesRow",
    "STATES",
    "read_status",
    "format_status",
    "uid_file_name",
    "result_name",
    "printable",
    "NO_INSTANCES",
    "RELEASED_PART",
    "NOT_A_STACK",
    "STUDY_CUT",
]

STATES = ("receiving", "queued", "processing", "forwarding", "done", "set_aside", "failed")
FINAL_STATES = ("done", "set_aside", "failed")
#: the reason a series is set aside with when its folder holds no instance file
NO_INSTANCES = "no instances left in the spool"
#: the reason's start for a series set aside as no short-axis stack of its own (a slice or two of a
#: cine, a long-axis view): kept for the reopen window as a part its study may still stack
NOT_A_STACK = "not a short-axis stack: "
#: the reason's start for waiting parts failed because a series of their study was cut off (by an
#: aborted transfer, or released for space while it waited; `cmrsdk.serve.stacks`)
STUDY_CUT = "not segmented: a series of its study was cut off"
#: the reason's start for a waiting part (a one- or two-slice series set aside until the rest of
#: its cine came) whose files were released for space: its study's series that come after it fail
#: rather than stack without its slices (`cmrsdk.serve.stacks`); "(study UID)" follows
RELEASED_PART = "released for space before the rest of its study came"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    n_instances INTEGER NOT NULL DEFAULT 0,
    n_late INTEGER NOT NULL DEFAULT 0,
    calling_ae TEXT,
    first_instance_at REAL,
    last_instance_at REAL,
    resumed_at REAL,
    queued_at REAL,
    started_at REAL,
    result_at REAL,
    finished_at REAL,
    phases INTEGER,
    slices INTEGER,
    reason TEXT,
    output TEXT,
    reopened INTEGER NOT NULL DEFAULT 0,
    interrupted INTEGER NOT NULL DEFAULT 0,
    refused INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    received_at REAL NOT NULL,
    purged INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS instances_series ON instances (series_uid);
-- the files still held: what the reopen and release scans look for, among a year of purged rows
CREATE INDEX IF NOT EXISTS instances_kept ON instances (series_uid) WHERE purged = 0;
CREATE TABLE IF NOT EXISTS deliveries (
    path TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    sent_at REAL
);
CREATE INDEX IF NOT EXISTS deliveries_series ON deliveries (series_uid);
-- the few series receiving, queued or waiting among years of finished ones (the gatherer asks each second)
CREATE INDEX IF NOT EXISTS series_state ON series (state);
"""

_UNSAFE = re.compile(r"[^0-9A-Za-z.]")
#: a UID that is its own file name: 1 to 64 letters, digits and dots, no dot at either end
_SAFE_NAME = re.compile(r"[0-9A-Za-z](?:[0-9A-Za-z.]{0,62}[0-9A-Za-z])?")
#: when a receiving series last showed life: its last instance, or the node's restart after it
_QUIET_SINCE = "MAX(last_instance_at, COALESCE(resumed_at, 0))"
#: the states of a stack whose folder of links is released after the reopen window (failed
#: ones too: a slice short of a phase fails, and its links held the members' files for good)
_STACK_RELEASED = ("done", "forwarding", "set_aside", "failed")
#: a series whose verdict may still be revised: its files are kept (stack members' never are)
_REOPENABLE = (
    "state IN ('done', 'forwarding', 'set_aside', 'failed') AND COALESCE(reason, '') NOT LIKE 'stacked into %' "
    "AND EXISTS (SELECT 1 FROM instances i WHERE i.series_uid = series.series_uid AND i.purged = 0)"
)


class SpoolFull(CmrError):
    """The spool has reached its size limit or its disk is full (C-STORE status 0xA700)."""


class SpoolBusy(CmrError):
    """Another node process already owns this spool directory."""


@dataclass(frozen=True)
class SeriesRow:
    """One row of the queue, as ``--status`` prints it."""

    series_uid: str
    state: str
    n_instances: int
    n_late: int
    calling_ae: str | None
    first_instance_at: float | None
    last_instance_at: float | None
    resumed_at: float | None
    queued_at: float | None
    started_at: float | None
    result_at: float | None
    finished_at: float | None
    phases: int | None
    slices: int | None
    reason: str | None
    output: str | None
    #: how many times new instances reopened it after a verdict (its results: `result_name`)
    reopened: int = 0
    #: 1 while its last transfer was aborted by the sender and not yet sent again (`mark_interrupted`)
    interrupted: int = 0
    #: instances of it refused for space (0xA700) since it was last sent whole (`mark_refused`)
    refused: int = 0


def uid_file_name(uid: str) -> str:
    """A UID as a file name, a distinct one for each UID. UIDs are digits and dots, but a sender
    may put anything there, and real (anonymised) data carries invalid ones: never refused here.

    A UID of 1 to 64 letters, digits and dots, with no dot at either end, is its own name (the
    name spools and results always had). Any other has its other characters made ``_``, is cut
    to 64 and stripped of end dots, then ends in ``_h`` and 12 hex digits of its SHA-256: ``U``
    and ``U.``, or two UIDs sharing 64 characters, had one name, so one patient's series took
    another's folder and result. So a name is never ``.`` or ``..``, and never ends in
    ``_<digits>``, the suffix of `result_name`.
    """
    if _SAFE_NAME.fullmatch(uid):
        return uid
    name = _UNSAFE.sub("_", uid)[:64].strip(".")
    digest = hashlib.sha256(uid.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{name}_h{digest}"


def result_name(series_uid: str, reopened: int) -> str:
    """The results folder of a series' verdict: its UID's file name, then ``_2``, ``_3``... for the
    verdicts after new instances reopened it (no `uid_file_name` ends in ``_<digits>``)."""
    return uid_file_name(series_uid) + (f"_{reopened + 1}" if reopened else "")


def printable(text: object) -> str:
    """``text`` as the node logs or prints it: as it is where every character prints, else quoted
    as ``repr`` quotes it, so that a UID or AE title holding a newline or an escape sequence
    (sent by anyone who reaches the port) cannot forge log lines or drive the terminal."""
    shown = str(text)
    return shown if shown.isprintable() else repr(shown)


def _move_file(source: Path, temporary: Path, target: Path) -> None:
    """Move ``source`` to ``target`` durably: fsync'ed, then renamed; from another file system,
    copied to ``temporary`` (in chunks) and renamed, ``source`` left where it is."""
    fd = os.open(source, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(source, target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    shutil.copyfile(source, temporary)
    fd = os.open(temporary, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, target)


def _same_bytes(stored: Path, data: bytes | Path, size: int) -> bool:
    """Whether the file ``stored`` holds exactly ``data`` (bytes, or a file's path) of ``size`` bytes;
    False where it cannot be read."""
    try:
        if stored.stat().st_size != size:
            return False
        if isinstance(data, bytes):
            return stored.read_bytes() == data
        return filecmp.cmp(stored, data, shallow=False)
    except OSError:
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The node's durable state: one instance per spool directory (guarded by a file lock).

    Parameters
    ----------
    directory : the spool directory (created when missing).
    max_bytes : refuse instances once the un-purged instances hold this many bytes (None: no limit).
    min_free_bytes : refuse instances when the file system has less free space than this.
    reopen_window_s : keep a finished series' files this long after its result or verdict, so
        that new instances of it (a transfer cut off and resent) reopen it (0: purge at once;
        failed series' too: any instance of one sent again reopens it). Files so kept are
        released, oldest first, before an instance is refused for space.

    Every method is thread-safe (one SQLite connection behind a lock): the SCP calls
    :meth:`store_instance` from one thread per association while the worker reads the queue.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        max_bytes: int | None = None,
        min_free_bytes: int = 0,
        reopen_window_s: float = 0.0,
    ) -> None:
        self.directory = Path(directory)
        if max_bytes is not None and max_bytes <= 0:
            raise InputError(f"'max_bytes' of the spool must be positive, got {max_bytes}")
        if not reopen_window_s >= 0:
            raise InputError(f"'reopen_window_s' of the spool must be >= 0 seconds, got {reopen_window_s}")
        self.reopen_window_s = float(reopen_window_s)
        self.max_bytes = max_bytes
        self.min_free_bytes = int(min_free_bytes)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / "instances").mkdir(exist_ok=True)
            #: instances being received are written here as they arrive (`cmrsdk.serve.scp.ReceivedFile`):
            #: on the spool's disk, so that storing one renames it into place
            self.incoming = self.directory / "incoming"
            self.incoming.mkdir(exist_ok=True)
            self._lock_file = open(self.directory / "lock", "a+")
        except OSError as exc:  # a read-only or full disk, a path under a file: one line, no traceback
            raise InputError(
                f"spool {self.directory} cannot be written ({exc.strerror or type(exc).__name__}: "
                f"{exc.filename or self.directory}); give --spool a writable folder"
            ) from exc
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lock_file.close()
            raise SpoolBusy(
                f"spool {self.directory} is in use by another cmrsdk serve process (lock held on "
                f"{self.directory / 'lock'})"
            ) from exc
        self._db = sqlite3.connect(str(self.directory / "queue.sqlite"), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed row survives power loss, not just kill -9
        self._db.executescript(_SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(series)")}
        if "reopened" not in columns:  # a spool of 0.8.2
            self._db.execute("ALTER TABLE series ADD COLUMN reopened INTEGER NOT NULL DEFAULT 0")
        if "interrupted" not in columns:  # a spool of 0.9.9 or before
            self._db.execute("ALTER TABLE series ADD COLUMN interrupted INTEGER NOT NULL DEFAULT 0")
        if "refused" not in columns:  # a spool of 0.14.1 or before
            self._db.execute("ALTER TABLE series ADD COLUMN refused INTEGER NOT NULL DEFAULT 0")
        self._lock = threading.RLock()
        self._bytes = self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM instances WHERE purged = 0").fetchone()[0]
        # stacks judged before this were purged by this process already: the next purge skips them
        self._stacks_purged_before: float | None = None
        self._closed = False

    # ---- life cycle -------------------------------------------------------------------
    def recover(self) -> dict[str, int]:
        """Undo what a crash left half-done; returns counts of what was reset.

        Series caught in ``processing`` go back to ``queued`` (their partial output is removed
        by the worker); temporary instance files never committed are removed, and so are the files
        of series set aside (``set_aside_purged``, where any) before their deletion. Series still
        receiving get the full series timeout again from now: their senders saw the
        association fail and need the time to send the rest again.

        A spool written by an older version is brought to this one's names: instance files not
        where `series_folder` and `uid_file_name` put them are moved there (``series_renamed``;
        ``reopened_whole``: judged on part of them; :meth:`_move_to_current_names`), and series
        judged on an empty folder because of that are judged again (``judged_again``,
        ``released_unjudged``: :meth:`_judge_again_misjudged`).
        """
        with self._lock:
            requeued = self._db.execute(
                "UPDATE series SET state = 'queued', started_at = NULL WHERE state = 'processing'"
            ).rowcount
            self._db.execute("UPDATE series SET resumed_at = ? WHERE state = 'receiving'", (time.time(),))
        removed = 0
        for tmp in (self.directory / "instances").glob("*/.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed += 1
        for partial in self.incoming.glob(".receiving-*"):  # instances cut off as they arrived
            partial.unlink(missing_ok=True)
            removed += 1
        renamed, reopened = self._move_to_current_names()
        judged_again, released = self._judge_again_misjudged()
        # stacked into a stack but killed before their files were deleted (the worker's sweep
        # purges the other finished series once their reopen window has passed)
        with self._lock:
            unpurged = [
                r[0]
                for r in self._db.execute(
                    "SELECT DISTINCT s.series_uid FROM series s JOIN instances i ON i.series_uid = s.series_uid "
                    "WHERE s.state = 'set_aside' AND s.reason LIKE 'stacked into %' AND i.purged = 0"
                )
            ]
        for series_uid in unpurged:
            self.purge_instances(series_uid)
        recovered = {"requeued": requeued, "temporary_files_removed": removed}
        counts = {
            "set_aside_purged": len(unpurged),
            "series_renamed": renamed,
            "reopened_whole": reopened,
            "judged_again": judged_again,
            "released_unjudged": released,
        }
        return recovered | {name: n for name, n in counts.items() if n}

    def _move_to_current_names(self) -> tuple[int, int]:
        """Move every kept instance file that is not where this version puts it (`series_folder`,
        then ``uid_file_name(sop) + '.dcm'``) there, its row with it; returns (series moved,
        series reopened).

        0.14.4 and before named a UID that is no safe name (over 64 characters, other characters
        than letters, digits and dots, an end dot) by cutting it to 64, where 0.14.5 adds a hash:
        their spool holds such a series under a folder that `series_folder` no longer names, and
        0.14.5 to 0.14.7 judged it on an empty folder. Moved once here, at start (before the SCP
        and the worker), every part of the node finds the files where it always looks, and the
        series' next instances join them. The rows are the truth: an old folder two UIDs shared
        (0.14.4 gave ``U`` and ``U.`` one name) is split by them, file by file.

        A series judged with files in both folders (an old node received part of it, 0.14.5 to
        0.14.7 the rest, and judged that rest alone: its volumes are wrong) is reopened, to be
        judged again on all of them as a series judged on part of its instances is
        (:meth:`_reopen`: results in ``OUT/<UID>_2/``, its earlier ones superseded or withdrawn).

        Crash-safe, and done again where cut short: each file is renamed (atomic; its folders
        fsync'ed) before the rows are updated, and the reopens made, in one transaction; a row
        whose file is already at its new place (a kill between the two) is only updated. A row
        whose file is in neither place is left as it is.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT sop_uid, series_uid, path FROM instances WHERE purged = 0 AND path != ''"
            ).fetchall()
        moved: list[tuple[str, str]] = []
        series: set[str] = set()
        in_place: set[str] = set()  # series with files in their current folder already
        elsewhere: set[str] = set()  # series with files in another folder
        sources: set[Path] = set()
        targets: set[Path] = set()
        for sop_uid, series_uid, path in rows:
            current = Path("instances", uid_file_name(series_uid), f"{uid_file_name(sop_uid)}.dcm")
            if Path(path).parent == current.parent:
                in_place.add(series_uid)
            if Path(path) == current:
                continue
            source, target = self.directory / path, self.directory / current
            if source.is_file():
                target.parent.mkdir(exist_ok=True)
                os.replace(source, target)
            elif not target.is_file():
                continue
            sources.add(source.parent)
            targets.add(target.parent)
            moved.append((str(current), sop_uid))
            series.add(series_uid)
            if Path(path).parent != current.parent:
                elsewhere.add(series_uid)
        if not moved:
            return 0, 0
        for folder in {*sources, *targets, self.directory / "instances"}:  # the renames, before the rows
            _fsync_dir(folder)
        now = time.time()
        with self._transaction():
            self._db.executemany("UPDATE instances SET path = ? WHERE sop_uid = ?", moved)
            judged = ("done", "forwarding", "set_aside", "failed")
            reopened = [uid for uid in sorted(elsewhere & in_place) if self.series_state(uid) in judged]
            for uid in reopened:
                self._reopen(uid, now, new_instances=0)
        for folder in sources - targets:
            try:
                folder.rmdir()
            except OSError:  # it holds another series' files still (0.14.4 gave two UIDs one name)
                pass
        return len(series), len(reopened)

    def _judge_again_misjudged(self) -> tuple[int, int]:
        """Series 0.14.5 to 0.14.7 judged on an empty folder while their files were in the spool
        under an older version's name (`_move_to_current_names`): set aside as `NO_INSTANCES`, or
        failed as their folder not existing. Those whose files are now in their folder receive
        again (judged when quiet, their first result); a set-aside one whose files were released
        since becomes ``failed``, saying so, so that the series sent again is stored and judged
        (a resend of a set-aside series is a duplicate). Returns (judged again, released)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT s.series_uid, s.state, s.reason, COUNT(*), COALESCE(SUM(i.purged = 0), 0) FROM series s "
                "JOIN instances i ON i.series_uid = s.series_uid "
                "WHERE s.state IN ('set_aside', 'failed') AND (s.reason = ? OR s.reason LIKE ?) AND i.path != '' "
                "GROUP BY s.series_uid",
                (NO_INSTANCES, "<spool>/instances/%: no such file or directory"),
            ).fetchall()
        again, released = [], []
        for series_uid, state, reason, n, kept in rows:
            missing = f"<spool>/instances/{uid_file_name(series_uid)}: no such file or directory"
            if reason not in (NO_INSTANCES, missing):
                continue
            if kept and any(self.series_folder(series_uid).glob("*.dcm")):
                again.append(series_uid)
            elif not kept and state == "set_aside":
                released.append((n, series_uid))
        now = time.time()
        with self._transaction():
            for series_uid in again:
                self._db.execute(
                    "UPDATE series SET state = 'receiving', resumed_at = ?, queued_at = NULL, started_at = NULL, "
                    "result_at = NULL, finished_at = NULL, phases = NULL, slices = NULL, reason = NULL, "
                    "interrupted = 0, refused = 0 WHERE series_uid = ?",
                    (now, series_uid),
                )
            for n, series_uid in released:
                self._db.execute(
                    "UPDATE series SET state = 'failed', reason = ? WHERE series_uid = ?",
                    (
                        f"set aside as '{NO_INSTANCES}' while its {n} instance(s) were in it under an older "
                        "version's folder name (cmrsdk 0.14.5 to 0.14.7), and released since: not segmented; "
                        "send the series again",
                        series_uid,
                    ),
                )
        return len(again), len(released)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction under the lock, committed, or rolled back on any exception: the
        connection is shared, and one left open (a full disk mid-way) made every later BEGIN fail."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT may have ended it already
                    self._db.execute("ROLLBACK")
                raise

    # ---- receiving ----------------------------------------------------------------------
    def has_instance(self, sop_uid: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone() is not None

    def series_state(self, series_uid: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
        return row[0] if row else None

    def store_instance(self, series_uid: str, sop_uid: str, data: bytes | Path, *, calling_ae: str = "") -> str:
        """Write one received instance durably, then record it; returns what was done.

        ``data`` is the instance in the DICOM file format: its bytes, or the path of a file holding
        them (the node's, received into :attr:`incoming`), which is moved into the spool when
        written (renamed, where it is on the spool's file system; else copied, never read whole)
        and otherwise left where it is, for the caller to remove.

        ``"stored"``: written and committed. ``"duplicate"``: this SOP Instance UID was received
        before in this series (acknowledged, nothing written: the same series sent twice is
        processed once). An instance of a series still receiving, or failed with its files kept,
        sent again in other bytes is the sender's correction: it replaces the stored copy
        (``"stored"``, or ``"reopened"`` for the failed series, judged again on the corrections). ``"reused"``: it was received before in another series (an anonymiser
        that keeps SOP Instance UIDs and changes the rest): nothing written.
        ``"reopened"``: a new instance of a series judged before whose files are still kept
        (see ``reopen_window_s``): written, and the series is receiving again, to be judged
        anew with every instance; its result files not yet forwarded are superseded. A series
        being segmented takes the instance too, and goes back to receiving once its result is
        written (:meth:`mark_segmented`). A member of a stack judged (a result, or failed) whose
        folder is kept is reopened too, its earlier files linked back from the stack (:meth:`_relink_member`).
        ``"late"``: a new instance of a series whose files are gone; recorded, not processed.

        Raises
        ------
        SpoolFull : the size limit or the disk's free space would be exceeded (nothing is written).
        """
        now = time.time()
        if isinstance(data, bytes):
            size, on_disk = len(data), False
        else:
            source = os.stat(data)
            # on the spool's own file system its bytes take no more room there once stored
            size, on_disk = source.st_size, source.st_dev == os.stat(self.directory).st_dev
        # one hold of the lock from the state read to the retry: a parallel resend's retry of a
        # failed series deletes its purged rows, and a row read before it was taken for a duplicate
        with self._lock:
            state = self.series_state(series_uid)
            held = self._db.execute(
                "SELECT series_uid, purged, path, bytes FROM instances WHERE sop_uid = ?", (sop_uid,)
            ).fetchone()
            if held is not None and held[0] != series_uid:
                return "reused"
            # a failed series sent again (a full disk, a bug since fixed) gets another try, its files kept or not
            failed = state == "failed"
            # a series refused for its content is sent again corrected under the same UIDs: judged
            # on the old copies, it failed again (sweep 44)
            replacing = (
                held is not None
                and not held[1]
                and (failed or state == "receiving")
                and not _same_bytes(self.directory / held[2], data, size)
            )
            if held is not None and not (failed and held[1]) and not replacing:
                return "reopened" if failed and self._retry_failed(series_uid, now) else "duplicate"
            if (
                not failed
                and state not in (None, "receiving", "queued", "processing")
                and not self.reopenable(series_uid)
            ):
                self._record_late(series_uid, sop_uid, now)
                return "late"
            # before the retry: a resend refused for space leaves the failure as it was
            self._reserve(size, written=on_disk)
            retried = failed and self._retry_failed(series_uid, now)
        folder = self.directory / "instances" / uid_file_name(series_uid)
        target = self.directory / held[2] if replacing else folder / f"{uid_file_name(sop_uid)}.dcm"
        folder = target.parent
        temporary = folder / f".{target.name}.{threading.get_ident()}.tmp"
        try:
            folder.mkdir(exist_ok=True)
            if isinstance(data, bytes):
                with open(temporary, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(temporary, target)
            else:
                _move_file(Path(data), temporary, target)
            _fsync_dir(folder)  # the rename itself must survive a crash before we answer success
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            with self._lock:
                self._bytes -= size
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull(f"spool {self.directory}: disk full writing {target.name} ({exc.strerror})") from exc
            raise
        if replacing:
            with self._transaction():
                self._db.execute(
                    "UPDATE instances SET bytes = ?, received_at = ? WHERE sop_uid = ?", (size, now, sop_uid)
                )
                self._db.execute("UPDATE series SET last_instance_at = ? WHERE series_uid = ?", (now, series_uid))
            with self._lock:
                self._bytes -= held[3]
            return "reopened" if retried else "stored"
        late = False
        with self._transaction():
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO instances (sop_uid, series_uid, path, bytes, received_at) VALUES (?, ?, ?, ?, ?)",
                (sop_uid, series_uid, str(target.relative_to(self.directory)), size, now),
            ).rowcount
            if not inserted:  # the same instance on two associations at once: the other one won
                self._bytes -= size
                return "duplicate"
            state = self.series_state(series_uid)
            outcome = "stored"
            if state == "processing":  # segmented meanwhile: mark_segmented sends it back to receiving
                self._db.execute(
                    "UPDATE series SET n_instances = n_instances + 1, last_instance_at = ? WHERE series_uid = ?",
                    (now, series_uid),
                )
            elif state in (None, "receiving", "queued"):  # a queued series not yet started waits again
                self._db.execute(
                    "INSERT INTO series (series_uid, state, n_instances, calling_ae, first_instance_at, "
                    "last_instance_at) VALUES (?, 'receiving', 1, ?, ?, ?) ON CONFLICT (series_uid) DO UPDATE SET "
                    "state = 'receiving', n_instances = n_instances + 1, last_instance_at = excluded.last_instance_at, "
                    "queued_at = NULL",
                    (series_uid, calling_ae, now, now),
                )
            elif self._db.execute(
                f"SELECT 1 FROM series WHERE series_uid = ? AND {_REOPENABLE}", (series_uid,)
            ).fetchone():
                self._reopen(series_uid, now, new_instances=1)
                outcome = "reopened"
            elif self._relink_member(series_uid):
                self._reopen(series_uid, now, new_instances=1)
                outcome = "reopened"
            else:  # its files (or its stack's) were purged while this one was written: late after all
                self._db.execute("DELETE FROM instances WHERE sop_uid = ?", (sop_uid,))
                late = True
        if late:
            target.unlink(missing_ok=True)
            with self._lock:
                self._bytes -= size
            self._record_late(series_uid, sop_uid, now)
            return "late"
        return "reopened" if retried else outcome

    def _retry_failed(self, series_uid: str, now: float) -> bool:
        """Reopen a failed series for an instance of it sent again; where its files were released
        (`purge_expired`), its instance rows go too, so that the resend is stored anew, not taken
        for duplicates. False where it is no longer failed."""
        with self._transaction():
            failed = self.series_state(series_uid) == "failed"
            if failed:
                self._db.execute("DELETE FROM instances WHERE series_uid = ? AND purged = 1", (series_uid,))
                self._reopen(series_uid, now, new_instances=0)
                self._db.execute(
                    "UPDATE series SET n_late = 0, n_instances = (SELECT COUNT(*) FROM instances WHERE series_uid = ?) "
                    "WHERE series_uid = ?",
                    (series_uid, series_uid),
                )
        return failed

    def reopenable(self, series_uid: str) -> bool:
        """Whether a new instance would reopen this series: its files are kept, or it is a member of a
        judged stack (a result, or failed) whose folder is kept."""
        with self._lock:
            row = self._db.execute(f"SELECT 1 FROM series WHERE series_uid = ? AND {_REOPENABLE}", (series_uid,))
            return row.fetchone() is not None or self._kept_stack_of(series_uid) is not None

    def _kept_stack_of(self, series_uid: str) -> str | None:
        """The stack a set-aside member was stacked into, where that stack was judged (a result, or
        failed: a slice short of a phase fails) and its folder is kept."""
        row = self._db.execute(
            "SELECT s.series_uid FROM series m JOIN series s ON m.reason = 'stacked into ' || s.series_uid "
            "WHERE m.series_uid = ? AND m.state = 'set_aside' AND s.state IN ('done', 'forwarding', 'failed')",
            (series_uid,),
        ).fetchone()
        return row[0] if row and self.series_folder(row[0]).is_dir() else None

    def _relink_member(self, series_uid: str) -> bool:
        """Inside a transaction: link a stacked member's earlier files back from its kept stack's folder
        into its own (hard links, no bytes counted twice), so that it is judged with all its instances
        and stacked again (:mod:`cmrsdk.serve.stacks`); False where the stack or its links are gone."""
        stack = self._kept_stack_of(series_uid)
        if stack is None:
            return False
        prefix = f"{uid_file_name(series_uid)}_"  # the stack's links are named <member>_<file>
        links = list(self.series_folder(stack).glob(f"{glob.escape(prefix)}*.dcm"))
        if not links:
            return False
        folder = self.series_folder(series_uid)
        for link in links:
            target = folder / link.name.removeprefix(prefix)
            if not target.exists():
                try:
                    os.link(link, target)
                except OSError:  # a file system without hard links: a copy
                    shutil.copy2(link, target)
        _fsync_dir(folder)
        return True

    def _reopen(self, series_uid: str, now: float, *, new_instances: int) -> None:
        """Inside a transaction: the series receives again; unsent results of its verdict are superseded."""
        self._db.execute(
            "UPDATE series SET state = 'receiving', n_instances = n_instances + ?, last_instance_at = ?, "
            "queued_at = NULL, started_at = NULL, result_at = NULL, finished_at = NULL, reason = NULL, "
            "reopened = reopened + 1 WHERE series_uid = ?",
            (new_instances, now, series_uid),
        )
        self._db.execute(
            "UPDATE deliveries SET state = 'superseded' WHERE series_uid = ? AND state = 'pending'", (series_uid,)
        )

    def _record_late(self, series_uid: str, sop_uid: str, now: float) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO instances (sop_uid, series_uid, path, bytes, received_at, purged) "
                "VALUES (?, ?, '', 0, ?, 1)",
                (sop_uid, series_uid, now),
            )
            self._db.execute("UPDATE series SET n_late = n_late + 1 WHERE series_uid = ?", (series_uid,))

    def _reserve(self, size: int, *, written: bool = False) -> None:
        """Count ``size`` bytes more in the spool, or raise :class:`SpoolFull`; ``written``: they are
        on its disk already (received into :attr:`incoming`), so its free space is not lowered again."""
        more = 0 if written else size  # what writing them takes from the disk's free space
        with self._lock:
            if self._closed:
                raise SpoolFull(f"spool {self.directory} is closing: the node is stopping")
            if self.max_bytes is not None and self._bytes + size > self.max_bytes:
                self._release_kept(self._bytes + size - self.max_bytes)
            if self.max_bytes is not None and self._bytes + size > self.max_bytes:
                raise SpoolFull(
                    f"spool {self.directory} holds {self._bytes} bytes; {size} more would exceed "
                    f"its limit of {self.max_bytes} bytes (--max-spool-mb)"
                )
            if self.min_free_bytes and os_free_bytes(self.directory) - more < self.min_free_bytes:
                self._release_kept(self.min_free_bytes + more - os_free_bytes(self.directory))
            if self.min_free_bytes:
                free = os_free_bytes(self.directory)
                if free - more < self.min_free_bytes:
                    raise SpoolFull(
                        f"spool {self.directory}: {free} bytes free on its disk, under the "
                        f"{self.min_free_bytes} bytes kept free (--min-free-mb)"
                    )
            self._bytes += size

    def _kept_series(self, before: float | None = None) -> list[str]:
        """Finished series whose files are kept for a reopen, oldest verdict first; with ``before``,
        those whose verdict came before that time. Failed ones too (kept for good, a few of them
        filled the spool and every new study was refused); a resend still retries them (`_retry_failed`)."""
        verdict_at = "COALESCE(result_at, finished_at, 0)"
        with self._lock:
            rows = self._db.execute(
                f"SELECT series_uid FROM series WHERE {_REOPENABLE} AND {verdict_at} <= ? ORDER BY {verdict_at}",
                (float("inf") if before is None else before,),
            ).fetchall()
        return [r[0] for r in rows]

    def _release_kept(self, needed: int) -> None:
        """Purge kept series, oldest verdict first, until ``needed`` bytes are freed (or none are left).

        A waiting part (the first slices of a cine, set aside until the rest came) fails, naming
        its study: released silently, the rest of the cine was stacked without those slices and
        reported done (sweep 46: 10 slices of 12, LVEF 32.77 % for 31.68). Sent again, it is
        stored anew (a failed series' resend is retried, files kept or not)."""
        for series_uid in self._kept_series():
            if needed <= 0:
                return
            with self._lock:
                row = self._db.execute(
                    "SELECT state, reason FROM series WHERE series_uid = ?", (series_uid,)
                ).fetchone()
            study = None
            if row[0] == "set_aside" and (row[1] or "").startswith(NOT_A_STACK):
                from .stacks import study_of  # stacks reads the spool: imported where needed

                study = study_of(self.series_folder(series_uid))
            needed -= self.purge_instances(series_uid)
            if study is not None:
                reason = f"{RELEASED_PART} (study {study}): send the study again whole"
                with self._transaction():
                    self._db.execute(
                        "UPDATE series SET state = 'failed', reason = ?, finished_at = ? WHERE series_uid = ?",
                        (reason, time.time(), series_uid),
                    )

    def purge_expired(self, now: float | None = None) -> list[str]:
        """Purge the finished series (failed ones and stacks too) whose reopen window has passed; returns them."""
        now = time.time() if now is None else now
        before = now - self.reopen_window_s
        verdict_at = "COALESCE(result_at, finished_at, 0)"
        # one hold of the lock, each series checked again before its files go: a resend between
        # the listing and the purge reopened a series whose files (its new one too) were deleted
        # stacks judged before the last purge's cutoff are gone already (all of them read again
        # after a restart, or where the clock went back)
        since = self._stacks_purged_before
        if since is not None and since > before:
            since = None
        with self._lock:
            expired = self._kept_series(before=before)
            expired += [  # stacks: their files are links, without rows of their own
                r.series_uid
                for r in self.kept_stacks(since=since)
                if r.state in _STACK_RELEASED and (r.result_at or r.finished_at or 0) <= before
            ]
            purged = []
            for series_uid in expired:
                still = self._db.execute(
                    f"SELECT 1 FROM series WHERE series_uid = ? AND {verdict_at} <= ? AND ({_REOPENABLE} OR "
                    f"(series_uid LIKE 'stack.%' AND state IN ({', '.join('?' * len(_STACK_RELEASED))})))",
                    (series_uid, before, *_STACK_RELEASED),
                ).fetchone()
                if still:
                    self.purge_instances(series_uid)
                    purged.append(series_uid)
            self._stacks_purged_before = before
        return purged

    @property
    def bytes_held(self) -> int:
        """Bytes of instances in the spool not yet purged."""
        with self._lock:
            return int(self._bytes)

    # ---- the queue ------------------------------------------------------------------------
    def quiet_series(self, timeout_s: float, now: float | None = None) -> list[str]:
        """Series still receiving whose last instance arrived ``timeout_s`` or more ago, oldest first."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT series_uid FROM series WHERE state = 'receiving' AND "
                f"{_QUIET_SINCE} <= ? ORDER BY last_instance_at",
                (now - timeout_s,),
            ).fetchall()
        return [r[0] for r in rows]

    def series_folder(self, series_uid: str) -> Path:
        return self.directory / "instances" / uid_file_name(series_uid)

    def mark_interrupted(self, series_uid: str) -> bool:
        """A sender aborted its association while sending this series: held in ``receiving``, not
        judged when quiet, until a transfer of it ends normally (`clear_interrupted`) or the
        worker gives up on it (`give_up`). False where it is not receiving (judged already)."""
        with self._lock:
            return bool(
                self._db.execute(
                    "UPDATE series SET interrupted = 1 WHERE series_uid = ? AND state = 'receiving'", (series_uid,)
                ).rowcount
            )

    def mark_refused(self, series_uid: str, *, calling_ae: str = "") -> bool:
        """An instance of this series was refused for space (0xA700): the series is cut short, so it
        is held as after an aborted transfer (`mark_interrupted`), counting the refusals, until a
        transfer of it ends with none refused. A series new to the spool gets its row here (its first
        instances refused, the rest stored: judged on part of it otherwise). False where it is not
        receiving or queued."""
        now = time.time()
        with self._lock:
            return bool(
                self._db.execute(
                    "INSERT INTO series (series_uid, state, calling_ae, first_instance_at, last_instance_at, "
                    "interrupted, refused) VALUES (?, 'receiving', ?, ?, ?, 1, 1) ON CONFLICT (series_uid) DO UPDATE "
                    "SET interrupted = 1, refused = refused + 1, state = 'receiving', queued_at = NULL "
                    "WHERE state IN ('receiving', 'queued')",
                    (series_uid, calling_ae, now, now),
                ).rowcount
            )

    def clear_interrupted(self, series_uid: str) -> None:
        """An association that sent instances of this series (new or already held) ended normally."""
        with self._lock:
            self._db.execute("UPDATE series SET interrupted = 0, refused = 0 WHERE series_uid = ?", (series_uid,))

    def give_up(self, series_uid: str, reason: str, *, quiet_since: float) -> bool:
        """Fail a series still receiving and quiet since ``quiet_since`` (one held after an aborted
        transfer) without segmenting it; its files stay, so a new instance reopens it. False when
        an instance came meanwhile."""
        now = time.time()
        with self._lock:
            return bool(
                self._db.execute(
                    "UPDATE series SET state = 'failed', reason = ?, finished_at = ? "
                    f"WHERE series_uid = ? AND state = 'receiving' AND {_QUIET_SINCE} <= ?",
                    (reason, now, series_uid, quiet_since),
                ).rowcount
            )

    def mark_complete(
        self,
        series_uid: str,
        *,
        queue: bool,
        phases: int | None,
        slices: int | None,
        reason: str | None,
        quiet_since: float,
    ) -> bool:
        """Queue a quiet series (or set it aside with ``reason``); False when an instance came meanwhile."""
        with self._transaction():
            changed = self._db.execute(
                "UPDATE series SET state = ?, queued_at = ?, phases = ?, slices = ?, reason = ?, "
                "finished_at = CASE WHEN ? THEN NULL ELSE ? END "
                f"WHERE series_uid = ? AND state = 'receiving' AND {_QUIET_SINCE} <= ?",
                (
                    "queued" if queue else "set_aside",
                    time.time(),
                    phases,
                    slices,
                    reason,
                    queue,
                    time.time(),
                    series_uid,
                    quiet_since,
                ),
            ).rowcount
        return bool(changed)

    def queue_stack(
        self,
        stack_uid: str,
        members: list[str],
        *,
        phases: int,
        slices: int,
        previous: str | None = None,
        restacked: tuple[str, ...] = (),
        rejoined: tuple[str, ...] = (),
    ) -> bool:
        """Queue a stack of one-slice series (its folder already holds their files, linked) and set
        its members aside as stacked into it, in one transaction; False where a member has got a
        new instance meanwhile, or ``previous`` was stacked again meanwhile, or one of ``rejoined``
        was reopened meanwhile (nothing changes then).

        With ``previous``, an earlier stack of the study whose members ``restacked`` are stacked
        again with the late ``members``: they are marked stacked into the new stack, and the
        previous stack's result files not yet forwarded are superseded (never sent). ``rejoined``:
        parts of the study set aside earlier as stacking with nothing, or failed as parts of a study
        cut off (`STUDY_CUT`), their files kept (the first slices of a cine whose
        transfer was cut off and sent again), stacked with the members.
        """
        now = time.time()
        everyone = [*members, *restacked, *rejoined]

        def marks(uids: list[str] | tuple[str, ...]) -> str:
            return ", ".join("?" * len(uids))

        with self._transaction():
            receiving = self._db.execute(
                f"SELECT COUNT(*) FROM series WHERE state = 'receiving' AND series_uid IN ({marks(members)})", members
            ).fetchone()[0]
            still_stacked = self._db.execute(
                f"SELECT COUNT(*) FROM series WHERE reason = ? AND series_uid IN ({marks(restacked)})",
                (f"stacked into {previous}", *restacked),
            ).fetchone()[0]
            still_aside = self._db.execute(
                "SELECT COUNT(*) FROM series WHERE ((state = 'set_aside' AND reason LIKE ?) "
                f"OR (state = 'failed' AND reason LIKE ?)) AND series_uid IN ({marks(rejoined)})",
                (f"{NOT_A_STACK}%", f"{STUDY_CUT}%", *rejoined),
            ).fetchone()[0]
            if receiving != len(members) or still_stacked != len(restacked) or still_aside != len(rejoined):
                return False
            reason = f"a stack of {len(everyone)} one-slice series"
            if previous:
                reason += f", {len(members)} of them after {previous}"
            self._db.execute(
                "INSERT OR REPLACE INTO series (series_uid, state, n_instances, first_instance_at, last_instance_at, "
                "queued_at, phases, slices, reason) SELECT ?, 'queued', SUM(n_instances), MIN(first_instance_at), "
                f"MAX(last_instance_at), ?, ?, ?, ? FROM series WHERE series_uid IN ({marks(everyone)})",
                (stack_uid, now, phases, slices, reason, *everyone),
            )
            self._db.execute(
                f"UPDATE series SET state = 'set_aside', reason = ?, finished_at = ? WHERE series_uid IN ({marks(members)})",
                (f"stacked into {stack_uid}", now, *members),
            )
            if rejoined:  # set aside, or failed as part of a study cut off and now sent again whole
                self._db.execute(
                    f"UPDATE series SET state = 'set_aside', reason = ? WHERE series_uid IN ({marks(rejoined)})",
                    (f"stacked into {stack_uid}", *rejoined),
                )
            if previous:
                self._db.execute(
                    f"UPDATE series SET reason = ? WHERE series_uid IN ({marks(restacked)})",
                    (f"stacked into {stack_uid}", *restacked),
                )
                self._db.execute(
                    "UPDATE series SET reason = ? WHERE series_uid = ?", (f"stacked again into {stack_uid}", previous)
                )
                self._db.execute(
                    "UPDATE deliveries SET state = 'superseded' WHERE series_uid = ? AND state = 'pending'", (previous,)
                )
        return True

    def kept_stacks(self, since: float | None = None) -> list[SeriesRow]:
        """Stacks whose folder of linked files is still in the spool (for late members), oldest first;
        with ``since`` (s since the epoch), only those still open or judged at or after it: the
        ones within the reopen window, without reading the history's others."""
        released = ", ".join("?" * len(_STACK_RELEASED))
        recent = f" AND (state NOT IN ({released}) OR COALESCE(result_at, finished_at, 0) >= ?)"
        with self._lock:
            rows = self._db.execute(
                # a range of the primary key, not LIKE: the index finds the stacks among every series
                f"SELECT {_COLUMNS} FROM series WHERE series_uid >= 'stack.' AND series_uid < 'stack/'"
                f"{recent if since is not None else ''} ORDER BY first_instance_at",
                () if since is None else (*_STACK_RELEASED, since),
            ).fetchall()
        return [SeriesRow(*r) for r in rows if self.series_folder(r[0]).is_dir()]

    def next_queued(self) -> str | None:
        """Move the oldest queued series to ``processing`` and return it (None when the queue is empty)."""
        with self._transaction():
            row = self._db.execute(
                "SELECT series_uid FROM series WHERE state = 'queued' ORDER BY queued_at, rowid LIMIT 1"
            ).fetchone()
            if row:
                self._db.execute(
                    "UPDATE series SET state = 'processing', started_at = ? WHERE series_uid = ?", (time.time(), row[0])
                )
        return row[0] if row else None

    def _grown_while_processing(self, series_uid: str) -> bool:
        row = self._db.execute(
            "SELECT last_instance_at > started_at FROM series WHERE series_uid = ? AND state = 'processing'",
            (series_uid,),
        ).fetchone()
        return bool(row and row[0])

    def sent_and_superseded(self, series_uid: str) -> list[str]:
        """Result files the peer acknowledged for earlier judgements of this series (or for the stack
        it stacked again), not yet withdrawn: what a new result's rejection note withdraws."""
        with self._lock:
            rows = self._db.execute(
                "SELECT path FROM deliveries WHERE state = 'sent' AND (series_uid = ? OR series_uid IN "
                "(SELECT series_uid FROM series WHERE reason = ?)) ORDER BY path",
                (series_uid, f"stacked again into {series_uid}"),
            ).fetchall()
        return [r[0] for r in rows]

    def mark_segmented(
        self,
        series_uid: str,
        *,
        output: Path,
        deliveries: list[Path],
        withdrawn: Sequence[str] = (),
    ) -> str:
        """Record the written results; with deliveries the series waits in ``forwarding``. Returns the new state:
        ``receiving`` where instances arrived while it was segmented (its results are then superseded).
        ``withdrawn``: earlier results its rejection note withdraws (`sent_and_superseded`)."""
        state = "forwarding" if deliveries else "done"
        now = time.time()
        with self._transaction():
            grown = self._grown_while_processing(series_uid)
            for sent in () if grown else withdrawn:  # grown: the next judgement's note withdraws them
                self._db.execute("UPDATE deliveries SET state = 'withdrawn' WHERE path = ? AND state = 'sent'", (sent,))
            for path in deliveries:
                self._db.execute(
                    "INSERT OR IGNORE INTO deliveries (path, series_uid, state) VALUES (?, ?, 'pending')",
                    (str(path), series_uid),
                )
            self._db.execute(
                "UPDATE series SET state = ?, result_at = ?, output = ?, finished_at = ? WHERE series_uid = ?",
                (state, now, str(output), None if deliveries else now, series_uid),
            )
            if grown:
                self._reopen(series_uid, now, new_instances=0)
                state = "receiving"
        return state

    def mark_failed(self, series_uid: str, reason: str) -> str:
        """Record a failure; returns the new state: ``receiving`` where instances arrived while it was
        segmented (it is judged again with them), else ``failed``."""
        now = time.time()
        with self._transaction():
            grown = self._grown_while_processing(series_uid)
            self._db.execute(
                "UPDATE series SET state = 'failed', reason = ?, finished_at = ? WHERE series_uid = ?",
                (reason, now, series_uid),
            )
            if grown:
                self._reopen(series_uid, now, new_instances=0)
        return "receiving" if grown else "failed"

    def set_shape(self, series_uid: str, phases: int, slices: int) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE series SET phases = ?, slices = ? WHERE series_uid = ?", (phases, slices, series_uid)
            )

    def purge_instances(self, series_uid: str) -> int:
        """Delete a finished series' instance files (its rows stay, so a resend is recognised); returns bytes freed."""
        with self._lock:
            rows = self._db.execute(
                "SELECT path, bytes FROM instances WHERE series_uid = ? AND purged = 0", (series_uid,)
            ).fetchall()
        for path, _ in rows:
            (self.directory / path).unlink(missing_ok=True)
        folder = self.series_folder(series_uid)
        if folder.is_dir():
            for leftover in folder.glob("*.dcm"):  # a stack's links to its members' files have no rows
                leftover.unlink(missing_ok=True)
            if not any(folder.iterdir()):
                folder.rmdir()
        freed = sum(size for _, size in rows)
        with self._lock:
            self._db.execute("UPDATE instances SET purged = 1 WHERE series_uid = ?", (series_uid,))
            self._bytes -= freed
        return freed

    # ---- deliveries -------------------------------------------------------------------------
    def due_deliveries(self, now: float | None = None) -> list[tuple[str, str, int]]:
        """(path, series_uid, attempts) of pending deliveries whose back-off has passed, oldest series first."""
        now = time.time() if now is None else now
        with self._lock:
            return [
                tuple(r)
                for r in self._db.execute(
                    "SELECT d.path, d.series_uid, d.attempts FROM deliveries d JOIN series s USING (series_uid) "
                    "WHERE d.state = 'pending' AND d.next_attempt_at <= ? ORDER BY s.result_at, d.path",
                    (now,),
                )
            ]

    def rebase_deliveries(self, output: Path) -> int:
        """Point deliveries whose file is not where recorded at ``output/<result folder>/<file>``, where
        it is: a spool of a node started with a relative --output, restarted from another folder (or
        its results moved). Returns how many were found so."""
        with self._lock:
            rows = self._db.execute("SELECT path FROM deliveries WHERE state IN ('pending', 'sent')").fetchall()
        moved = 0
        for (recorded,) in rows:
            old = Path(recorded)
            found = Path(output) / old.parent.name / old.name  # results are always OUT/<result_name>/<file>
            if not old.is_absolute() or not old.is_file():
                if found.is_file() and str(found) != recorded:
                    with self._lock:
                        moved += self._db.execute(
                            "UPDATE OR IGNORE deliveries SET path = ? WHERE path = ?", (str(found), recorded)
                        ).rowcount
        return moved

    def pending_deliveries(self) -> int:
        """Result files waiting to be forwarded, due or in back-off."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'").fetchone()[0])

    def next_delivery_at(self) -> float | None:
        with self._lock:
            return self._db.execute("SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'pending'").fetchone()[0]

    def mark_delivered(self, path: str) -> str | None:
        """Record an acknowledged delivery; returns the series UID when that completes its series."""
        return self._end_delivery(path, "sent", None)

    def mark_delivery_failed(self, path: str, error: str, retry_in_s: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE path = ?",
                (time.time() + retry_in_s, error[:500], path),
            )

    def mark_undeliverable(self, path: str, error: str) -> str | None:
        """Stop trying a delivery the peer refuses for good (it stores no such object); returns the
        series UID when no delivery of its series is left pending: the series is then ``done``,
        its reason naming what was not forwarded (the file stays in its results folder)."""
        return self._end_delivery(path, "undeliverable", error[:500])

    def _end_delivery(self, path: str, state: str, error: str | None) -> str | None:
        """A pending delivery sent or given up; the last one of its series ends the series
        (``done``, naming the files not forwarded). Returns the series UID when it ended."""
        now = time.time()
        with self._transaction():
            row = self._db.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, "
                "sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END, last_error = COALESCE(?, last_error) "
                "WHERE path = ? AND state = 'pending' RETURNING series_uid",
                (state, state, now, error, path),
            ).fetchone()
            finished = None
            if row:
                left, failed, why = self._db.execute(
                    "SELECT COALESCE(SUM(state = 'pending'), 0), COALESCE(SUM(state = 'undeliverable'), 0), "
                    "MAX(CASE WHEN state = 'undeliverable' THEN last_error END) FROM deliveries WHERE series_uid = ?",
                    (row[0],),
                ).fetchone()
                if not left:
                    self._db.execute(
                        "UPDATE series SET state = 'done', finished_at = ?, reason = COALESCE(?, reason) "
                        "WHERE series_uid = ? AND state = 'forwarding'",
                        (now, f"{failed} result file(s) not forwarded: {why[:300]}" if failed else None, row[0]),
                    )
                    finished = row[0]
        return finished

    # ---- reading ----------------------------------------------------------------------------
    def series(self, series_uid: str) -> SeriesRow | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
        return SeriesRow(*row) if row else None

    def all_series(self) -> list[SeriesRow]:
        """Every series the node has known, oldest first: its whole history (seconds at a million rows)."""
        with self._lock:
            return [
                SeriesRow(*r) for r in self._db.execute(f"SELECT {_COLUMNS} FROM series ORDER BY first_instance_at")
            ]

    def receiving_series(self) -> list[SeriesRow]:
        """The series still receiving, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM series WHERE state = 'receiving' ORDER BY first_instance_at"
            ).fetchall()
        return [SeriesRow(*r) for r in rows]

    def possible_parts(self, released_since: float) -> list[SeriesRow]:
        """Set-aside and failed series that may be part of a study still arriving, oldest first:
        those whose files are kept, and those released for space (`RELEASED_PART`) at or after
        ``released_since`` (s since the epoch). The history's other rows are not read."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM series WHERE state IN ('set_aside', 'failed') AND ("
                "EXISTS (SELECT 1 FROM instances i WHERE i.series_uid = series.series_uid AND i.purged = 0) "
                "OR (substr(reason, 1, ?) = ? AND finished_at >= ?)) ORDER BY first_instance_at",
                (len(RELEASED_PART), RELEASED_PART, released_since),
            ).fetchall()
        return [SeriesRow(*r) for r in rows]

    def stacked_into(self, stack_uid: str) -> list[str]:
        """The series whose files a stack links (their reason "stacked into STACK")."""
        with self._lock:
            rows = self._db.execute(
                "SELECT series_uid FROM series WHERE reason = ? ORDER BY first_instance_at",
                (f"stacked into {stack_uid}",),
            ).fetchall()
        return [r[0] for r in rows]

    def delivery_counts(self, series_uid: str) -> tuple[int, int]:
        """(sent, total) deliveries of a series' current result (superseded and withdrawn ones left out)."""
        with self._lock:
            sent, total = self._db.execute(
                "SELECT COALESCE(SUM(state = 'sent'), 0), COALESCE(SUM(state IN ('sent', 'pending', 'undeliverable')), 0) "
                "FROM deliveries "
                "WHERE series_uid = ?",
                (series_uid,),
            ).fetchone()
        return int(sent), int(total)


_COLUMNS = ", ".join(SeriesRow.__dataclass_fields__)


def os_free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def read_status(directory: str | Path) -> tuple[list[SeriesRow], dict[str, tuple[int, int]]]:
    """The queue of a spool, read-only (works while the node runs): series rows and (sent, total) deliveries."""
    path = Path(directory) / "queue.sqlite"
    if not path.is_file():
        raise InputError(f"--status: {directory} is not a cmrsdk spool (no queue.sqlite in it)")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        columns = _COLUMNS
        present = {r[1] for r in db.execute("PRAGMA table_info(series)")}
        for name in ("reopened", "interrupted", "refused"):  # a spool not opened since 0.8.2 / 0.9.9 / 0.14.1
            if name not in present:
                columns = columns.replace(name, "0")
        rows = [SeriesRow(*r) for r in db.execute(f"SELECT {columns} FROM series ORDER BY first_instance_at")]
        deliveries = {
            uid: (int(sent), int(total))
            for uid, sent, total in db.execute(
                "SELECT series_uid, SUM(state = 'sent'), SUM(state IN ('sent', 'pending', 'undeliverable')) FROM deliveries "
                "GROUP BY series_uid"
            )
        }
    finally:
        db.close()
    return rows, deliveries


def format_status(rows: list[SeriesRow], deliveries: dict[str, tuple[int, int]]) -> Iterator[str]:
    """Lines of ``cmrsdk serve --status``: one per series (patient-free), then counts per state."""
    yield f"{'state':<11} {'instances':>9} {'phases x slices':>15} {'delivered':>9}  {'last instance (UTC)':<19}  series / reason"
    for r in rows:
        sent, total = deliveries.get(r.series_uid, (0, 0))
        shape = f"{r.phases} x {r.slices}" if r.phases else "-"
        last = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.last_instance_at)) if r.last_instance_at else "-"
        extra = f"  ({printable(r.reason)})" if r.reason else ""
        if r.interrupted and r.state == "receiving":
            cut = f"{r.refused} instance(s) refused for space" if r.refused else "its transfer was aborted"
            extra += f"  (held: {cut}; waiting for it to be sent again)"
        late = (f" +{r.n_late} late" if r.n_late else "") + (f" (judged {r.reopened + 1} times)" if r.reopened else "")
        yield (
            f"{r.state:<11} {r.n_instances:>9} {shape:>15} {f'{sent}/{total}':>9}  {last:<19}  "
            f"{printable(r.series_uid)}{late}{extra}"
        )
    counts = {s: sum(r.state == s for r in rows) for s in STATES}
    yield "total: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) if rows else "total: no series"
