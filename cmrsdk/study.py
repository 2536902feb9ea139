"""One study from input to outputs: read, segment, measure, write; the whole folder or nothing.

:func:`segment_one` is the per-study function every entry point calls (``cmrsdk segment``, a
DICOM node, a batch runner). It writes into a hidden staging folder beside the output folder
and renames it into place only once every file is complete, replacing (never mixing with) an
earlier result; on any exception, ``KeyboardInterrupt`` or a SIGTERM turned into
:class:`Interrupted` by :func:`raise_on_sigterm`, the staging folder is removed, so a study
either completes whole or leaves nothing.

Outputs of one study (``out_dir``):

| file | when |
|---|---|
| ``labels_ED.nii.gz``, ``labels_ES.nii.gz`` | always; ``labels.nii.gz`` for a one-phase input (a phase nothing names) |
| ``seg_ED.dcm``, ``seg_ES.dcm`` | DICOM input: DICOM SEG per phase, own SeriesNumber and description; ``seg.dcm`` for one phase |
| ``sr.dcm`` | DICOM input with a known measure: TID 1500 measurement report referencing the SEGs, with the quality flags |
| ``overlay.png`` | unless ``overlay=False`` |
| ``report.html`` | unless ``report_html=False``: the page a reader opens (`cmrsdk.report_html`) |
| ``report.json`` | always; lists the files, the warnings and the flags |
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import shutil
import signal
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import CmrError, CmrWarning, InputError, WriteError
from ._warn import collect

# At run time, not under TYPE_CHECKING: typing.get_type_hints resolves segment_one (sweep 48);
# importing cmrsdk has loaded cmrsdk.pipeline already, so this costs nothing.
from .pipeline import PhaseProgress, Pipeline, RegionSource
from .types import Study

__all__ = [
    "segment_one",
    "check_output_folder",
    "Interrupted",
    "raise_on_sigterm",
    "OUTPUT_PATTERN",
    "SEG_SERIES",
    "SR_SERIES",
]

#: names cmrsdk writes in a study folder: a folder holding anything else is not replaced.
OUTPUT_PATTERN = re.compile(
    r"^(labels(_[A-Za-z0-9 ]+)?\.nii\.gz|seg(_[A-Za-z0-9 ]+)?\.dcm|sr\.dcm|report\.json|report\.html|overlay\.png)$"
)
#: (SeriesNumber, SeriesDescription) of the SEG of each phase: a PACS lists ED and ES apart; the
#: one SEG of a one-phase study (phase "", file ``seg.dcm``) names no phase.
SEG_SERIES = {
    "ED": (901, "cmrsdk segmentation ED"),
    "ES": (902, "cmrsdk segmentation ES"),
    "": (901, "cmrsdk segmentation"),
}
#: (SeriesNumber, SeriesDescription) of the measurement report.
SR_SERIES = (903, "cmrsdk cardiac measurements")
_STAGING = ".cmrsdk-staging-"
_RETIRED = ".cmrsdk-replaced-"
_PROBE = ".cmrsdk-probe-"
#: Name prefixes of the writer's own short-lived entries beside a study's folder: a process
#: killed (SIGKILL) between creating and removing one leaves it; a restart may delete them.
TRANSIENT_PREFIXES = (_STAGING, _RETIRED, _PROBE)


def _named(stem: str, phase: str, suffix: str) -> str:
    """``labels_ED.nii.gz`` for a phase, ``labels.nii.gz`` for a one-phase study's ("")."""
    return f"{stem}_{phase}{suffix}" if phase else f"{stem}{suffix}"


