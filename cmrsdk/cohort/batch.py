"""`run_batch`: a cohort's studies through an engine into OUT, resumably.

OUT holds ``measures.csv`` (one row per study, rebuilt from the journal), ``cohort.png``,
``journal.jsonl``, ``options.json`` (what the table's ``options_key`` stands for: bundle, options,
cmrsdk version and code hash) and ``studies/<study_id>/`` (each study's outputs as ``segment``
writes them).
A study's folder is written whole under ``OUT/.tmp`` and renamed into place before its journal
line is written, so a crash at any moment leaves every study either done or not started. The
workers segment under ``OUT/.tmp`` too; each batch clears it when it starts.

A result is filed under the batch's key only when its report.json names the cmrsdk build and
bundle the key stands for: a worker started again (after a crash) loads the code and bundle on
disk, which an upgrade may have replaced while the batch ran. An earlier result of a study id
this run no longer has, whose files this run measures as another study (ids changed with
cmrsdk's version), is moved from ``studies/`` to ``superseded/``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import WriteError
from ..io import write_json
from ..study import stop_signals
from .discover import StudySource
from .engines import BatchEngine
from .journal import Journal
from .table import write_measures_csv
from .worker import PipelineSpec, StudyResult, disk_full_error, inputs_fingerprint

__all__ = [
    "BatchSummary",
    "run_batch",
    "STUDIES_DIR",
    "SUPERSEDED_DIR",
    "TABLE_NAME",
    "FIGURE_NAME",
    "OPTIONS_NAME",
]

STUDIES_DIR = "studies"
#: earlier results whose files this run measures as another study (study ids changed)
SUPERSEDED_DIR = "superseded"
TABLE_NAME = "measures.csv"
FIGURE_NAME = "cohort.png"
OPTIONS_NAME = "options.json"
_SCRATCH = ".tmp"
#: rewrite measures.csv at most this often while a long batch runs (seconds)
_TABLE_EVERY_S = 60.0


@dataclass
class BatchSummary:
    """What a batch did.

    Attributes
    ----------
    rows : the table, one dict per study in input order.
    ran : studies segmented in this run; ``reused`` taken from an earlier run's journal.
    redone : studies run again because their earlier result was made with other options, another
        bundle or another cmrsdk build (another options key).
    changed : studies run again because their inputs changed since (`inputs_fingerprint`: their
        files, or the study list's height, weight or heart rate; a source gone fails).
    interrupted : the run was stopped (SIGINT, SIGTERM or SIGHUP) before every study was done;
        ``stop_signal`` is that signal's number (0 when not interrupted).
    disk_full : why the run stopped early because OUT's disk (or quota) was full, "" otherwise: the
        study that met it is not recorded, so the same command finishes the rest once there is room.
    build_changed : why the run stopped early because a result was made by another cmrsdk build or
        bundle than the one its key stands for (the install or the bundle was replaced while it ran,
        and a worker started again loaded the new one), "" otherwise: that result is not recorded.
    superseded : ids of earlier results moved from ``studies/`` to ``superseded/``: no study of this
        run has their id, and this run measures their files as another study.
    unlisted : ids of earlier results left in ``studies/`` that no study of this run has and whose
        files this run does not read (inputs not given this time): not in the table.
    startup_s, run_s, wall_s : seconds to start the engine's workers, from then until the last
        study was committed, and of the whole call.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    ran: int = 0
    reused: int = 0
    redone: int = 0
    changed: int = 0
    interrupted: bool = False
    stop_signal: int = 0
    disk_full: str = ""
    build_changed: str = ""
    superseded: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    startup_s: float = 0.0
    run_s: float = 0.0
    wall_s: float = 0.0
    table: Path | None = None
    figure: Path | None = None

    def count(self, status: str) -> int:
        """Rows with this status ("ok", "failed", "skipped")."""
        return sum(1 for r in self.rows if r.get("status") == status)


def _replace_folder(scratch: Path, target: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` under ``scratch``, then swap it in for ``target`` (an earlier result is replaced, never mixed)."""
    shutil.rmtree(scratch, ignore_errors=True)
    for name, data in files.items():
        path = scratch / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = scratch.with_name(scratch.name + ".old")
    if target.exists():
        os.replace(target, old)
    os.replace(scratch, target)
    shutil.rmtree(old, ignore_errors=True)


class _Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled as Ctrl-C is: also by Ray, whose waits turn only a
    KeyboardInterrupt from a signal handler into an interruption (any other exception there
    becomes a SystemError)."""


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise _Interrupted(signal.Signals(signum).name)


def run_batch(
    studies: Sequence[StudySource],
    spec: PipelineSpec,
    out: str | Path,
    engine: BatchEngine | Callable[[], BatchEngine],
    *,
    retry_failed: bool = False,
    progress: bool = True,
    figure: bool = True,
) -> BatchSummary:
    """Segment the studies not yet done into ``out`` and write the cohort's table and figure.

    Parameters
    ----------
    studies : the cohort, in the table's order.
    spec : the pipeline; with the bundle's manifest hash it makes the key that says "done".
    out : the output folder (created; one batch at a time holds it).
    engine : the engine, or a factory called only when some study needs running.
    retry_failed : run again the studies whose last run with the same key failed.
    progress : show a progress bar (stderr).
    figure : draw ``cohort.png``.

    Returns
    -------
    BatchSummary; a study is done when the journal holds an "ok" (or, without ``retry_failed``,
    a "failed") record for it with the same key, source (and StudyInstanceUID) and inputs
    (`inputs_fingerprint`: a study whose files or list values changed since is redone).

    Each study is counted once: a source that resolves (symlinks followed) to one listed before
    it (and, for one study of a folder of several, to the same StudyInstanceUID) is not run, and
    a study whose files are byte-identical to another's (the workers' `content_sha256`) keeps no
    result of its own; both get a "skipped" row naming the study that has the result. A
    `StudySource` with a ``skip_reason`` (a folder without a study) gets a "skipped" row with
    that reason. Results redone because the key changed are counted in `BatchSummary.redone` and
    said on stderr before the run.

    A result whose report.json names another cmrsdk version, code hash or bundle manifest than the
    key's stops the run unrecorded (`BatchSummary.build_changed`): the table never mixes two builds
    under one key. Earlier results of ids this run does not have are said on stderr and, where this
    run measures their files as another study, moved to ``superseded/`` (`BatchSummary.superseded`).
    """
    from ..bundle import load_bundle

    t0 = time.perf_counter()
    out = Path(out)
    bundle = load_bundle(spec.bundle)  # refuses a bundle whose hashes do not match, before any work
    key = spec.key(bundle.manifest_sha256)
    key_inputs = spec.key_inputs(bundle.manifest_sha256)
    # what each result's report.json must name to be filed under the key
    build = {
        "cmrsdk": key_inputs["cmrsdk"],
        "code_sha256": key_inputs["code"],
        "manifest_sha256": bundle.manifest_sha256,
    }
    summary = BatchSummary()
    with Journal(out) as journal:
        # the table's options_key in words: the bundle, options, cmrsdk version and code it stands for
        write_json(out / OPTIONS_NAME, {"options_key": key, **key_inputs})
        shutil.rmtree(out / _SCRATCH, ignore_errors=True)  # what a killed batch and its workers were writing
        (out / _SCRATCH).mkdir(exist_ok=True)
        summary.superseded, summary.unlisted = _set_aside_other_ids(out, journal, studies)
        first_of: dict[tuple[str, str | None], StudySource] = {}
        inputs: dict[str, str] = {}  # study id -> `inputs_fingerprint` now
        duplicates: dict[str, str] = {}  # study id -> why it is not run
        todo: list[StudySource] = []
        for study in studies:
            if study.skip_reason:  # a folder that holds no study: a row saying so, nothing to run
                continue
            # the same files reached by another path (a symlink, a link to a folder, "x/" and "x") run
            # once; the studies of one folder of several (StudySource.study_uid) are each their own
            real = os.path.realpath(study.source)
            if (real, study.study_uid) in first_of:
                first = first_of[real, study.study_uid]
                same = "" if first.source == study.source else f" (both are {real})"
                duplicates[study.study_id] = f"same source as study '{first.study_id}'{same}"
                continue
            first_of[real, study.study_uid] = study
            record = journal.records.get(study.study_id)
            inputs[study.study_id] = inputs_fingerprint(study)
            earlier = record is not None and record.get("key") == key and _same_source(record, study)
            done = (
                earlier
                and record is not None
                and record.get("inputs") == inputs[study.study_id]
                and (record.get("status") == "ok" or (record.get("status") == "failed" and not retry_failed))
            )
            if done:
                summary.reused += 1
            else:
                todo.append(study)
                if record is not None and record.get("key") != key and _same_source(record, study):
                    summary.redone += 1
                elif earlier and record is not None and record.get("inputs") != inputs[study.study_id]:
                    summary.changed += 1
        if summary.redone:
            n = summary.redone
            print(
                f"cmrsdk: {n} earlier result{'s use' if n > 1 else ' uses'} other options, another bundle or "
                f"another cmrsdk build and {'are' if n > 1 else 'is'} redone",
                file=sys.stderr,
            )
        if summary.superseded:
            n = len(summary.superseded)
            print(
                f"cmrsdk: {n} earlier result{'s' if n > 1 else ''} of study ids this run no longer has (their files "
                f"are measured as another study now) moved from {STUDIES_DIR}/ to {SUPERSEDED_DIR}/: "
                f"{_some(summary.superseded)}",
                file=sys.stderr,
            )
        if summary.unlisted:
            n = len(summary.unlisted)
            print(
                f"cmrsdk: {n} earlier result{'s' if n > 1 else ''} in {STUDIES_DIR}/ belong{'' if n > 1 else 's'} "
                f"to no study of this run (inputs not given) and {'are' if n > 1 else 'is'} not in "
                f"{TABLE_NAME}: {_some(summary.unlisted)}",
                file=sys.stderr,
            )
        if summary.changed:
            n = summary.changed
            print(
                f"cmrsdk: {n} {'studies have' if n > 1 else 'study has'} changed since the last run (files, or the "
                f"list's height, weight or heart rate) and {'are' if n > 1 else 'is'} redone",
                file=sys.stderr,
            )

        def commit(result: StudyResult) -> None:
            row = dict(result.row, bundle_sha256=bundle.manifest_sha256, options_key=key)
            target = out / STUDIES_DIR / result.study_id
            if row.get("status") == "ok":
                try:
                    _replace_folder(out / _SCRATCH / result.study_id, target, result.files)
                except OSError as exc:
                    raise WriteError(f"{target}: cannot be written ({exc})") from exc
                row["outputs"] = f"{STUDIES_DIR}/{result.study_id}"
            else:
                # an earlier run's folder (other options, or a since-corrupted source) no longer matches the table
                shutil.rmtree(target, ignore_errors=True)
                row["outputs"] = ""
            stamp = {
                "key": key,
                "inputs": inputs.get(result.study_id),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            journal.append({**row, **stamp})

        def table() -> Path:
            why = (
                "the output's disk was full"
                if summary.disk_full
                else "cmrsdk or its bundle changed under the batch"
                if summary.build_changed
                else ("batch interrupted" if summary.interrupted else "")
            )
            summary.rows = _rows(
                studies,
                journal.records,
                key,
                inputs,
                duplicates,
                stopped=why or "batch stopped",
                studies_dir=out / STUDIES_DIR,
            )
            return write_measures_csv(out / TABLE_NAME, summary.rows)

        if todo:
            # SIGTERM (a scheduler's stop) and SIGHUP (the terminal gone) end the run like Ctrl-C:
            # workers stopped, table written
            def stop(signum: int, frame: Any) -> None:
                summary.stop_signal = signum  # Ray's waits re-raise a plain KeyboardInterrupt
                _raise_interrupt(signum, frame)

            previous = {s: signal.signal(s, stop) for s in stop_signals()} if _main_thread() else {}
            bar = None
            runner = engine() if callable(engine) and not isinstance(engine, BatchEngine) else engine
            runner.scratch = str((out / _SCRATCH).absolute())  # workers segment there: the next batch clears it
            try:
                runner.start()
                summary.startup_s = runner.startup_s
                started = time.perf_counter()
                if progress:
                    from tqdm import tqdm

                    bar = tqdm(
                        total=len(todo),
                        unit="study",
                        file=sys.stderr,
                        smoothing=0.1,
                        mininterval=1.0,
                        desc=f"{runner.name} x{runner.workers}",
                        disable=None,  # no bar in a log file (not a terminal): it filled logs with frames
                    )
                failed = 0
                last_table = time.monotonic()
                for result in runner.run(todo):
                    other = _other_build(result, build)
                    if other:
                        # every worker started again since loads the same: stop, the result unrecorded;
                        # the same command (the new install's key) redoes the studies of the old one
                        summary.build_changed = other
                        break
                    if not result.disk_full:
                        try:
                            commit(result)
                        except (OSError, WriteError) as exc:
                            if not disk_full_error(exc):
                                raise
                            result.disk_full, result.row["error"] = True, str(exc)
                    if result.disk_full:
                        # every study after it would be segmented only to fail the same way: stop,
                        # leaving it unrecorded so that the same command runs it once there is room
                        summary.disk_full = f"{result.study_id}: {result.row.get('error')}"
                        break
                    summary.ran += 1
                    if result.row.get("status") != "ok":
                        failed += 1
                        source, error = str(result.row.get("source")), str(result.row.get("error"))
                        # name the input once: reader errors already start with the path
                        line = f"cmrsdk: error: {error if error.startswith(source) else f'{source}: {error}'}"
                        bar.write(line, file=sys.stderr) if bar else print(line, file=sys.stderr)
                    if bar:
                        bar.set_postfix(failed=failed, refresh=False)
                        bar.update()
                    if time.monotonic() - last_table > _TABLE_EVERY_S:
                        table()
                        last_table = time.monotonic()
                summary.run_s = time.perf_counter() - started
            except KeyboardInterrupt:  # Ctrl-C, or SIGTERM / SIGHUP (_Interrupted)
                summary.interrupted = True
                summary.stop_signal = summary.stop_signal or int(signal.SIGINT)
            finally:
                if bar:
                    bar.close()
                runner.close()
                for s, handler in previous.items():
                    signal.signal(s, handler)
        # the workers are stopped: what one was writing when stopped (a study cut short by Ctrl-C)
        # must not stay under OUT until a next run clears it
        shutil.rmtree(out / _SCRATCH, ignore_errors=True)
        try:
            summary.table = table()
        except (OSError, WriteError) as exc:
            if not (summary.disk_full or disk_full_error(exc)):
                raise
            summary.disk_full = summary.disk_full or str(exc)  # the journal holds what was done
        if figure and not summary.disk_full:
            from .figure import save_cohort_figure

            summary.figure = save_cohort_figure(out / FIGURE_NAME, summary.rows)
    summary.wall_s = time.perf_counter() - t0
    return summary


def _other_build(result: StudyResult, build: dict[str, str]) -> str:
    """How the build named in ``result``'s report.json (a failed study's: its worker's,
    `StudyResult.build`) differs from the batch's ``build`` (cmrsdk, code_sha256, manifest_sha256),
    "" when it does not. A result naming no build (a report.json without provenance, not written by
    `segment`; an engine's result without one) has nothing to compare."""
    data = result.files.get("report.json")
    try:
        made = json.loads(data).get("provenance") if data is not None else result.build
    except (ValueError, AttributeError):
        return ""
    if not isinstance(made, dict) or not made:
        return ""
    if not any(field in made and made[field] != value for field, value in build.items()):
        return ""

    def named(of: dict[str, Any]) -> str:
        code, manifest = str(of.get("code_sha256"))[:12], str(of.get("manifest_sha256"))[:12]
        return f"cmrsdk {of.get('cmrsdk')} (code {code}, bundle manifest {manifest})"

    return (
        f"study '{result.study_id}' was segmented by {named(made)}, this batch runs {named(build)}: cmrsdk or its "
        "bundle was replaced while the batch ran and a worker started since loaded the new one; its result is not filed"
    )


def _set_aside_other_ids(out: Path, journal: Journal, studies: Sequence[StudySource]) -> tuple[list[str], list[str]]:
    """Earlier results in ``out/studies/`` of study ids this run does not have: (superseded, unlisted).

    Only a folder the batch wrote is looked at: the journal's last record of its id is "ok" with
    outputs ``studies/<id>``, and it holds a report.json. Where this run reads that result's files
    (its source is, holds or lies in a source of this run: a cine once a study per series folder,
    now one study), it is moved to ``out/superseded/<id>`` and the journal says so; where not (inputs
    not given this time) it stays, and is only named.
    """
    ids = {study.study_id for study in studies}
    others = [
        (study_id, record)
        for study_id, record in journal.records.items()
        if study_id not in ids
        and record.get("status") == "ok"
        and record.get("outputs") == f"{STUDIES_DIR}/{study_id}"
        and study_id not in ("", ".", "..")
        and "/" not in study_id
        and (out / STUDIES_DIR / study_id / "report.json").is_file()
    ]
    if not others:
        return [], []
    # each of this run's sources and every folder above one -> the study reading it
    reads: dict[str, str] = {}
    above: dict[str, str] = {}
    for study in studies:
        if study.skip_reason:
            continue
        real = Path(os.path.realpath(study.source))
        reads.setdefault(str(real), study.study_id)
        for parent in real.parents:
            above.setdefault(str(parent), study.study_id)
    superseded: list[str] = []
    unlisted: list[str] = []
    for study_id, record in others:
        source = str(record.get("source") or "")
        was = Path(os.path.realpath(source))
        # this run reads a folder inside it, or it lies in (or is) a source of this run
        by = above.get(str(was)) or next((reads[str(p)] for p in (was, *was.parents) if str(p) in reads), None)
        if not source or by is None:
            unlisted.append(study_id)
            continue
        target = out / SUPERSEDED_DIR / study_id
        try:
            shutil.rmtree(target, ignore_errors=True)  # an older one set aside under this id
            target.parent.mkdir(exist_ok=True)
            os.replace(out / STUDIES_DIR / study_id, target)
        except OSError as exc:
            raise WriteError(f"{out / STUDIES_DIR / study_id}: cannot be moved to {target} ({exc})") from exc
        note = f"superseded: its files are measured as study '{by}'"
        journal.append(
            {
                **record,
                "status": "superseded",
                "error": note,
                "outputs": f"{SUPERSEDED_DIR}/{study_id}",
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
        superseded.append(study_id)
    return superseded, unlisted


def _some(names: Sequence[str], shown: int = 5) -> str:
    """The first ``shown`` names, and how many more."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _same_source(record: dict[str, Any], study: StudySource) -> bool:
    """The journal's record was made of this study's source: the same path and, for one study of a
    folder of several, the same StudyInstanceUID (None in both for a study alone)."""
    return record.get("source") == study.source and record.get("study_uid") == study.study_uid


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _rows(
    studies: Sequence[StudySource],
    records: dict[str, dict[str, Any]],
    key: str,
    inputs: dict[str, str],
    duplicates: dict[str, str],
    *,
    stopped: str,
    studies_dir: Path | None = None,
) -> list[dict[str, Any]]:
    current = {
        s.study_id: records[s.study_id]
        for s in studies
        if not s.skip_reason
        and s.study_id not in duplicates
        and s.study_id in records
        and records[s.study_id].get("status") in ("ok", "failed")  # not "superseded": set aside by a later run
        and records[s.study_id].get("key") == key
        and _same_source(records[s.study_id], s)
        and records[s.study_id].get("inputs") == inputs.get(s.study_id)
    }
    # byte-identical copies under other paths (the workers' content_sha256): one row keeps the
    # result, the first "ok" one in the table's order, else the first; the others name it
    keeper: dict[str, str] = {}
    for study_id, record in current.items():  # in the table's order
        content = record.get("content_sha256")
        if not content:
            continue
        if content not in keeper or (record.get("status") == "ok" and current[keeper[content]].get("status") != "ok"):
            keeper[content] = study_id
    rows = []
    for study in studies:
        done = current.get(study.study_id)
        if study.skip_reason:
            row = {"status": "skipped", "error": study.skip_reason}
        elif study.study_id in duplicates:
            row = {"status": "skipped", "error": duplicates[study.study_id]}
        elif done is not None:
            first = keeper.get(str(done.get("content_sha256") or ""))
            if first is not None and first != study.study_id:
                row = {"status": "skipped", "error": f"same content as study '{first}' (byte-identical files)"}
            else:
                row = dict(done)
        else:
            error = f"not run ({stopped}); run the same command again to finish"
            if studies_dir is not None and (studies_dir / study.study_id / "report.json").is_file():
                # an earlier run's (other options, build or inputs), kept until this study's result replaces it
                error += f"; {STUDIES_DIR}/{study.study_id} is an earlier run's result, not this table's"
            row = {"status": "skipped", "error": error}
        row.update(study_id=study.study_id, source=study.source)
        rows.append(row)
    return rows
