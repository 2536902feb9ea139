"""The ``cmrsdk`` command: segment studies, describe bundles and inputs, run the demo.

Every failure prints one line naming the input and the problem and makes the exit code
non-zero; with several inputs, the others carry on.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from . import DEMO_BUNDLE, __version__
from .errors import CmrError

__all__ = ["main", "DEMO_BUNDLE"]


def _study_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".dcm"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name or "study"


def segment_one(pipeline, source: Path, out_dir: Path) -> dict:
    """Read, segment and write one study; returns its report. I/O lives here, not in the pipeline."""
    from .io import read_study, write_dicom_seg, write_json, write_nifti_labels
    from .report import save_overlay, study_report

    t0 = time.perf_counter()
    study = read_study(source)
    read_ms = (time.perf_counter() - t0) * 1000.0
    result = pipeline.segment_study(study)
    report = study_report(result, study)
    report["timings_ms"]["read"] = round(read_ms, 2)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for phase_name, seg in (("ED", result.ed), ("ES", result.es)):
        written.append(write_nifti_labels(out_dir / f"labels_{phase_name}.nii.gz", seg.labels, seg.stack))
        if seg.stack.source_files:
            written.append(write_dicom_seg(out_dir / f"seg_{phase_name}.dcm", seg.labels, seg.stack))
    written.append(save_overlay(out_dir / "overlay.png", result))
    report["outputs"] = [Path(p).name for p in written] + ["report.json"]
    write_json(out_dir / "report.json", report)
    return report


def _heart_crop(args: argparse.Namespace):
    """The Pipeline's heart_crop from --heart-crop / --full-window (default: the bundle's)."""
    return None if args.full_window else tuple(args.heart_crop) if args.heart_crop else "bundle"


def _cmd_segment(args: argparse.Namespace) -> int:
    from .pipeline import Pipeline

    pipeline = Pipeline(args.bundle, backend=args.backend, device=args.device, mode=args.mode,
                        largest_component=not args.keep_fragments, threads=args.threads, heart_crop=_heart_crop(args),
                        region_decoding=args.region_decoding)
    inputs = [Path(p) for p in args.inputs]
    failures = 0
    progress = None
    if len(inputs) > 1:
        from tqdm import tqdm

        progress = tqdm(total=len(inputs), unit="study", file=sys.stderr)
    for source in inputs:
        out_dir = Path(args.output) / _study_name(source) if len(inputs) > 1 else Path(args.output)
        try:
            report = segment_one(pipeline, source, out_dir)
            m = report["measures"]
            line = (f"{source}: LVEF {m['lvef_pct']}%, LVEDV {m['lvedv_ml']} mL, RVEF {m['rvef_pct']}%, "
                    f"{report['timings_ms']['wall']:.0f} ms -> {out_dir}")
            (progress.write(line) if progress else print(line))
        except CmrError as exc:
            failures += 1
            print(f"cmrsdk: error: {source}: {exc}", file=sys.stderr)
        if progress:
            progress.update()
    if progress:
        progress.close()
    return 1 if failures else 0


def _cmd_batch(args: argparse.Namespace) -> int:
    from .cohort.command import run_command

    return run_command(args, _heart_crop(args))


def _cmd_demo(args: argparse.Namespace) -> int:
    """Write the embedded example study as DICOM, then segment it like any scanner series."""
    from .io import write_dicom_series
    from .pipeline import Pipeline
    from .synth import synthetic_study

    out = Path(args.output)
    dicom_dir = out / "example_dicom"
    write_dicom_series(dicom_dir, synthetic_study(seed=args.seed))
    pipeline = Pipeline(args.bundle, backend=args.backend, mode="routed")
    report = segment_one(pipeline, dicom_dir, out)
    m = report["measures"]
    print(f"example study: {dicom_dir}")
    print(f"routed segmentation with bundle {pipeline.bundle.path.name} ({', '.join(sorted(set(pipeline.provenance['backends'].values())))})")
    for phase in report["phases"]:
        regions = " ".join(s["region"][0].upper() if s["region"] != "non-cardiac" else "-" for s in phase.get("slices", []))
        print(f"  {phase['phase']}: slices base..apex by classifier [{regions}], volumes {phase['volumes_ml']}")
    print(f"  LVEDV {m['lvedv_ml']} mL, LVESV {m['lvesv_ml']} mL, LVEF {m['lvef_pct']}%, "
          f"LV mass {m['lv_mass_g']} g, RVEF {m['rvef_pct']}%")
    t = report["timings_ms"]
    print(f"  latency: {t['wall']:.1f} ms for the ED+ES pair, first call (preprocess {t['preprocess']:.1f}, "
          f"classify {t['classify']:.1f}, locate {t['locate']:.1f}, segment {t['segment']:.1f}, "
          f"postprocess {t['postprocess']:.1f}); benchmarks/README.md has warm medians")
    print(f"outputs in {out}: {', '.join(report['outputs'])}")
    return 0


def _case_folders(data: Path, every: int | None) -> list[Path]:
    """The ACDC patient or M&Ms subject folders under ``data`` (or ``data`` itself), sorted."""
    from .io import detect_format

    if detect_format(data) in ("acdc", "mnms"):
        return [data]
    folders = sorted(p for p in data.iterdir() if p.is_dir() and detect_format(p) in ("acdc", "mnms"))
    if every:
        # ACDC's held-out split of export/ is every N-th patient: patient005, patient010, ...
        folders = [p for i, p in enumerate(folders, start=1) if i % every == 0]
    return folders


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate, write_evaluation
    from .io import read_study
    from .pipeline import Pipeline

    folders = [f for d in args.data for f in _case_folders(Path(d), args.every)]
    if not folders:
        print(f"cmrsdk: error: no ACDC patient or M&Ms subject folders under {', '.join(args.data)}", file=sys.stderr)
        return 2
    pipelines = {mode: Pipeline(args.bundle, backend=args.backend, mode=mode, threads=args.threads, heart_crop=_heart_crop(args),
                                region_decoding=args.region_decoding) for mode in args.modes}
    studies = ((f.name, read_study(f)) for f in folders)
    result = evaluate(pipelines, studies)
    report = write_evaluation(result, args.output, baseline="baseline", title=args.title or f"cmrsdk evaluation: {len(folders)} studies")
    print(f"{len(folders)} studies evaluated with {', '.join(args.modes)} -> {report}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .bundle import load_bundle

    bundle = load_bundle(args.bundle)  # verifies every hash before anything is printed
    m = bundle.manifest
    print(f"bundle {bundle.path} (format {m.get('format_version')}, created {m.get('created')})")
    p = bundle.preprocessing
    print(f"preprocessing: spacing {p.target_spacing} mm, size {p.size} px, normalisation {p.normalization}")
    print("routing: " + ", ".join(f"{bundle.regions.get(r, r)} -> {name}" for r, name in sorted(bundle.routing.items())))
    print(f"classifier: {bundle.classifier or 'none'}")
    for name, model in sorted(bundle.models.items()):
        sizes = ", ".join(f"{key} {a.size / 1e6:.1f} MB" for key, a in sorted(model.artifacts.items()))
        print(f"model {name}: {model.kind}, {model.architecture}; {sizes}")
        parity = model.record.get("parity")
        if parity:
            print(f"  parity: {json.dumps(parity)}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .io import inspect

    failures = 0
    for path in args.paths:
        try:
            print(json.dumps(inspect(path), indent=2, default=str))
        except CmrError as exc:
            failures += 1
            print(f"cmrsdk: error: {path}: {exc}", file=sys.stderr)
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmrsdk",
        description="Routed segmentation of short-axis cine cardiac MRI (LV blood pool, LV myocardium, RV blood pool).",
    )
    parser.add_argument("--version", action="version", version=f"cmrsdk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def engine_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--bundle", default=str(DEMO_BUNDLE), help="model bundle directory (default: the demo bundle)")
        p.add_argument("--backend", default="auto", choices=["auto", "onnx", "torchscript", "tensorrt"],
                       help="inference backend (default: auto, the fastest available)")

    def pipeline_options(p: argparse.ArgumentParser) -> None:
        crop = p.add_mutually_exclusive_group()
        crop.add_argument("--heart-crop", nargs=2, type=int, default=None, metavar=("H", "W"),
                          help="U-Nets see only an H x W window around the heart (default: the bundle's, 128 128 for the demo)")
        crop.add_argument("--full-window", action="store_true", help="U-Nets see the bundle's full window (no heart crop)")
        p.add_argument("--region-decoding", default="monotone", choices=["monotone", "independent"],
                       help="monotone: the region sequence crosses the heart once (default); independent: per-slice argmax")

    p = sub.add_parser("segment", help="segment DICOM directories, NIfTI files, ACDC or M&Ms folders",
                       description="Writes labels_ED/ES.nii.gz, seg_ED/ES.dcm (DICOM input), report.json and overlay.png.")
    p.add_argument("inputs", nargs="+", help="DICOM directory, NIfTI file, ACDC patient or M&Ms subject folder")
    p.add_argument("-o", "--output", required=True, help="output directory (one sub-folder per study when several)")
    engine_options(p)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--mode", default="routed", choices=["routed", "baseline", "oracle"],
                   help="routed: classifier + region U-Nets; baseline: one U-Net; oracle: ground-truth regions")
    p.add_argument("--keep-fragments", action="store_true", help="skip the largest-connected-component clean-up")
    p.add_argument("--threads", type=int, default=None, help="native-kernel threads (default: all cores)")
    pipeline_options(p)
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("batch", help="segment a cohort into one table of measures (measures.csv), resumably, "
                                     "on a process pool or a Ray cluster",
                       description="Finds the studies under each root (or reads --list), segments those not done yet "
                                   "with the same bundle and options, and writes OUT/measures.csv, OUT/cohort.png and "
                                   "each study's outputs under OUT/studies/. Exit 1 when any study failed.")
    from .cohort.command import add_arguments as batch_arguments

    batch_arguments(p)
    engine_options(p)
    pipeline_options(p)
    p.set_defaults(func=_cmd_batch)

    p = sub.add_parser("demo", help="segment the embedded example study with the demo bundle")
    p.add_argument("-o", "--output", default="out/demo", help="output directory (default: out/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic example study")
    engine_options(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("evaluate", help="regional Dice, Tables 1-3, Figure 2 and volume agreement on labelled studies",
                       description="Segments ED and ES of every ACDC patient / M&Ms subject folder under DATA with each mode "
                                   "and writes CSV, Markdown and PNG results to OUT.")
    p.add_argument("--data", nargs="+", required=True, help="folders of ACDC patients or M&Ms subjects (or single case folders)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--modes", nargs="+", default=["baseline", "routed", "oracle"], choices=["baseline", "routed", "oracle"])
    p.add_argument("--every", type=int, default=None, help="keep every N-th case folder (ACDC's held-out split: 5)")
    p.add_argument("--title", default="")
    p.add_argument("--threads", type=int, default=None)
    engine_options(p)
    pipeline_options(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("info", help="describe a model bundle (models, routing, preprocessing, parity)")
    p.add_argument("bundle", nargs="?", default=str(DEMO_BUNDLE))
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("inspect", help="describe what a DICOM directory or NIfTI input holds")
    p.add_argument("paths", nargs="+")
    p.set_defaults(func=_cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CmrError as exc:
        print(f"cmrsdk: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