def _flags_by_scope(report: dict[str, Any]) -> dict[str, list[str]]:
    """report.json's flags for the SR: the study's, then ED's and ES's (a one-phase study's one)."""
    from .types import SINGLE_PHASE

    scopes = {"study": list(report.get("flags", []))}
    phases = report["phases"]
    if len(phases) == 1:  # its ed_index and es_index are null: neither ED nor ES was determined
        scopes[SINGLE_PHASE] = list(phases[0]["quality_flags"])
        return scopes
    for key, name in (("ed_index", "ED"), ("es_index", "ES")):
        index = report.get(key)
        if isinstance(index, int) and 0 <= index < len(phases):
            scopes[name] = list(phases[index]["quality_flags"])
    return scopes


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived: raised in the main thread so that clean-up (``finally``) runs,
    as for Ctrl-C. ``signum`` is the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signal.Signals(signum).name}")
        self.signum = int(signum)


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that stop a run as Ctrl-C does: SIGTERM (a scheduler, ``kill``) and SIGHUP (the
    terminal or ssh session went away; killed outright, a study being written left its staging
    folder behind), SIGHUP only where it is not ignored (``nohup``)."""
    hup = getattr(signal, "SIGHUP", None)
    if hup is not None and signal.getsignal(hup) is not signal.SIG_IGN:
        return (signal.SIGTERM, hup)
    return (signal.SIGTERM,)


@contextmanager
def raise_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP (`stop_signals`) raise :class:`Interrupted` in the
    main thread (the earlier handlers restored after)."""

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    previous: dict[signal.Signals, Any] = {}
    try:
        for s in stop_signals():
            previous[s] = signal.signal(s, handler)
    except ValueError:  # not the main thread: leave signals to whoever owns it
        yield
        return
    try:
        yield
    finally:
        for s, handler_before in previous.items():
            signal.signal(s, handler_before)


def check_output_folder(out_dir: str | Path, *, keep: tuple[str, ...] = (), contents: bool = True) -> Path:
    """Check, before any compute, that ``out_dir`` can receive a study's outputs; create its parent.

    Refused (:class:`WriteError` naming the folder and the reason): a file where the folder or
    one of its parents should be, a parent that cannot be created or written, a path the system
    cannot hold (too long), the current folder or one holding it, and an existing folder
    holding files cmrsdk does not write (it would be replaced whole), an existing folder without
    its owner's write permission (read-only: the user keeps it so). A symbolic link to a
    folder is followed: the result replaces the folder it points to.

    Parameters
    ----------
    out_dir : the study's output folder.
    keep : names of entries in ``out_dir`` that the caller placed there and that move into the
        new result (the demo's ``example_dicom``); they are not foreign.
    contents : check what ``out_dir`` holds; False for the folder that holds several studies'
        folders (only its place and writability are checked).

    Returns
    -------
    ``out_dir`` as an absolute Path (the link's target where it is a link to a folder).
    """
    given = out_dir
    out_dir = Path(os.path.abspath(out_dir))
    try:
        if out_dir.is_symlink() and out_dir.is_dir():
            out_dir = Path(os.path.realpath(out_dir))  # replaced where it lies, the link kept
        for ancestor in [out_dir, *out_dir.parents]:
            if ancestor.exists() or ancestor.is_symlink():
                if not ancestor.is_dir():
                    where = "is a file" if ancestor == out_dir else f"lies under {ancestor}, which is a file"
                    raise WriteError(f"{given}: output folder {where}, not a folder")
                break
    except OSError as exc:  # a name or path longer than the file system holds
        raise WriteError(f"{given}: output folder cannot be used ({exc.strerror or exc})") from exc
    try:
        here = Path(os.getcwd())
    except OSError:  # the current folder was deleted under the process: it holds nothing to protect
        here = None
    if contents and here is not None and here.is_relative_to(out_dir):
        raise WriteError(
            f"{given}: output folder is the current folder or holds it; a study's folder is replaced whole, "
            "so name a new folder (e.g. -o results)"
        )
    if contents and out_dir.is_dir():
        mode = stat.S_IMODE(out_dir.stat().st_mode)
        if not mode & stat.S_IWUSR:  # the user made it read-only: replacing it would undo that
            raise WriteError(
                f"{out_dir}: output folder is read-only (mode {mode:03o}); a study's folder is replaced whole, "
                "so make it writable (chmod u+w) or choose another -o"
            )
        try:
            names = [p.name for p in out_dir.iterdir()]
        except OSError as exc:  # another user's folder: said before any work, not as a traceback
            raise WriteError(f"{out_dir}: output folder cannot be read ({exc.strerror or exc})") from exc
        foreign = sorted(name for name in names if not OUTPUT_PATTERN.match(name) and name not in keep)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise WriteError(
                f"{out_dir}: output folder holds {len(foreign)} entries cmrsdk did not write ({shown}); "
                "a study's folder is replaced whole, so choose a new or empty folder"
            )
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=f"{_PROBE}{os.getpid()}-", dir=out_dir.parent)
        os.rmdir(probe)
    except OSError as exc:
        raise WriteError(
            f"{out_dir}: output folder cannot be written ({exc.strerror or exc}: {exc.filename or out_dir.parent})"
        ) from exc
    if contents and _sticky_and_not_ours(out_dir):
        raise WriteError(
            f"{out_dir}: output folder belongs to another user in a shared folder ({out_dir.parent} has the "
            "sticky bit), so it cannot be replaced; choose another -o"
        )
    return out_dir


