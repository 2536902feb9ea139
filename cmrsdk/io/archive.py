"""A study delivered as a ZIP archive (PACS web viewers, download portals, data challenges),
unpacked into a temporary folder for as long as it is read and its outputs are written.

Refused, naming the archive and the member: a file that is not a readable ZIP, encrypted
members, more than :data:`MAX_MEMBERS` files, more than :data:`MAX_UNPACKED_BYTES` unpacked
(an archive bomb is refused from its directory, before anything is written), and members that
fail their CRC. Member names cannot climb out of the folder: :mod:`zipfile` drops absolute
paths and ``..`` components when it extracts. A folder that a run killed outright left behind
is deleted by a later unpacking, once stale and its process gone.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import CmrError, ReadError

__all__ = ["MAX_MEMBERS", "MAX_UNPACKED_BYTES", "Unpacked", "is_archive", "is_unpacked_member", "unpacked"]

#: a cine study is a few thousand files at most; a whole exam with every series tens of thousands
MAX_MEMBERS = 100_000
#: 4 GiB unpacked: ten times the largest series the DICOM reader accepts (1.6 GB as float32)
MAX_UNPACKED_BYTES = 4 * 2**30
#: the unpacked folders' names: prefix, the unpacking process's id, "-", a random part
_PREFIX = "cmrsdk-zip-"


def _remove_stale_folders() -> None:
    """Delete the folders (patient data) that runs killed outright (SIGKILL, power loss) left in the
    temporary folder: older than the study writer's stale age and their process gone."""
    from ..study import STALE_AFTER_S, _process_alive  # the rule the study writer applies beside OUT

    now = time.time()
    for entry in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*"):
        try:
            if not entry.is_dir() or entry.is_symlink() or now - entry.stat().st_mtime < STALE_AFTER_S:
                continue
        except OSError:
            continue
        pid = re.match(rf"{_PREFIX}(\d+)-", entry.name)
        if pid and _process_alive(int(pid.group(1))):
            continue
        shutil.rmtree(entry, ignore_errors=True)


def is_unpacked_member(path: str | Path) -> bool:
    """True for a path inside a folder an archive is unpacked into (`unpacked`), or named as its
    member (``study.zip!inner.zip``): a ZIP there is a ZIP inside a ZIP, which is not unpacked."""
    text = os.fspath(path)
    if "!" in text:
        return True
    return any(parent.name.startswith(_PREFIX) for parent in Path(text).parents)


def is_archive(path: str | Path) -> bool:
    """True for a file named ``*.zip`` (any case)."""
    path = Path(path)
    return path.suffix.lower() == ".zip" and path.is_file()


@dataclass(frozen=True)
class Unpacked:
    """What to read (``path``), and for an archive the temporary ``folder`` it was unpacked into."""

    path: Path
    archive: Path | None = None
    folder: Path | None = None

    def name(self, text: str) -> str:
        """``text`` with the temporary folder written as ``ARCHIVE!`` (a member as ``study.zip!1.dcm``)."""
        if self.folder is None:
            return text
        return text.replace(f"{self.folder}/", f"{self.archive}!").replace(str(self.folder), f"{self.archive}!")


@contextmanager
def unpacked(path: str | Path) -> Iterator[Unpacked]:
    """``path`` itself, or for a ZIP archive the folder its files are unpacked into.

    Yields an :class:`Unpacked` whose ``path`` is the archive's one top-level folder or file where
    it holds only that (an ACDC patient folder zipped whole reads as that patient), else the
    folder of everything. The folder is removed when the block ends: source files a DICOM SEG
    references must be written within it. A cmrsdk error raised in the block names members as
    ``ARCHIVE!member``, not by their temporary path.

    Raises
    ------
    ReadError : not a readable ZIP, encrypted, too many members, too large unpacked, a corrupt member.
    """
    path = Path(path)
    if not is_archive(path):
        yield Unpacked(path)
        return
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ReadError(path, f"not a readable ZIP archive ({type(exc).__name__}: {exc})") from exc
    try:
        _remove_stale_folders()
        unpacking = tempfile.TemporaryDirectory(prefix=f"{_PREFIX}{os.getpid()}-")
    except OSError as exc:  # no usable temporary folder (a read-only /tmp, TMPDIR on a full disk)
        archive.close()
        raise ReadError(
            path,
            f"cannot be unpacked: no writable temporary folder ({exc.strerror or exc}; TMPDIR="
            f"{os.environ.get('TMPDIR', 'unset')}); set TMPDIR to a writable folder or unpack it first",
        ) from exc
    with archive, unpacking as folder:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if not members:
            raise ReadError(path, "the ZIP archive holds no files")
        if len(members) > MAX_MEMBERS:
            raise ReadError(path, f"the ZIP archive holds {len(members)} files, over the limit of {MAX_MEMBERS}")
        total = sum(m.file_size for m in members)
        if total > MAX_UNPACKED_BYTES:
            raise ReadError(
                path,
                f"the ZIP archive unpacks to {total} bytes, over the limit of {MAX_UNPACKED_BYTES} "
                "(refused before unpacking)",
            )
        for member in members:
            if member.flag_bits & 0x1:
                raise ReadError(path, f"member '{member.filename}' is encrypted; unpack it with its password first")
            try:
                archive.extract(member, folder)
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as exc:
                raise ReadError(
                    path, f"member '{member.filename}' cannot be unpacked ({type(exc).__name__}: {exc})"
                ) from exc
        root = Path(folder)
        entries = list(root.iterdir())
        where = Unpacked(entries[0] if len(entries) == 1 else root, path, root)
        try:
            yield where
        except CmrError as exc:  # the archive's name for its member, not a folder that is about to vanish
            exc.args = tuple(where.name(a) if isinstance(a, str) else a for a in exc.args)
            if isinstance(exc, ReadError):
                exc.path = where.name(exc.path)
            raise
