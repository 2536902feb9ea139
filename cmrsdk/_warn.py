"""cmrsdk's warnings inside a host's process, from any number of threads.

Python's ``warnings.catch_warnings`` swaps process-wide state: entered and left by several
threads at once it leaves one thread's filters behind for good, and while it records it takes
every thread's warnings (sweep 36: a pool of four threads reading DICOM left an "ignore"
filter that silenced every warning of the host, and ``segment_one`` in a thread swallowed 97 %
of the host's own). So cmrsdk does not use it on the paths a host calls:

- :func:`warn` issues a :class:`~cmrsdk.errors.CmrWarning`; where the calling thread has opened
  :func:`collect` (``segment_one`` writes them into report.json) it goes there, and nowhere else;
- :func:`quiet` silences third-party notices about the input (pydicom's "Invalid value for VR
  UI" and other vendor quirks, as warnings and as log records) while a short block runs: its
  filter swap is serialised by one process-wide lock, so cmrsdk's threads never interleave
  theirs, and the log records are dropped for the calling thread only.

A warning that pydicom, highdicom or nibabel issue in a host's own thread while another thread is
inside :func:`quiet` goes unseen: Python 3.11 offers no per-thread filters.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from .errors import CmrWarning

__all__ = ["warn", "collect", "reissue", "quiet", "quiet_logs", "own_filters"]

_local = threading.local()
#: held while a quiet block's filters are swapped in and out (re-entrant: quiet blocks nest)
_SWAP = threading.RLock()
#: the third-party loggers whose records about the input a quiet block drops (their children too,
#: as each logger's filters see only its own records: highdicom logs under module names)
_NOISY = ("pydicom", "highdicom", "nibabel")
#: the modules whose warnings a quiet block ignores (cmrsdk's own, issued by `warn`, are kept)
_NOISY_MODULES = r"(pydicom|highdicom|nibabel)(\.|$)"


def _collectors() -> list[list[warnings.WarningMessage]]:
    if not hasattr(_local, "collectors"):
        _local.collectors = []
    collectors: list[list[warnings.WarningMessage]] = _local.collectors
    return collectors


def warn(message: str | CmrWarning, *, stacklevel: int = 1) -> None:
    """Issue a CmrWarning: into the innermost :func:`collect` open in this thread, else through
    :func:`warnings.warn` (``stacklevel`` as there, counted from the caller of this function).
    """
    warning = message if isinstance(message, CmrWarning) else CmrWarning(message)
    collectors = _collectors()
    if collectors:
        try:
            frame = sys._getframe(max(stacklevel, 1))
        except ValueError:  # a stack shallower than the level asked for: the caller, as warnings does
            frame = sys._getframe(1)
        collectors[-1].append(warnings.WarningMessage(warning, CmrWarning, frame.f_code.co_filename, frame.f_lineno))
        return
    warnings.warn(warning, stacklevel=stacklevel + 1)


def reissue(caught: warnings.WarningMessage) -> None:
    """Pass a collected warning on to the caller: the next collector out, else the warnings module."""
    collectors = _collectors()
    if collectors:
        collectors[-1].append(caught)
    else:
        warnings.warn_explicit(caught.message, caught.category, caught.filename, caught.lineno)


@contextmanager
def collect() -> Iterator[list[warnings.WarningMessage]]:
    """The CmrWarnings this thread issues while the block runs, as ``warnings.WarningMessage``
    items (``.message``, ``.category``); other threads' warnings, and other categories, are
    left to the warnings module as the host set it up."""
    caught: list[warnings.WarningMessage] = []
    collectors = _collectors()
    collectors.append(caught)
    try:
        yield caught
    finally:
        collectors.remove(caught)


class _QuietThreads(logging.Filter):
    """Drops the records of threads inside :func:`quiet_logs`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_local, "quiet_logs", 0)


_FILTER = _QuietThreads()


_known_loggers = -1  # how many loggers the process had when the filter was last put on


def _install_log_filter() -> None:
    """The filter on each noisy library's loggers that exist (they are created as modules
    import): looked over again only when loggers were added (64 us a read, 2 us once done)."""
    global _known_loggers
    loggers = logging.Logger.manager.loggerDict
    count = len(loggers)  # before the scan: one made during it is looked at next time
    if count == _known_loggers:
        return
    names = [n for n in list(loggers) if n.split(".")[0] in _NOISY]
    for name in {*_NOISY, *names}:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    _known_loggers = count


@contextmanager
def quiet_logs() -> Iterator[None]:
    """The pydicom, highdicom and nibabel log records of this thread dropped while the block
    runs (their notices about the input: cmrsdk says what matters itself); other threads' pass."""
    _install_log_filter()
    _local.quiet_logs = getattr(_local, "quiet_logs", 0) + 1
    try:
        yield
    finally:
        _local.quiet_logs -= 1


@contextmanager
def own_filters() -> Iterator[None]:
    """``warnings.catch_warnings()`` under the process-wide lock that every cmrsdk filter swap
    takes, so that cmrsdk's threads never interleave their save and restore."""
    with _SWAP, warnings.catch_warnings():
        yield


def _filters_changed() -> None:
    """Tell the warnings module its filter list changed (what filterwarnings does after adding)."""
    mutated = getattr(warnings, "_filters_mutated", None)
    if callable(mutated):
        mutated()


@contextmanager
def quiet() -> Iterator[None]:
    """The warnings and log records of pydicom, highdicom and nibabel silenced (cmrsdk's own kept)
    while a short block runs (a header read, a SEG built); the filter swap under one process-wide
    lock (see the module's docstring). Keep such blocks short: they are serialised across threads."""
    # One entry put in front and taken out again by identity, not the whole list saved and put
    # back: a filter the host adds meanwhile stays (sweep 37: catch_warnings dropped 174 of 200).
    # Only what these libraries issue: a host thread's own warnings meanwhile still reach it.
    entry = ("ignore", None, Warning, re.compile(_NOISY_MODULES), 0)
    filters = cast("list[Any]", warnings.filters)  # a list; typeshed says Sequence
    with _SWAP, quiet_logs():
        filters.insert(0, entry)
        _filters_changed()
        try:
            yield
        finally:
            for i, item in enumerate(filters):
                if item is entry:
                    del filters[i]
                    _filters_changed()
                    break