def _sticky_and_not_ours(folder: Path) -> bool:
    """True where ``folder`` exists in a sticky folder (``/tmp``, a shared results folder) and
    neither it nor that folder is this process's user's: renaming it would be refused after the
    study was segmented."""
    try:
        own, parent = folder.lstat(), folder.parent.stat()
    except OSError:
        return False
    user = os.geteuid()
    return bool(parent.st_mode & stat.S_ISVTX) and user != 0 and user not in (own.st_uid, parent.st_uid)


def _replace_folder(staging: Path, out_dir: Path, keep: tuple[str, ...] = ()) -> None:
    """Move the complete ``staging`` folder to ``out_dir``, retiring an earlier result first.

    Entries named in ``keep`` move from the earlier folder into the new one (back on failure).
    """
    moved = [name for name in keep if (out_dir / name).exists() and not (staging / name).exists()]
    try:
        if out_dir.is_dir():  # the earlier folder's mode is kept (a 700 folder of patient data stays private)
            os.chmod(staging, stat.S_IMODE(out_dir.stat().st_mode))
        for name in moved:
            os.rename(out_dir / name, staging / name)
        _swap(staging, out_dir)
    except BaseException:
        for name in moved:
            if (staging / name).exists() and out_dir.is_dir():
                os.rename(staging / name, out_dir / name)
        raise


#: a staging, probe or retired folder older than this beside an output folder was left by a killed run.
STALE_AFTER_S = 3600.0
#: the transient names: prefix, the writer's pid, "-", 8 random characters; a retired one then "-" and OUT's name
_TRANSIENT_NAME = re.compile(
    rf"^(?:{re.escape(_STAGING)}|{re.escape(_PROBE)}|({re.escape(_RETIRED)}))(\d+)-[0-9a-z_]{{8}}(?:-(.+))?$", re.S
)


def _remove_stale(parent: Path, older_than_s: float = STALE_AFTER_S) -> None:
    """Clear what a run killed outright (SIGKILL, power loss) left beside its output folder, once
    older than ``older_than_s`` and its process gone: its staging and probe folders are deleted; its
    retired folder (the earlier result, killed between the two renames of `_swap`) is renamed back
    to its output folder's name where that is missing, else deleted. (`cmrsdk serve` clears its own
    output folder on starting, with no age: it is the one writer there.)"""
    now = time.time()
    for entry in parent.glob(".cmrsdk-*"):
        if not entry.name.startswith(TRANSIENT_PREFIXES):
            continue
        try:
            if not entry.is_dir() or entry.is_symlink() or now - entry.stat().st_mtime < older_than_s:
                continue
        except OSError:
            continue
        named = _TRANSIENT_NAME.match(entry.name)
        if named and _process_alive(int(named.group(2))):
            continue
        if named and named.group(1) and named.group(3) and not os.path.lexists(parent / named.group(3)):
            try:
                os.rename(entry, parent / named.group(3))
                continue
            except OSError:
                if not os.path.lexists(parent / named.group(3)):
                    continue  # cannot be put back now: left for a later run rather than lost
        shutil.rmtree(entry, ignore_errors=True)  # a retired one here: superseded by the result at its OUT


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or a number no process has: leave it
    return True


