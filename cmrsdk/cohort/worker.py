"""One worker's job: a pipeline loaded once, then study after study into a result row and files.

The same `StudyWorker` runs in a local pool process and in a Ray actor. It segments into a
private folder under the batch's scratch folder ``OUT/.tmp`` (which the next batch clears, so a
worker killed mid-study leaves no patient data in the system's temporary folder) and hands back
the files' bytes, so the one writer of OUT's results is the batch's driver. On a node that
cannot reach OUT (a cluster without a shared file system) it uses the system's temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Literal

from .._build import code_sha256
from ..errors import CmrError
from ..pipeline import DEFAULT_MIRRORING
from .discover import StudySource
from .table import measures_row
from .._warn import quiet

__all__ = [
    "PipelineSpec",
    "StudyResult",
    "StudyWorker",
    "code_sha256",
    "content_sha256",
    "inputs_fingerprint",
    "segment_study",
    "set_thread_count",
]


@dataclass(frozen=True)
class PipelineSpec:
    """What a worker needs to build its `cmrsdk.Pipeline` (picklable, sent to every worker).

    Attributes mirror `Pipeline`'s parameters; ``heart_crop`` is (h, w), None or "bundle".
    """

    bundle: str
    backend: str = "auto"
    device: str = "cpu"
    mode: str = "routed"
    largest_component: bool = True
    heart_crop: tuple[int, int] | None | Literal["bundle"] = "bundle"
    region_decoding: str = "monotone"
    mirroring: bool | str = DEFAULT_MIRRORING
    systolic_base: bool = True
    apical_rv_weight: float | None = None  # None: the pipeline's default
    training_layout: bool | None = None  # None: the pipeline's default
    rescale_heart: bool | None = None  # None: the pipeline's default
    segment_spacing: float | None | Literal["bundle"] = "bundle"  # None: the training grid
    overlay: bool = True  # outputs a reader looks at; they do not change the numbers
    report_html: bool = True
    # how ACDC / M&Ms label maps are coded (cmrsdk.io.read_study's convention): a map read the
    # wrong way is refused, so it decides whether a study is read, never its numbers
    label_convention: str | None = None

    def key_inputs(self, manifest_sha256: str) -> dict[str, Any]:
        """What decides the numbers: the bundle's manifest, the options, cmrsdk's version and code
        (written beside the table as ``options.json``, so that a key can be read in words).

        The device, thread counts and engine are left out: they decide how fast, not what; so is
        the label convention, which decides only whether a study is read (``--retry-failed``).
        cmrsdk's own code is in (`code_sha256`): a build between two runs of one version number
        (a checkout, a patched install) must not leave rows of the old code in the table.
        """
        from .. import __version__

        how = ("bundle", "device", "overlay", "report_html", "label_convention")
        what = {k: v for k, v in asdict(self).items() if k not in how}
        # an option left to the pipeline's default and the default said are one option
        what.update(training_layout=bool(self.training_layout), rescale_heart=self.rescale_heart is not False)
        what.update(manifest_sha256=manifest_sha256, cmrsdk=__version__, code=code_sha256())
        return what

    def key(self, manifest_sha256: str) -> str:
        """A short hash of `key_inputs`: the table's ``options_key``."""
        what = self.key_inputs(manifest_sha256)
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=list).encode()).hexdigest()[:16]


@dataclass
class StudyResult:
    """What a worker hands back for one study.

    Attributes
    ----------
    study_id : the study's id.
    row : the table's columns for this study (status "ok" or "failed", ``error``, ``seconds``, measures).
    files : relative path -> bytes of each output `segment` wrote; empty for a failed study.
    disk_full : it failed because the disk (or the user's quota) was full: not the study's fault,
        and every study after it would fail the same way (`disk_full_error`).
    build : the worker's cmrsdk version, code hash and bundle manifest hash (its pipeline's
        provenance, taken as it loaded): what the batch checks a result against its key by where
        no report.json names them (a failed study).
    """

    study_id: str
    row: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    disk_full: bool = False
    build: dict[str, str] = field(default_factory=dict)


def disk_full_error(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an error it was raised from, is a full disk or quota (ENOSPC, EDQUOT)."""
    import errno

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def set_thread_count(threads: int) -> None:
    """Cap the math libraries' thread pools of this process (before they start) so workers share cores."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    # torch sizes its pool (TorchScript, AOTInductor) from OMP_NUM_THREADS when first imported, so
    # only a torch loaded already is told; importing it here cost every ONNX Runtime or OpenVINO
    # node and batch worker 2.8 s and PyTorch's memory for nothing (session 51)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def segment_study(
    pipeline: Any,
    source: Path,
    out_dir: Path,
    *,
    overlay: bool = True,
    report_html: bool = True,
    height_cm: float | None = None,
    weight_kg: float | None = None,
    label_convention: str | None = None,
    study_uid: str | None = None,
) -> dict[str, Any]:
    """Read, segment and write one study as `cmrsdk segment` does; returns its report.

    The one place the batch calls the per-study function of the ``segment`` command.
    ``height_cm`` / ``weight_kg`` (a study list's) replace the file's own in the report;
    ``label_convention`` and ``study_uid`` (one study of a folder of several,
    `StudySource.study_uid`) are `cmrsdk.study.segment_one`'s.
    """
    from ..study import segment_one

    return segment_one(
        pipeline,
        source,
        out_dir,
        overlay=overlay,
        report_html=report_html,
        height_cm=height_cm,
        weight_kg=weight_kg,
        label_convention=label_convention,
        study_uid=study_uid,
    )


