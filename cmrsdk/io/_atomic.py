"""Atomic output: write to a temporary name beside the target, then rename over it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import WriteError

__all__ = ["atomic_path"]


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; on success rename it to ``target``.

    The temporary name keeps the target's suffixes (``.nii.gz``) because some writers choose
    the format from them. On any failure the temporary file is removed and a
    :class:`WriteError` naming ``target`` is raised, so no half-written output is left.
    """
    target = Path(target)
    if not target.parent.is_dir():
        raise WriteError(f"{target}: output folder {target.parent} does not exist")
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp{''.join(target.suffixes)}")
    try:
        yield temporary
        os.replace(temporary, target)  # atomic on POSIX when on the same file system
    except BaseException as exc:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass  # the clean-up must not hide the error that stopped the writer
        if not isinstance(exc, Exception):
            raise  # KeyboardInterrupt, SystemExit: cleaned up, passed on unchanged
        if isinstance(exc, WriteError):
            raise
        raise WriteError(f"{target}: could not be written ({_root_cause(exc)})") from exc


def _root_cause(exc: BaseException) -> str:
    """One line saying what failed: the system's error where one is in the chain.

    pydicom re-raises a write's OSError as a new one without errno whose message holds the tag
    and a whole traceback ("With tag (7FE0,0010) got exception: [Errno 28] ..."); the original
    is its ``__cause__``.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.strerror:  # its filename is the temporary one: left out
            return f"{type(cause).__name__}: [Errno {cause.errno}] {cause.strerror}"
        cause = cause.__cause__ or cause.__context__
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