def _retired_path(out_dir: Path) -> Path:
    """Where `_swap` parks an earlier result: the name says whose it is, so `_remove_stale` can put it back."""
    name = f"{_RETIRED}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    named = f"{name}-{out_dir.name}"
    return out_dir.parent / (named if len(os.fsencode(named)) <= 255 else name)  # 255: NAME_MAX of common file systems


def _swap(staging: Path, out_dir: Path) -> None:
    """Rename ``staging`` to ``out_dir``, an earlier ``out_dir`` retired first and deleted after.

    Any failure or interrupt between the two renames puts the earlier result back; a kill there
    leaves it retired, and `_remove_stale` puts it back. Another run's result that lands at
    ``out_dir`` in between is kept (it is the newer one) and this run fails with a WriteError.
    """
    retired = _retired_path(out_dir) if out_dir.exists() else None
    try:
        if retired is not None:
            os.rename(out_dir, retired)
        os.rename(staging, out_dir)
    except BaseException as exc:
        if retired is not None and retired.exists():
            if out_dir.exists():  # this run's own (an interrupt after the rename) or another run's result
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.rename(retired, out_dir)  # put the earlier result back rather than lose both
        if not isinstance(exc, OSError):
            raise
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise WriteError(
                f"{out_dir}: output folder was written by another run at the same time; its result was kept, "
                "this one discarded"
            ) from exc
        raise WriteError(f"{out_dir}: output folder could not be replaced ({exc.strerror or exc})") from exc
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def _distinct_messages(messages: Iterator[str] | list[str]) -> list[str]:
    """Each problem once: the same text about another file of the series (ED, ES, SR) is dropped."""
    kept: dict[str, str] = {}
    for message in messages:
        kept.setdefault(message.split(": ", 1)[-1], message)
    return list(kept.values())


