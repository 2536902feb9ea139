"""Walking an input folder: symbolic links that lead out of it, and entries that cannot be read.

A study folder copied from a share or unpacked from a tar file may hold links that leave it
(``root -> /`` walked the whole file system, ``up -> ..`` read a sibling study's images into
this one) and entries that cannot be looked at (``lost+found`` for a user, a link into another
process's ``/proc``), where `Path.is_dir` raises. Such entries are passed over and said in one
warning of each kind (:meth:`Passed.warn`), never a traceback. A dangling link or a link loop
holds nothing to read and is passed over silently, as `Path.is_file` takes it.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import CmrWarning
from .._warn import warn

__all__ = ["Passed", "entry_kind", "holds", "reason"]

#: what a dangling link or a link loop raises: nothing there to read (`pathlib`'s ignored errors)
_NOTHING_THERE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP})


def entry_kind(path: str | Path | os.DirEntry[str]) -> Literal["file", "dir"] | None:
    """'file' or 'dir' for what ``path`` is or links to; None for a device, pipe, socket,
    dangling link or link loop. Raises OSError where it cannot be looked at (EACCES, EIO).
    A listing's entry is told by its type where it is no link, without a system call."""
    try:
        if isinstance(path, os.DirEntry):
            return "dir" if path.is_dir() else "file" if path.is_file() else None
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno in _NOTHING_THERE:
            return None
        raise
    return "file" if stat.S_ISREG(mode) else "dir" if stat.S_ISDIR(mode) else None


def holds(folder: str, path: str) -> bool:
    """True where the real path ``path`` is the real folder ``folder`` or lies under it."""
    return os.path.commonpath([folder, path]) == folder


def reason(exc: OSError) -> str:
    """Why an entry cannot be read, in words ('permission denied')."""
    return (exc.strerror or type(exc).__name__).lower()


def _target(link: Path) -> str:
    try:
        return os.readlink(link)
    except OSError:
        return "?"


@dataclass
class Passed:
    """What a walk passed over: links not followed, with why, and entries that cannot be read,
    with the reason."""

    links: list[tuple[Path, str]] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    def link(self, path: Path, why: str) -> None:
        self.links.append((path, why))

    def cannot_read(self, path: Path, exc: OSError) -> None:
        self.unreadable.append((path, reason(exc)))

    def messages(self) -> list[str]:
        """One line for the links not followed, one for the entries that cannot be read, each
        naming the first and counting the others."""
        said = []
        if self.links:
            path, why = self.links[0]
            more = f"; {len(self.links) - 1} more such link(s) skipped" if len(self.links) > 1 else ""
            said.append(f"{path}: a symbolic link to {_target(path)!r}, {why}: not followed{more}")
        if self.unreadable:
            path, why = self.unreadable[0]
            more = f"; {len(self.unreadable) - 1} more that cannot be read" if len(self.unreadable) > 1 else ""
            said.append(f"{path}: cannot be read ({why}): skipped{more}")
        return said

    def warn(self, stacklevel: int = 2) -> None:
        """Each message as a `CmrWarning`, ``stacklevel`` counted from the caller."""
        for message in self.messages():
            warn(CmrWarning(message), stacklevel=stacklevel + 1)
