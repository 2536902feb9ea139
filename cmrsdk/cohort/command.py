"""The ``cmrsdk batch`` command: arguments, the run, the summary lines and the exit code."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from ..errors import CmrWarning, InputError
from .batch import STUDIES_DIR, run_batch
from .discover import LIST_COLUMNS, discover_studies, read_study_list
from .engines import ENGINES, create_engine
from .worker import PipelineSpec

__all__ = ["add_arguments", "run_command"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The batch's own options (the bundle, backend and pipeline options are `segment`'s, added by the caller)."""
    from ..cli import positive_int  # --workers and --threads refused as read, before OUT is made

    p.add_argument(
        "inputs",
        nargs="*",
        metavar="ROOT_OR_STUDY",
        help="folders searched for studies (DICOM series, NIfTI files, ACDC, M&Ms, M&Ms-2), or studies",
    )
    p.add_argument(
        "--list",
        dest="study_list",
        metavar="STUDIES.csv",
        help=f"a CSV of studies instead of roots; columns {', '.join(LIST_COLUMNS)} (only source required)",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help=f"output folder: measures.csv, cohort.png, journal.jsonl, {STUDIES_DIR}/<study>/",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="worker processes or Ray actors (default: half the cores; "
        "with --engine ray --device cuda, 1 per GPU asked)",
    )
    p.add_argument(
        "--engine", default="local", choices=ENGINES, help="local: a process pool here (default); ray: Ray actors"
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster: 'auto', ray://HOST:PORT or HOST:PORT (default: a local Ray instance)",
    )
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="with --engine ray, each actor asks for one GPU"
    )
    p.add_argument("--mode", default="routed", choices=["routed", "baseline", "oracle"])
    p.add_argument("--keep-fragments", action="store_true", help="skip the largest-connected-component clean-up")
    p.add_argument("--threads", type=positive_int, default=None, help="threads per worker (default: cores / workers)")
    p.add_argument("--retry-failed", action="store_true", help="run again the studies that failed in an earlier run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-overlay", action="store_true", help="skip each study's overlay.png")
    p.add_argument("--no-report-html", action="store_true", help="skip each study's report.html")


def run_command(args: argparse.Namespace, heart_crop: Any, segment_spacing: Any = "bundle") -> int:
    """Run ``cmrsdk batch``: 0 when every study is measured, 1 when any failed, the output's disk
    filled up or cmrsdk or its bundle changed under the batch, 128 + the signal's number when
    interrupted (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
    ``heart_crop`` and ``segment_spacing`` as `cmrsdk.Pipeline` takes them."""
    if bool(args.inputs) == bool(args.study_list):
        raise InputError("give either ROOT_OR_STUDY folders or --list STUDIES.csv (one of the two)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CmrWarning)
        studies = read_study_list(args.study_list) if args.study_list else discover_studies(args.inputs, args.output)
    for warning in caught:  # what discovery passed over, said as the other commands say it
        print(f"cmrsdk: warning: {warning.message}", file=sys.stderr)
    spec = PipelineSpec(
        bundle=str(args.bundle),
        backend=args.backend,
        device=args.device,
        mode=args.mode,
        largest_component=not args.keep_fragments,
        heart_crop=heart_crop,
        region_decoding=args.region_decoding,
        mirroring=args.mirroring,
        systolic_base=args.systolic_base,
        apical_rv_weight=args.apical_rv_weight,
        training_layout=args.training_layout,
        rescale_heart=args.rescale_heart,
        segment_spacing=segment_spacing,
        overlay=not args.no_overlay,
        report_html=not args.no_report_html,
        label_convention=args.label_convention,
    )
    workers = args.workers
    if workers is None and args.engine == "ray" and args.device == "cuda":
        workers = 1

    def engine() -> Any:  # made only when some study needs running
        return create_engine(args.engine, spec, workers=workers, threads=args.threads, address=args.address)

    try:
        summary = run_batch(
            studies, spec, args.output, engine, retry_failed=args.retry_failed, progress=not args.no_progress
        )
    except KeyboardInterrupt:  # after the studies (while drawing the figure): the journal and table are whole
        print("cmrsdk: interrupted; run the same command again to finish", file=sys.stderr)
        return 130
    ok, failed, skipped = summary.count("ok"), summary.count("failed"), summary.count("skipped")
    rate = f", {summary.ran / summary.wall_s * 60:.1f} studies/min" if summary.ran else ""
    print(
        f"{len(summary.rows)} studies: {ok} ok, {failed} failed, {skipped} skipped; "
        f"{summary.ran} segmented now, {summary.reused} from earlier runs; {summary.wall_s:.1f} s{rate}"
    )
    if summary.table is not None:
        print(f"table {summary.table}" + (f", figure {summary.figure}" if summary.figure else ""))
    if failed:
        print(
            f"cmrsdk: {failed} studies failed (status 'failed' in the table); --retry-failed runs them again",
            file=sys.stderr,
        )
    if summary.disk_full:
        print(
            f"cmrsdk: error: stopped, the output's disk is full ({summary.disk_full}); make room and run the same "
            "command again to finish the rest",
            file=sys.stderr,
        )
        return 1
    if summary.build_changed:
        print(
            f"cmrsdk: error: stopped, {summary.build_changed}; run the same command again: it redoes every study "
            "with the cmrsdk and bundle now installed",
            file=sys.stderr,
        )
        return 1
    if summary.interrupted:
        print("cmrsdk: interrupted; run the same command again to finish the rest", file=sys.stderr)
        return 128 + (summary.stop_signal or 2)  # 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP
    return 1 if failed else 0