def segment_one(
    pipeline: Pipeline,
    source: str | Path,
    out_dir: str | Path,
    *,
    overlay: bool = True,
    keep: tuple[str, ...] = (),
    report_html: bool = True,
    truth: Study | None = None,
    region_source: RegionSource | None = None,
    series_uid: str | None = None,
    study_uid: str | None = None,
    height_cm: float | None = None,
    weight_kg: float | None = None,
    label_convention: str | None = None,
    progress: PhaseProgress | None = None,
    source_name: str | None = None,
) -> dict[str, Any]:
    """Read, segment and write one study; returns its report (the content of ``report.json``).

    Parameters
    ----------
    pipeline : a loaded :class:`cmrsdk.Pipeline` (one per worker, reused across studies).
    source : what :func:`cmrsdk.io.read_study` reads: a DICOM folder, a NIfTI file, an ACDC
        patient or M&Ms subject folder; or a ZIP archive of one (:mod:`cmrsdk.io.archive`).
    out_dir : the study's output folder; created, or replaced whole when it holds an earlier
        result (refused when it holds files cmrsdk does not write).
    overlay : draw ``overlay.png`` (the slowest output; ``--no-overlay`` skips it).
    keep : entries of an existing ``out_dir`` to carry into the new result (see
        :func:`check_output_folder`).
    report_html : write ``report.html``, the study's page for a reader (``--no-report-html`` skips it).
    truth : a `Study` holding the ground truth of ``source`` (the embedded example), scored into
        the report's "ground_truth".
    region_source : regions to route by instead of the pipeline's own (see
        `cmrsdk.pipeline.RegionSource`; ``cmrsdk segment --mode oracle`` hands in the ground truth's).
    series_uid : the DICOM series to read (``cmrsdk segment --series``) instead of the short-axis
        cine the reader chooses; DICOM sources only.
    study_uid : the DICOM study to read (``cmrsdk segment --study``) where the source holds
        several (`cmrsdk.io.read_dicom_study`); DICOM sources only.
    height_cm, weight_kg : the patient's, replacing the file's own (Info.cfg, DICOM PatientSize and
        PatientWeight) in the reports; a cohort's study list gives them (``cmrsdk batch --list``).
    label_convention : how a NIfTI source's label maps code the structures ("acdc", "mnms",
        "canonical"; ``cmrsdk segment --label-convention``) where they differ from its layout's
        (`cmrsdk.io.read_study`'s ``convention``); None: the layout's own.
    progress : handed to `Pipeline.segment_study`: told each phase segmented (a progress bar).
    source_name : how the report and its warnings name ``source`` (the DICOM node: its spool
        folder as ``<spool>/instances/NAME``, not the node's own path); None: as given.

    Returns
    -------
    The report dict: measures (null where unknown), phases, flags, ``warnings`` (the
    :class:`cmrsdk.errors.CmrWarning` messages raised while reading and writing), ``outputs``.

    Raises
    ------
    CmrError : the input cannot be read or the outputs cannot be written; nothing is left in
        ``out_dir`` (an earlier result there stays as it was).

    Notes
    -----
    The study's warnings are collected per thread (`cmrsdk._warn.collect`): studies run in
    several threads at once each get their own, and the host's warnings are left alone.
    """
    from .io import detect_format, read_study, write_dicom_seg, write_json, write_measurement_report, write_nifti_labels
    from .io._dicom_out import check_derivation_sources
    from .io.archive import unpacked
    from .report import ground_truth_agreement, save_overlay, study_report
    from .types import SINGLE_PHASE

    if not callable(getattr(pipeline, "segment_study", None)):
        raise InputError(
            f"'pipeline' must be a loaded cmrsdk.Pipeline (cmrsdk.Pipeline(bundle)), got {type(pipeline).__name__}"
        )
    if not isinstance(source, (str, Path)):
        raise InputError(
            f"'source' must be the path of a study (a DICOM folder, a NIfTI file, ...), got {type(source).__name__}; "
            "segment a Study in memory with Pipeline.segment_study"
        )
    out_dir = check_output_folder(out_dir, keep=keep)
    with collect() as caught, unpacked(source) as readable:
        t0 = time.perf_counter()
        if series_uid is None and study_uid is None:
            # a convention says how label maps are coded: only ACDC and M&Ms folders are read with theirs
            labelled = label_convention is not None and detect_format(readable.path) in ("acdc", "mnms")
            study = read_study(readable.path, convention=label_convention if labelled else None)
        elif detect_format(readable.path) != "dicom":
            named = (
                f"series UID ({series_uid}) selects a DICOM series"
                if series_uid is not None
                else (f"study UID ({study_uid}) selects a DICOM study")
            )
            raise InputError(f"{source}: a {named}; this input is not DICOM")
        else:
            study = read_study(readable.path, series_uid=series_uid, study_uid=study_uid)
        if height_cm is not None:
            study = dataclasses.replace(study, info=dataclasses.replace(study.info, height_cm=height_cm))
        if weight_kg is not None:
            study = dataclasses.replace(study, info=dataclasses.replace(study.info, weight_kg=weight_kg))
        if all(stack.source_files for stack in study.phases):
            # what the SEG and SR take from the sources, checked before the networks run: a
            # de-identifier's deleted UID would otherwise fail the study after its segmentation
            # (every file: one file without it lost the study as surely, sweep 44)
            check_derivation_sources(list(dict.fromkeys(f for stack in study.phases for f in stack.source_files)))
        read_ms = (time.perf_counter() - t0) * 1000.0
        # the keyword only when given: a pipeline-like object (a test double, a wrapper) need not know it
        given: dict[str, Any] = {"region_source": region_source, "progress": progress}
        result = pipeline.segment_study(study, **{k: v for k, v in given.items() if v is not None})
        report = study_report(result, study)
        report["timings_ms"]["read"] = round(read_ms, 2)

        def as_reported(text: str) -> str:
            """``text`` naming an archive's members ``ARCHIVE!member`` and ``source`` ``source_name``."""
            text = readable.name(text)  # the archive, not the folder it was unpacked into
            return text if source_name is None else text.replace(str(source), source_name)

        if readable.archive is not None or source_name is not None:
            report["study"]["source"] = str(source) if source_name is None else source_name
            for phase in report["phases"]:
                phase["source"] = as_reported(phase["source"])
        if truth is not None:
            report["ground_truth"] = ground_truth_agreement(result, truth)
        single = len(result.phases) == 1
        # a one-phase study's files name no phase: its reader calls it ED by default, nothing else does
        phases = [("", result.ed)] if single else [("ED", result.ed), ("ES", result.es)]
        _remove_stale(out_dir.parent)
        # short, whatever the folder's name: a name near the file system's limit must still fit
        staging = out_dir.parent / f"{_STAGING}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(mode=0o777)  # the umask applies, as for any folder the user creates
        try:
            written: list[Path] = []
            for name, seg in phases:
                written.append(write_nifti_labels(staging / _named("labels", name, ".nii.gz"), seg.labels, seg.stack))
            dicom = all(seg.stack.source_files for _, seg in phases)
            if dicom:
                segs: dict[str, Path] = {}
                for name, seg in phases:
                    number, description = SEG_SERIES[name]
                    segs[name or SINGLE_PHASE] = staging / _named("seg", name, ".dcm")
                    written.append(
                        write_dicom_seg(
                            segs[name or SINGLE_PHASE],
                            seg.labels,
                            seg.stack,
                            series_number=number,
                            series_description=description,
                            provenance=report["provenance"],
                        )
                    )
                files = list(dict.fromkeys(f for _, seg in phases for f in seg.stack.source_files))
                # nothing measured (a blank image, no LV found): the SR still says why, for a PACS
                # that gets the SEG and no report.json (sweep 35)
                if any(v is not None for v in report["measures"].values()) or any(_flags_by_scope(report).values()):
                    written.append(
                        write_measurement_report(
                            staging / "sr.dcm",
                            report["measures"],
                            files,
                            segmentations=segs,
                            quality_flags=_flags_by_scope(report),
                            series_number=SR_SERIES[0],
                            series_description=SR_SERIES[1],
                            provenance=report["provenance"],
                        )
                    )
            if overlay:
                written.append(save_overlay(staging / "overlay.png", result))
            report["warnings"] = _distinct_messages(
                as_reported(str(w.message)) for w in caught if issubclass(w.category, CmrWarning)
            )
            report["outputs"] = (
                [Path(p).name for p in written] + ["report.json"] + (["report.html"] if report_html else [])
            )
            if report_html:
                from .report_html import write_report_html

                write_report_html(staging / "report.html", result, report, study=study)
            write_json(staging / "report.json", report)
            _replace_folder(staging, out_dir, keep)
        except CmrError as exc:  # name the file in OUT the user looks for, not the staging folder about to vanish
            # a hidden OUT is a caller's scratch (`cmrsdk batch`'s OUT/.tmp/.worker-*), gone as well: the file's name alone
            final = "" if out_dir.name.startswith(".") else f"{out_dir}/"
            exc.args = tuple(
                a.replace(f"{staging}/", final).replace(str(staging), str(out_dir)) if isinstance(a, str) else a
                for a in exc.args
            )
            raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return report
