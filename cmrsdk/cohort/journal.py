"""The batch journal: one JSON line per finished study, appended and synced before the next.

``OUT/journal.jsonl`` is the truth of a batch; ``measures.csv`` is rebuilt from it. A study's
line is written only after its output folder is in place, so a crash at any moment loses at
most the studies in flight. A line cut short by a crash is dropped when the journal is opened.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError, WriteError

__all__ = ["Journal", "JOURNAL_NAME", "LOCK_NAME"]

JOURNAL_NAME = "journal.jsonl"
LOCK_NAME = ".batch.lock"


class Journal:
    """The append-only record of a batch's finished studies, held under an exclusive lock.

    Parameters
    ----------
    folder : the batch's output folder (created when missing).

    Raises
    ------
    InputError : another process holds the folder's lock (a batch is already writing there).

    Each record is a JSON object with at least ``study_id``, ``key`` (bundle + options) and
    ``status``; the last record of a study wins.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(f"output folder '{self.folder}' cannot be created: {exc.strerror}") from exc
        # flock dies with its process, so a SIGKILLed batch never leaves a stale lock behind
        try:
            self._lock = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # another user's output folder: one line, before any work
            raise WriteError(
                f"output folder '{self.folder}' cannot be written ({exc.strerror or exc}: {LOCK_NAME}); "
                "choose another -o"
            ) from exc
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise InputError(
                f"output folder '{self.folder}' is in use by another cmrsdk batch "
                f"(it holds {self.folder / LOCK_NAME}); wait for it or choose another -o"
            ) from None
        self.path = self.folder / JOURNAL_NAME
        self.records: dict[str, dict[str, Any]] = {}
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            os.close(self._lock)
            raise WriteError(
                f"output folder '{self.folder}' cannot be written ({exc.strerror or exc}: {JOURNAL_NAME}); "
                "choose another -o"
            ) from exc
        self._load()

    def _load(self) -> None:
        data = b""
        with open(self.path, "rb") as handle:
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            os.ftruncate(self._fd, len(complete))  # the crash cut the last line short
        for line in complete.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn line in the middle can only come from outside; keep the rest
            if isinstance(record, dict) and "study_id" in record:
                self.records[str(record["study_id"])] = record

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably (one write call, then fsync) and remember it.

        Ctrl-C, SIGTERM and SIGHUP wait until both are done: a stop that came between the write
        and the remembering left a study "ok" in the journal and "not run" in the table written
        on the way out (the test stopping a batch at its first journal line caught it).
        """
        line = (json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n").encode()
        with _signals_held():
            written = os.write(self._fd, line)
            if written != len(line):
                raise WriteError(f"{self.path}: short write ({written} of {len(line)} bytes); is the disk full?")
            os.fsync(self._fd)
            self.records[str(record["study_id"])] = record

    def close(self) -> None:
        """Release the journal and the folder's lock."""
        for fd in (self._fd, self._lock):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def _signals_held() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP are noted, not acted on, and raised again when
    it ends; in the main thread only, where Python runs signal handlers. The Python handlers are
    swapped rather than the signals blocked: a process with other threads (Ray's, pytest-xdist's)
    takes a signal on any thread that does not block it, and Python still runs the handler in the
    main thread (the full suite caught a stop that a blocked main thread let through)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def note(signum: int, frame: object) -> None:
        caught.append(signum)

    previous = {}
    for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        handler = signal.getsignal(stop)
        if handler is not None and handler is not signal.SIG_IGN:  # None: set outside Python, kept
            previous[stop] = signal.signal(stop, note)
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)
