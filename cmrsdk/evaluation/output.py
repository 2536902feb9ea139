"""An evaluation's output folder, written whole or not at all.

Every file of an evaluation is written into a staging folder beside OUT, which then replaces OUT
in one rename (as `cmrsdk segment` replaces a study's folder): a failed run leaves the earlier
result untouched, and files of an earlier run with other modes cannot survive beside the new
ones. OUT may hold only files an evaluation writes: anything else would be replaced with it.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import CmrError, WriteError
from ..study import TRANSIENT_PREFIXES, _replace_folder

__all__ = ["EVALUATION_OUTPUT", "check_evaluation_folder", "staged_output"]

#: names an evaluation writes in its folder (`write_evaluation`, the Sunnybrook scores).
EVALUATION_OUTPUT = re.compile(
    r"^(?:(?:slice_dice|case_scores|case_measures|table1_[\w-]+|table2|table3|agreement|zero_dice|sunnybrook_[\w-]+)"
    r"\.csv|figure2\.png|bland_altman_[\w-]+\.png|report\.md|report\.html|sunnybrook\.md)$"
)


def check_evaluation_folder(out_dir: str | Path) -> Path:
    """Refuse, before any work, an OUT that the evaluation cannot replace whole.

    Refused (:class:`WriteError`): the current folder or one holding it, and a folder holding
    entries an evaluation does not write (they would be replaced with it). Returns ``out_dir``
    as an absolute path (a link to a folder: the folder it points to).
    """
    given = out_dir
    out = Path(os.path.abspath(out_dir))
    if out.is_symlink() and out.is_dir():
        out = Path(os.path.realpath(out))
    try:
        here: Path | None = Path(os.getcwd())
    except OSError:  # the current folder was deleted under the process: it holds nothing to protect
        here = None
    if here is not None and here.is_relative_to(out):
        raise WriteError(
            f"{given}: output folder is the current folder or holds it; an evaluation's folder is replaced whole, "
            "so name a new folder (e.g. -o evaluation)"
        )
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not EVALUATION_OUTPUT.match(p.name))
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise WriteError(
                f"{given}: output folder holds {len(foreign)} entries an evaluation does not write ({shown}); "
                "an evaluation's folder is replaced whole, so choose a new or empty folder"
            )
    return out


@contextmanager
def staged_output(out_dir: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``out_dir``; on success it replaces ``out_dir`` whole.

    On any failure the staging folder is removed and ``out_dir`` is left as it was; a
    `CmrError` naming a staged file names it under ``out_dir`` instead.
    """
    out = Path(os.path.abspath(out_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    # the segment writer's staging prefix: a folder a killed run leaves is cleared like its
    staging = out.parent / f"{TRANSIENT_PREFIXES[0]}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(mode=0o777)
    try:
        yield staging
        _replace_folder(staging, out)
    except CmrError as exc:
        exc.args = tuple(a.replace(str(staging), str(out)) if isinstance(a, str) else a for a in exc.args)
        raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