def _study_files(source: Path, files: Sequence[str] = ()) -> list[Path] | None:
    """A study's files: the file itself (with a NIfTI's JSON sidecar, which can turn its layout:
    `cmrsdk.Stack.dicom_turn`), or a folder's files (hidden ones left out), sorted; None where the
    source is neither. ``files`` (`StudySource.files`, one study of a folder of several): those
    under the folder alone."""
    if files and source.is_dir():
        return [source / name for name in files]
    if source.is_file():
        from ..io.nifti import sidecar_path

        sidecar = sidecar_path(source) if source.name.lower().endswith((".nii", ".nii.gz")) else None
        return [source, sidecar] if sidecar is not None and sidecar.is_file() else [source]
    if source.is_dir():
        return sorted(
            p
            for p in source.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source).parts)
        )
    return None


def inputs_fingerprint(study: StudySource) -> str:
    """What says a study's inputs are those of an earlier run: its files' relative paths, sizes and
    modification times (hidden ones left out, as `content_sha256` leaves them) and the study
    list's values; "missing" where the source is gone. Costs a stat per file, not a read."""
    source = Path(study.source)
    files = _study_files(source, study.files)
    if files is None:
        return "missing"
    digest = hashlib.sha256(repr((study.height_cm, study.weight_kg, study.heart_rate_bpm)).encode())
    if study.study_uid is not None:  # one study of a folder of several (a study alone: as before 0.14.7)
        digest.update(f"StudyInstanceUID {study.study_uid}\n".encode())
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            continue  # removed while listed: the worker's read says so
        # file names as the file system stores them: a latin-1 name is not UTF-8
        name = os.fsencode(path.name if source.is_file() else path.relative_to(source))
        digest.update(name + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def content_sha256(source: Path, files: Sequence[str] = ()) -> str | None:
    """SHA-256 of a study's bytes: of the file, or of a folder's files (hidden ones left out; with
    ``files``, `StudySource.files`, those alone) in the order of their digests, names left out;
    None where it cannot be read. Byte-identical copies under other names give the same value;
    any changed byte another.

    Costs one read of the study (about 1 GB/s; a 240-image DICOM cine of 32 MB takes 40 ms), in the
    worker, beside a segmentation of seconds.
    """
    try:
        digests = []
        if files and source.is_file():  # one study of a ZIP archive of several: its members' bytes
            with zipfile.ZipFile(source) as archive:
                for name in files:
                    digest = hashlib.sha256()
                    with archive.open(name) as handle:
                        while chunk := handle.read(1 << 20):
                            digest.update(chunk)
                    digests.append(digest.hexdigest())
        paths = [] if digests else _study_files(source, files)
        if paths is None:
            return None
        for path in paths:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
            digests.append(digest.hexdigest())
    except Exception:  # unreadable, a name the file system refuses, ...: no identity, the study is still segmented
        return None
    if not digests:
        return None
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()


def _dicom_heart_rate(source: Path, series_uid: str | None) -> float | None:
    """Heart rate (bpm) of a DICOM series: the median of HeartRate (0018,1088) over the series'
    files that carry one, else the median of 60000 / NominalInterval (0018,1062); None when no
    file carries either.

    HeartRate is the rate during each image's acquisition and varies across a cine series
    (Sunnybrook SCD0000101: 75 to 82 bpm over 240 files, median 79): no one file stands for the
    series. Only headers are read (three tags, no pixels; 0.25 s for those 240 files).
    ``series_uid`` None: the series of the first readable file, never a mix of series.
    """
    import statistics

    import pydicom

    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    chosen = series_uid or None
    rates: dict[str, list[float]] = {"HeartRate": [], "NominalInterval": []}
    for path in files:
        with quiet():  # invalid UIDs (Sunnybrook) warn when first read
            try:
                header = pydicom.dcmread(
                    str(path),
                    stop_before_pixels=True,
                    specific_tags=["SeriesInstanceUID", "HeartRate", "NominalInterval"],
                )
                uid = str(header.get("SeriesInstanceUID", ""))
            except Exception:  # not DICOM, or unreadable: the reader already chose the series
                continue
        if chosen is None:
            chosen = uid
        if uid != chosen:
            continue
        for keyword, convert in (("HeartRate", float), ("NominalInterval", lambda ms: 60000.0 / float(ms))):
            try:
                value = convert(header.get(keyword))
            except (TypeError, ValueError, ZeroDivisionError):
                continue
            if 0 < value < float("inf"):
                rates[keyword].append(value)
    for values in rates.values():  # HeartRate first
        if values:
            return round(statistics.median(values), 2)
    return None


class StudyWorker:
    """Loads the pipeline once; `run` turns one study into a `StudyResult` and never raises for a study's fault.

    Parameters
    ----------
    spec : the pipeline to build.
    threads : threads for this worker's math libraries and native kernels.
    scratch : the folder to segment in (the batch's ``OUT/.tmp``); None, or a folder this node
        does not have: the system's temporary folder.
    """

    def __init__(self, spec: PipelineSpec, threads: int, scratch: str | None = None) -> None:
        set_thread_count(threads)
        from ..bundle import load_bundle
        from ..pipeline import Pipeline

        bundle = load_bundle(spec.bundle)
        given = {
            "apical_rv_weight": spec.apical_rv_weight,
            "training_layout": spec.training_layout,
            "rescale_heart": spec.rescale_heart,
        }
        rules: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
        self.pipeline = Pipeline(
            bundle,
            backend=spec.backend,
            device=spec.device,
            mode=spec.mode,  # type: ignore[arg-type]
            largest_component=spec.largest_component,
            threads=threads,
            heart_crop=spec.heart_crop,
            region_decoding=spec.region_decoding,  # type: ignore[arg-type]
            mirroring=spec.mirroring,
            systolic_base=spec.systolic_base,
            segment_spacing=spec.segment_spacing,
            **rules,
        )  # `threads` reaches ONNX Runtime's and OpenVINO's pools too, which size themselves from the cores
        self.pid = os.getpid()
        made = self.pipeline.provenance  # the code hash taken now, as the pipeline loads: what this worker runs
        self.build = {k: str(made[k]) for k in ("cmrsdk", "code_sha256", "manifest_sha256")}
        self.scratch = scratch
        self.outputs = {"overlay": spec.overlay, "report_html": spec.report_html}
        self.label_convention = spec.label_convention

    def ready(self) -> int:
        """The worker's process id, once its pipeline is loaded."""
        return self.pid

    def run(self, study: StudySource) -> StudyResult:
        """Segment one study into a temporary folder and return its row and files.

        Any exception a study raises becomes a "failed" row naming the exception; the worker
        carries on with the next study.
        """
        t0 = time.perf_counter()
        full = False
        # the batch counts byte-identical copies once (the journal keeps it; not a table column)
        content = content_sha256(Path(study.source), study.files)
        root = self.scratch if self.scratch and os.path.isdir(self.scratch) else None
        # hidden in OUT/.tmp, where the driver writes OUT/.tmp/<study_id>
        scratch = Path(tempfile.mkdtemp(prefix=".worker-" if root else "cmrsdk-batch-", dir=root))
        caught: list[warnings.WarningMessage] = []
        said: list[str] = []  # the study's own warnings (report.json's), collected by segment_one
        source = Path(study.source)
        try:
            # a cohort's thousands of reader warnings would bury the progress bar: they go to the row
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                report = segment_study(
                    self.pipeline,
                    source,
                    scratch,
                    **self.outputs,
                    height_cm=study.height_cm,
                    weight_kg=study.weight_kg,
                    label_convention=self.label_convention,
                    study_uid=study.study_uid,
                )
            heart_rate = study.heart_rate_bpm
            if heart_rate is None and source.exists() and (source.is_dir() or source.suffix.lower() == ".dcm"):
                from ..io import detect_format

                if detect_format(source) == "dicom":
                    heart_rate = _dicom_heart_rate(source, (report.get("study") or {}).get("series_uid"))
            said = [str(w) for w in report.get("warnings", [])]
            row = measures_row(report, height_cm=study.height_cm, weight_kg=study.weight_kg, heart_rate_bpm=heart_rate)
            files = {str(p.relative_to(scratch)): p.read_bytes() for p in sorted(scratch.rglob("*")) if p.is_file()}
            row.update(status="ok", error="")
        except (Exception, SystemExit) as exc:  # one study's fault must never stop the others
            message = str(exc) if isinstance(exc, CmrError) else f"{type(exc).__name__}: {exc}"
            row, files = {"status": "failed", "error": message.replace("\n", " ")}, {}
            full = disk_full_error(exc)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        messages = list(
            dict.fromkeys((text.splitlines() or [""])[0][:100] for text in [*said, *(str(w.message) for w in caught)])
        )
        if messages:
            shown = "; ".join(f"warning: {m}" for m in messages[:3]) + (
                f"; {len(messages) - 3} more" if len(messages) > 3 else ""
            )
            row["notes"] = "; ".join(n for n in (row.get("notes"), shown) if n)
        row.update(study_id=study.study_id, source=study.source, seconds=round(time.perf_counter() - t0, 3))
        if study.study_uid is not None:  # the journal's, beside the id that names it (not a table column)
            row["study_uid"] = study.study_uid
        if content is not None:
            row["content_sha256"] = content
        return StudyResult(study.study_id, row, files, disk_full=full, build=self.build)
