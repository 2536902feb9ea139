"""The ``cmrsdk`` command: segment studies, describe bundles and inputs, run the demo.

Every failure prints one line naming the input and the problem and makes the exit code
non-zero; with several inputs, the others carry on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import io
import re
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from . import DEMO_BUNDLE, __version__
from .engines import BACKENDS
from .errors import CmrError, CmrWarning, InputError
from .pipeline import DEFAULT_MIRRORING
from .study import (
    Interrupted,
    check_output_folder,
    raise_on_sigterm,
    stop_signals,
    segment_one,
)  # segment_one: kept importable from here

if TYPE_CHECKING:
    from .pipeline import PhaseProgress, Pipeline, RegionSource

__all__ = ["main", "DEMO_BUNDLE", "segment_one", "study_folder_names"]


def _study_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".dcm", ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name or "study"


def study_folder_names(inputs: Sequence[Path]) -> list[str]:
    """One output folder name per input, all distinct.

    The input's own name (without a NIfTI, DICOM or ZIP extension); where two inputs share it
    (``site1/DICOM``, ``site2/DICOM``) their parent folders are prefixed until they differ
    (``site1_DICOM``, ``site2_DICOM``); the same input given twice gets ``-2``, ``-3``.
    """
    parts = [[*Path(os.path.abspath(p)).parent.parts[1:], _study_name(Path(p))] for p in inputs]
    depth = [1] * len(parts)
    while True:
        names = ["_".join(p[-d:]) for p, d in zip(parts, depth)]
        grown = False
        for i, name in enumerate(names):
            # only another path with the same name makes this one grow; the same path twice gets -2
            if depth[i] < len(parts[i]) and any(n == name and parts[j] != parts[i] for j, n in enumerate(names)):
                depth[i] += 1
                grown = True
        if not grown:
            break
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return unique


def _missing_package(exc: ImportError) -> str:
    """What to install for an optional package that a command's path imported and did not find;
    for one installed whose libraries did not load (not a ModuleNotFoundError: a memory cap,
    ``ulimit -v``, refuses its shared objects), the loader's reason instead of "install"."""
    name = (exc.name or "?").split(".")[0]
    if not isinstance(exc, ModuleNotFoundError):
        return f"the installed package '{exc.name}' cannot be loaded ({exc}); a memory limit (ulimit -v) or a broken install?"
    extra = "io" if name in IO_MODULES or name == "pylibjpeg" else EXTRAS.get(name)
    where = f"pip install 'cmrsdk[{extra}]'" if extra else "install the cmrsdk extra that holds it"
    return f"needs the optional package '{name}': {where} (README 'Installation extras')"


#: what the inference runtimes' C++ cores say when an allocation fails: OpenVINO ("Failed to allocate
#: 12845056 bytes of memory", sweep 26 under ulimit -v), ONNX Runtime, PyTorch's CPU allocator, the C++
#: library; they raise RuntimeError (or their own class), not MemoryError
_ALLOCATION_FAILED = re.compile(
    r"failed to allocate|can't allocate memory|std::bad_alloc|cannot allocate memory|out of memory", re.IGNORECASE
)


def _allocation_failed(exc: BaseException) -> bool:
    """Whether a runtime's own exception says that memory could not be allocated."""
    return isinstance(exc, (RuntimeError, OSError)) and bool(_ALLOCATION_FAILED.search(str(exc)))


def _error_line(source: object, exc: BaseException) -> str:
    """``cmrsdk: error: <input>: <reason>`` naming the input once, on one line."""
    if isinstance(exc, CmrError):
        text = str(exc)
    elif isinstance(exc, ImportError) and exc.name:
        text = _missing_package(exc)
    elif isinstance(exc, MemoryError) or _allocation_failed(exc):
        text = f"out of memory{_memory_limit()}"
    else:
        text = f"unexpected {type(exc).__name__}: {exc} (please report this)"
    text = " ".join(text.split())  # one line, whatever the exception holds
    where = str(source)
    if text.startswith(where):  # a ReadError already names the input or a file under it
        return f"cmrsdk: error: {text}"
    return f"cmrsdk: error: {where}: {text}"


def _memory_limit() -> str:
    """The process's address-space limit as the reason for a MemoryError, where one is set."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return ""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return ""
    return f" (this process may use {limit / 2**30:.1f} GiB of address space: ulimit -v {limit // 1024})"


#: the modules of cmrsdk[io] that the commands writing a study's outputs import (SEG and SR,
#: overlay and page, quality flags, progress)
IO_MODULES = ("scipy", "highdicom", "matplotlib", "PIL", "tqdm")


#: the extra of pyproject.toml that installs each optional package outside cmrsdk[io]
EXTRAS = {
    "ray": "cohort",
    "pynetdicom": "serve",
    "torch": "torch",
    "openvino": "openvino",
    "torch_tensorrt": "tensorrt",
    "onnx": "train",
}


def require_io(command: str) -> None:
    """Refuse, before any study is read or any network runs, a command whose outputs need
    cmrsdk[io] where it is not installed (it failed after the segmentation, or in a traceback)."""
    from importlib.util import find_spec

    missing = [name for name in IO_MODULES if find_spec(name) is None]
    if missing:
        raise InputError(
            f"cmrsdk {command} needs the optional package{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            "of cmrsdk[io]: pip install 'cmrsdk[io]'"
        )


def _heart_crop(args: argparse.Namespace):
    """The Pipeline's heart_crop from --heart-crop / --full-window (default: the bundle's)."""
    return None if args.full_window else tuple(args.heart_crop) if args.heart_crop else "bundle"


def _segment_spacing(args: argparse.Namespace) -> float | None | str:
    """The Pipeline's segment_spacing from --segment-spacing MM | training (default: the bundle's)."""
    given = args.segment_spacing
    return "bundle" if given is None else None if given == "training" else float(given)


def _rule_options(args: argparse.Namespace) -> dict[str, Any]:
    """The decision rules' options given on the command line; those not given keep `Pipeline`'s defaults."""
    rules: dict[str, Any] = {"segment_spacing": _segment_spacing(args)}
    if args.apical_rv_weight is not None:
        rules["apical_rv_weight"] = args.apical_rv_weight
    if args.training_layout is not None:
        rules["training_layout"] = args.training_layout
    if args.rescale_heart is not None:
        rules["rescale_heart"] = args.rescale_heart
    return rules


#: options of the routed pipeline only (`Pipeline` takes them in every mode, and baseline ignores them)
_ROUTED_ONLY = (("apical_rv_weight", "--apical-rv-weight"), ("segment_spacing", "--segment-spacing"))


def _note_routed_only(args: argparse.Namespace) -> None:
    """One warning per routed-mode option given where no mode of the command is routed: it does
    nothing there, and was accepted without a word."""
    modes = getattr(args, "modes", None) or [getattr(args, "mode", None)]
    if any(mode != "baseline" for mode in modes):
        return
    given = "--modes baseline" if hasattr(args, "modes") else "--mode baseline"
    for name, option in _ROUTED_ONLY:
        if getattr(args, name, None) is not None:
            print(f"cmrsdk: warning: {option} applies to routed mode only; ignored with {given}", file=sys.stderr)


def pipeline_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """`Pipeline`'s keyword arguments from `add_pipeline_options`, --keep-fragments and --threads."""
    return {
        "largest_component": not args.keep_fragments,
        "threads": args.threads,
        "heart_crop": _heart_crop(args),
        "region_decoding": args.region_decoding,
        "mirroring": args.mirroring,
        "systolic_base": args.systolic_base,
        **_rule_options(args),
    }


def positive_int(text: str) -> int:
    """argparse type of counts (--threads, --every): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _spacing_or_training(text: str) -> str:
    """argparse type of --segment-spacing: a positive number of mm, or "training"."""
    if text != "training":
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a spacing in mm (> 0) or 'training', got {text!r}")
    return text


def _method(mode: str, bundle: str, **options: Any) -> tuple[Pipeline, RegionSource | None]:
    """The pipeline of a --mode / --modes name and the region source it routes by.

    "oracle" is no pipeline mode but routing by the ground truth: a routed pipeline that takes
    its regions from the caller, handed the evaluation side's `ground_truth_regions`.
    """
    from .pipeline import Pipeline

    if mode == "oracle":
        from .evaluation import ground_truth_regions

        pipeline = Pipeline(bundle, mode="routed", regions_from="caller", **options)
        source: RegionSource | None = ground_truth_regions
    else:
        pipeline, source = Pipeline(bundle, mode=mode, **options), None  # type: ignore[arg-type]
    threads = options.get("threads")
    if threads and {"torchscript", "aoti"} & set(pipeline.provenance["backends"].values()):
        import torch  # a torch engine's pool is the process's: --threads caps it here, the command's process

        torch.set_num_threads(threads)
    return pipeline, source


def _cmd_segment(args: argparse.Namespace) -> int:
    require_io("segment")
    from .io import expand_inputs

    output = Path(args.output)
    inputs: list[Path] = []
    failures = 0
    for given in args.inputs:
        path = Path(given)
        try:
            missing = not path.exists()
        except OSError:  # it cannot be looked at (a link into another user's /proc): its reader says so
            missing = False
        if missing:
            failures += 1
            print(f"cmrsdk: error: {path}: no such file or directory", file=sys.stderr)
            continue
        inputs.extend(expand_inputs(path))
    several = len(inputs) > 1 or len(args.inputs) > 1
    if args.series is not None and several:
        raise InputError(f"--series {args.series} names a series of one study: give one DICOM input, not {len(inputs)}")
    if args.study is not None and several:
        raise InputError(f"--study {args.study} names one study: give one DICOM input, not {len(inputs)}")
    if several:
        check_output_folder(output, contents=False)  # -o itself: a file, under a file, not writable
        targets = [output / name for name in study_folder_names(inputs)]
    else:
        targets = [output for _ in inputs]
    # every output problem is found before the bundle is loaded or any study read
    planned = []
    for source, target in zip(inputs, targets):
        try:
            check_output_folder(target)
            planned.append((source, target))
        except CmrError as exc:
            failures += 1
            print(_error_line(source, exc), file=sys.stderr)
    if planned:
        pipeline, region_source = _method(
            args.mode,
            args.bundle,
            backend=args.backend,
            device=args.device,
            precision=args.precision,
            **pipeline_arguments(args),
        )
    progress = None
    if len(planned) > 1 and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=len(planned), unit="study", file=sys.stderr)
    say = progress.write if progress else print
    done = 0
    for source, out_dir in planned:
        try:
            with _phase_bar(progress is None) as phases:
                report = segment_one(
                    pipeline,
                    source,
                    out_dir,
                    overlay=not args.no_overlay,
                    report_html=not args.no_report_html,
                    region_source=region_source,
                    series_uid=args.series,
                    study_uid=args.study,
                    label_convention=args.label_convention,
                    progress=phases,
                )
        except Exception as exc:  # one study's failure never stops another's
            failures += 1
            print(_error_line(source, exc), file=sys.stderr)
        else:
            done += 1
            for message in report.get("warnings", []):
                print(f"cmrsdk: warning: {' '.join(message.split())}", file=sys.stderr)
            say(_result_line(source, report, out_dir))
        if progress:
            progress.update()
    if progress:
        progress.close()
    if several or failures:
        print(f"cmrsdk: {done} of {done + failures} studies segmented, {failures} failed", file=sys.stderr)
    return 1 if failures else 0


@contextlib.contextmanager
def _phase_bar(shown: bool) -> Iterator[PhaseProgress | None]:
    """A bar of the phases segmented while the block runs, on a terminal only (``shown``): a cine
    takes tens of seconds, a large one minutes (sweep 26: 3 min 48 s in silence). It leaves no
    line behind."""
    if not (shown and sys.stderr.isatty()):
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=0, unit="phase", file=sys.stderr, leave=False, desc="segmenting")

    def show(done: int, total: int) -> None:
        bar.total = total  # a second pass (ED found late, a heart rescaled) adds its phases
        bar.update(done - bar.n)

    try:
        yield show
    finally:
        bar.close()


def _fmt(value: object, unit: str) -> str:
    return "n/a" if value is None else f"{value}{unit}"


#: the flags a result line names: the numbers on it are missing or likely wrong
_RESULT_LINE_FLAGS = frozenset(
    {
        "slice_gap", "blank_image", "no_lv", "no_volume_change", "lv_esv_exceeds_edv", "rv_esv_exceeds_edv",
        "es_lv_lost", "lv_not_ringed", "lvedv_below_adult", "thin_slices", "thick_slices",
        "ed_es_swapped",
    }
)  # fmt: skip


def _result_line(source: Path, report: dict, out_dir: Path) -> str:
    """One line per study: EF and volumes, or what is missing and why."""
    m = report["measures"]
    wall = report["timings_ms"]["wall"]
    flags = sorted({f for phase in report["phases"] for f in phase["quality_flags"]} | set(report.get("flags", [])))
    if "single_phase" in flags:
        head = (
            f"one phase only: LV volume {_fmt(m.get('lv_volume_ml'), ' mL')}, "
            f"RV volume {_fmt(m.get('rv_volume_ml'), ' mL')}, "
            "no SV or EF (needs ED and ES)"
        )
    else:
        head = f"LVEF {_fmt(m['lvef_pct'], '%')}, LVEDV {_fmt(m['lvedv_ml'], ' mL')}, RVEF {_fmt(m['rvef_pct'], '%')}"
    if "single_slice" in flags:
        head += " (one slice: no volume)"
    shown = [f for f in flags if f in _RESULT_LINE_FLAGS]
    return f"{source}: {head}, {wall:.0f} ms -> {out_dir}" + (f" [flags: {', '.join(shown)}]" if shown else "")


def _cmd_batch(args: argparse.Namespace) -> int:
    require_io("batch")
    from .cohort.command import run_command

    return run_command(args, _heart_crop(args), _segment_spacing(args))


def serve_pipeline_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of the one `Pipeline` a ``cmrsdk serve`` node builds, besides bundle,
    backend and device: --mode, --precision and the options `pipeline_arguments` reads."""
    return {"mode": args.mode, "precision": args.precision, **pipeline_arguments(args)}


def _cmd_serve(args: argparse.Namespace) -> int:
    if not args.status:  # the node writes SEG, SR and NIfTI: refused before it listens (--status reads the spool only)
        require_io("serve")
    from .serve.command import run_serve

    return run_serve(args, serve_pipeline_arguments(args))


def _cmd_demo(args: argparse.Namespace) -> int:
    """Write the embedded example cine as DICOM, segment it like any scanner series, score it on its truth."""
    require_io("demo")
    from .io import write_dicom_series
    from .phantom import cine_phantom
    from .pipeline import Pipeline

    out = Path(args.output)
    dicom_dir = out / "example_dicom"
    truth = cine_phantom(seed=args.seed, n_phases=args.phases)
    write_dicom_series(dicom_dir, truth, series_description=truth.info.series_description or "SAX cine")
    pipeline = Pipeline(args.bundle, backend=args.backend, mode="routed", precision=args.precision)
    report = segment_one(pipeline, dicom_dir, out, keep=("example_dicom",), truth=truth)
    m, g = report["measures"], report["ground_truth"]
    print(f"example study: {dicom_dir} (synthetic bSSFP short-axis cine, {len(truth.phases)} frames, seed {args.seed})")
    print(
        f"routed segmentation with bundle {pipeline.bundle.path.name} ({', '.join(sorted(set(pipeline.provenance['backends'].values())))})"
    )
    print(
        f"  ED frame {report['ed_index']}, ES frame {report['es_index']} from the LV volume curve (truth: ES frame {truth.es_index})"
    )
    for index in (report["ed_index"], report["es_index"]):
        phase = report["phases"][index]
        regions = " ".join(
            s["region"][0].upper() if s["region"] != "non-cardiac" else "-" for s in phase.get("slices", [])
        )
        print(f"  {phase['phase']}: slice regions [{regions}], volumes {phase['volumes_ml']}")
    print(
        f"  LVEDV {m['lvedv_ml']} mL, LVESV {m['lvesv_ml']} mL, LVEF {m['lvef_pct']}%, "
        f"LV mass {m['lv_mass_g']} g, RVEF {m['rvef_pct']}%"
    )
    print(
        f"  ground truth: LVEDV {g['true LVEDV (mL)']} mL, LVESV {g['true LVESV (mL)']} mL, "
        f"LVEF {g['true LVEF (%)']}%, RVEF {g['true RVEF (%)']}%"
    )
    print(
        "  Dice against the ground truth (ED / ES): "
        + ", ".join(
            f"{name} {g[f'Dice {name} ED']:.3f} / {g[f'Dice {name} ES']:.3f}" for name in ("LVBP", "LVM", "RVBP")
        )
    )
    t = report["timings_ms"]
    print(
        f"  latency: {t['wall']:.1f} ms for {len(report['phases'])} frames, first call (preprocess {t['preprocess']:.1f}, "
        f"classify {t['classify']:.1f}, locate {t['locate']:.1f}, segment {t['segment']:.1f}, "
        f"postprocess {t['postprocess']:.1f}); benchmarks/README.md has warm medians"
    )
    print(f"outputs in {out}: {', '.join(report['outputs'])} (open report.html in a browser)")
    return 0


def _case_folders(data: Path, every: int | None) -> tuple[list[Path], list[tuple[Path, str]], int]:
    """The ACDC patient or M&Ms subject folders under ``data`` (or ``data`` itself) kept by ``every``,
    sorted; the folders holding NIfTI files that are not recognised, with the reason (printed
    here); and how many case folders were found before ``every``."""
    from .evaluation.cases import find_case_folders

    # ACDC's held-out split of export/ is every N-th patient: patient005, patient010, ...
    found = find_case_folders(data, every)
    for path, reason in found.skipped:
        print(f"cmrsdk: warning: skipped {path}: {' '.join(reason.split())}", file=sys.stderr)
    return found.folders, found.skipped, found.found


def _cmd_evaluate(args: argparse.Namespace) -> int:
    require_io("evaluate")
    import warnings

    from .evaluation import evaluate, write_evaluation
    from .evaluation.cases import check_ground_truth
    from .evaluation.output import check_evaluation_folder, staged_output
    from .evaluation_sunnybrook import is_sunnybrook_root, sunnybrook_cases
    from .io import read_study

    check_output_folder(args.output, contents=False)  # a file there: refused now, not after the evaluation
    out = check_evaluation_folder(args.output)  # replaced whole at the end: nothing foreign may be in it
    roots = list({Path(d).resolve(): Path(d) for d in args.data if is_sunnybrook_root(d)}.values())
    # every root's link.csv read before any work; one table for all, a name per series, distinct
    listed = [case for root in roots for case in sunnybrook_cases(root)]
    sunnybrook = [
        (name, series, contours)
        for name, (_, series, contours) in zip(study_folder_names([series for _, series, _ in listed]), listed)
    ]
    folders: list[Path] = []
    skipped: list[tuple[str, str]] = []
    found = 0
    for given in args.data:
        if is_sunnybrook_root(given):
            continue
        kept, unrecognised, count = _case_folders(Path(given), args.every)
        found += count
        skipped += [(str(path), reason) for path, reason in unrecognised]
        # the same folder named twice (--data d d/patient001) is one case, evaluated once
        folders += [f for f in kept if f.resolve() not in {g.resolve() for g in folders}]
    if not folders and not sunnybrook:
        where = ", ".join(args.data)
        if found:
            k = args.every
            text = (
                f"{found} case folders found under {where}; --every {k} keeps none (it keeps the {k}th, {2 * k}th, ...)"
            )
        else:
            text = f"no ACDC patient, M&Ms subject or Sunnybrook folders under {where}"
            text += f"; {len(skipped)} folders not recognised (listed above)" if skipped else ""
        print(f"cmrsdk: error: {text}", file=sys.stderr)
        return 2
    # one name per case, distinct: site1/patient001 and site2/patient001 never share a reference
    names = study_folder_names(folders)
    # every study read and checked before any is segmented: all the unusable ones named at once
    studies = []
    unreadable: list[tuple[Path, str]] = []
    read_warnings: dict[str, list[str]] = {}
    for name, folder in zip(names, folders):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CmrWarning)
            try:
                study = read_study(folder, convention=args.label_convention)
                check_ground_truth(study, folder)
            except Exception as exc:
                unreadable.append((folder, _error_line(folder, exc).removeprefix("cmrsdk: error: ")))
            else:
                studies.append((name, study))
        for w in caught:
            if not issubclass(w.category, CmrWarning):
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        said = list(
            dict.fromkeys(" ".join(str(w.message).split()) for w in caught if issubclass(w.category, CmrWarning))
        )
        for message in said:
            print(f"cmrsdk: warning: {message}", file=sys.stderr)
        if said:
            read_warnings[name] = said
    if unreadable:
        if not args.skip_unreadable or not (studies or sunnybrook):
            for _, line in unreadable:
                print(f"cmrsdk: error: {line}", file=sys.stderr)
            rest = f"; --skip-unreadable evaluates the other {len(studies)}" if studies else ""
            print(
                f"cmrsdk: error: {len(unreadable)} of {len(folders)} studies cannot be evaluated (listed above); "
                f"nothing was written{rest}",
                file=sys.stderr,
            )
            return 2
        for folder, line in unreadable:
            print(f"cmrsdk: warning: skipped {line}", file=sys.stderr)
            skipped.append((str(folder), line.removeprefix(f"{folder}: ")))
    methods = {
        mode: _method(
            mode,
            args.bundle,
            backend=args.backend,
            threads=args.threads,
            heart_crop=_heart_crop(args),
            region_decoding=args.region_decoding,
            precision=args.precision,
            mirroring=args.mirroring,
            systolic_base=args.systolic_base,
            **_rule_options(args),
        )
        for mode in args.modes
    }
    pipelines = {mode: pipeline for mode, (pipeline, _) in methods.items()}
    sources = {mode: source for mode, (_, source) in methods.items() if source is not None}
    result = evaluate(pipelines, studies, region_sources=sources) if studies else None
    if result is not None:
        # raised while segmenting, and the references' structures not annotated: printed, and kept per study
        for case, said in result.warnings.items():
            for message in said:
                print(f"cmrsdk: warning: {case}: {message}", file=sys.stderr)
        result.warnings = {
            case: list(dict.fromkeys([*read_warnings.get(case, []), *result.warnings.get(case, [])]))
            for case in dict.fromkeys([*read_warnings, *result.warnings])
        }
    # OUT replaced whole at the end: a failure leaves the earlier result, no file of another run survives
    with staged_output(out) as staging:
        if sunnybrook:
            # Sunnybrook's labels are partial: no ground-truth regions to route by
            unrouted = {m: p for m, p in pipelines.items() if m not in sources}
            _evaluate_sunnybrook(unrouted, roots, sunnybrook, staging)
        if result is not None:
            title = args.title or f"cmrsdk evaluation: {len(studies)} studies"
            write_evaluation(result, staging, baseline="baseline", title=title, skipped=skipped)
    if result is not None:
        note = f" ({len(skipped)} folders skipped, listed in report.md)" if skipped else ""
        print(
            f"{len(studies)} studies evaluated with {', '.join(args.modes)} -> {Path(args.output) / 'report.md'}{note}"
        )
    return 0


def _evaluate_sunnybrook(pipelines: dict, roots: list[Path], cases: list[tuple[str, Path, Path]], out: Path) -> None:
    """Endocardium and epicardium Dice on every contoured Sunnybrook image of ``cases`` (name,
    DICOM folder, contour folder; from ``roots``), per method, in one table."""
    from .evaluation import markdown_table, write_csv
    from .evaluation_sunnybrook import evaluate_sunnybrook, summarise

    out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Sunnybrook: LV contours of {', '.join(map(str, roots))}",
        "",
        "Dice (%) per contoured image: endocardium = LVBP against the i-contour, epicardium = LVBP + LVM "
        "against the o-contour.",
        "",
    ]
    for method, pipeline in pipelines.items():
        scores = evaluate_sunnybrook(pipeline, roots[0], cases=cases)
        write_csv(out / f"sunnybrook_{method}.csv", [vars(s) for s in scores])
        rows = summarise(scores)
        lines += [f"## {method}", "", markdown_table(rows), ""]
        for row in rows:
            print(
                f"sunnybrook {method} {row['case']} {row['surface']}: mean Dice {row['mean']:.1f} %, "
                f"min {row['min']:.1f} %, {row['below_92']} of {row['images']} images below 92 %"
            )
    (out / "sunnybrook.md").write_text("\n".join(lines))


def _cmd_info(args: argparse.Namespace) -> int:
    from .bundle import load_bundle

    bundle = load_bundle(args.bundle)  # verifies every hash before anything is printed
    m = bundle.manifest
    print(f"bundle {bundle.path} (format {m.get('format_version')}, created {m.get('created')})")
    p = bundle.preprocessing
    print(f"preprocessing: spacing {p.target_spacing} mm, size {p.size} px, normalisation {p.normalization}")
    crop = f"heart crop {p.heart_crop} px (search {p.heart_search})" if p.heart_crop else "no heart crop"
    grid = f"segment grid {p.segment_spacing} mm (routed)" if p.segment_spacing else "segments on the training grid"
    print(f"pipeline defaults: {crop}; {grid}")
    print(
        "routing: " + ", ".join(f"{bundle.regions.get(r, r)} -> {name}" for r, name in sorted(bundle.routing.items()))
    )
    print(f"classifier: {bundle.classifier or 'none'}; routed mode takes regions from the {bundle.regions_from}")
    declared = {str(k): v for k, v in (m.get("labels") or {}).items()}
    order = ", ".join(f"{k} {v}" for k, v in sorted(declared.items(), key=lambda kv: int(kv[0])))
    canonical = [str(k) for k in sorted(bundle.labels)] == sorted(declared, key=int) and all(
        bundle.labels[int(k)] == v for k, v in declared.items()
    )
    print(f"labels: {order}" + ("" if canonical else " (the outputs are put in cmrsdk's order: 1 LVBP, 2 LVM, 3 RVBP)"))
    for name, model in sorted(bundle.models.items()):
        sizes = ", ".join(f"{key} {a.size / 1e6:.1f} MB" for key, a in sorted(model.artifacts.items()))
        print(f"model {name}: {model.kind}, {model.architecture}; {sizes}")
        parity = model.record.get("parity")
        if parity:
            print(f"  parity: {json.dumps(parity)}")
    # the held-out Dice checks of reduced precisions (python -m export.quantize), one line each
    for key, record in sorted((m.get("quantization") or {}).items()):
        verdict = "passed" if record.get("passed") else "refused"
        print(
            f"precision check {key} on {record.get('backend')}: worst Dice drop {record.get('worst_drop', math.nan):.2f} "
            f"points over {record.get('slices')} held-out slices (gate {record.get('max_dice_drop')}): {verdict}"
        )
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .io import expand_inputs, inspect

    failures = 0
    for given in args.paths:
        # a folder of NIfTI files or of subjects is described study by study, as segment reads it
        paths = expand_inputs(given) if os.path.exists(given) else [Path(given)]  # False where it cannot be read
        for path in paths:
            try:
                print(json.dumps(inspect(path), indent=2, default=str))
            except CmrError as exc:
                failures += 1
                print(_error_line(path, exc), file=sys.stderr)
    return 1 if failures else 0


def add_fragment_and_thread_options(p: argparse.ArgumentParser) -> None:
    """--keep-fragments and --threads of a command that runs one pipeline (segment, serve):
    `pipeline_arguments` reads them back."""
    p.add_argument("--keep-fragments", action="store_true", help="skip the largest-connected-component clean-up")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads of the kernels and networks (default: all cores)",
    )


def add_precision_option(p: argparse.ArgumentParser) -> None:
    """--precision of a command that builds its pipelines itself (segment, demo, evaluate, serve)."""
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "int8", "fp16"],
        help="arithmetic: fp32 (default); bf16 the fastest on CPUs with AVX512-BF16 or AMX (warns where the "
        "manifest records no bf16 Dice check); int8 the bundle's int8 U-Nets (python -m export.quantize, "
        "Dice change in its manifest); fp16 on cuda",
    )


def add_pipeline_options(p: argparse.ArgumentParser) -> None:
    """The options of the pipeline's rules (`Pipeline`'s keyword arguments) that segment, batch,
    evaluate and serve take alike: `pipeline_arguments` reads them back."""
    crop = p.add_mutually_exclusive_group()
    crop.add_argument(
        "--heart-crop",
        nargs=2,
        type=int,
        default=None,
        metavar=("H", "W"),
        help="U-Nets see only an H x W window around the heart (default: the bundle's, 128 128 for the demo)",
    )
    crop.add_argument("--full-window", action="store_true", help="U-Nets see the bundle's full window (no heart crop)")
    p.add_argument(
        "--region-decoding",
        default="monotone",
        choices=["monotone", "independent"],
        help="monotone: the region sequence crosses the heart once (default); independent: per-slice argmax",
    )
    flips = p.add_mutually_exclusive_group()
    flips.add_argument(
        "--mirroring",
        dest="mirroring",
        action="store_const",
        const=True,
        default=DEFAULT_MIRRORING,
        help="test-time mirroring: each U-Net averaged over the slice and its 3 flips (4x the network time)"
        + (" (the default)" if DEFAULT_MIRRORING is True else ""),
    )
    flips.add_argument(
        "--half-turn",
        dest="mirroring",
        action="store_const",
        const="half_turn",
        help="each U-Net averaged over the slice and its half-turn (2x the network time)"
        + (" (the default)" if DEFAULT_MIRRORING == "half_turn" else ""),
    )
    flips.add_argument(
        "--no-mirroring",
        dest="mirroring",
        action="store_const",
        const=False,
        help="one network pass per slice" + (" (the default)" if DEFAULT_MIRRORING is False else ""),
    )
    p.add_argument(
        "--no-systolic-base",
        dest="systolic_base",
        action="store_false",
        help="keep the most basal ES RV even where it holds under 0.4 of that slice's ED RV "
        "(by default dropped: the valve plane descended into it, cmrsdk.systole)",
    )
    p.add_argument(
        "--apical-rv-weight",
        type=float,
        default=None,
        metavar="W",
        help="routed mode: multiply the RV's probability on apical slices by W before the argmax "
        "(cmrsdk.apex; default: the pipeline's; 1: no prior)",
    )
    p.add_argument(
        "--training-layout",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="turn stacks with a scanner orientation to the in-plane layout the U-Nets were trained in "
        "before the networks, and the labels back (cmrsdk.layout; default: the pipeline's)",
    )
    p.add_argument(
        "--segment-spacing",
        type=_spacing_or_training,
        default=None,
        metavar="MM|training",
        help="routed mode: the in-plane grid (mm) the U-Nets segment on, finer than the bundle's "
        "training grid; base slices go back to the training grid (cmrsdk.grid; default: the "
        "bundle's preprocessing.segment_spacing; 'training': the training grid)",
    )

    p.add_argument(
        "--rescale-heart",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="segment again, at a size the U-Nets learnt, a study whose ED LV is smaller or larger than any "
        "they learnt (a child's heart, a huge dilated one; cmrsdk.heart_size; default: on)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmrsdk",
        description="Routed segmentation of short-axis cine cardiac MRI (LV blood pool, LV myocardium, RV blood pool).",
    )
    parser.add_argument("--version", action="version", version=f"cmrsdk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def engine_options(p: argparse.ArgumentParser, precision: bool = True) -> None:
        p.add_argument("--bundle", default=str(DEMO_BUNDLE), help="model bundle directory (default: the demo bundle)")
        p.add_argument(
            "--backend",
            default="auto",
            choices=["auto", *BACKENDS],
            help="inference backend (default: auto, the fastest available)",
        )
        if precision:  # batch workers build their pipelines from a PipelineSpec, which has no precision yet
            add_precision_option(p)

    def label_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--label-convention",
            choices=["acdc", "mnms", "canonical"],
            default=None,
            help="how the label maps (_gt) code the structures where a pipeline wrote them otherwise than "
            "their layout's: acdc 1 RV 2 MYO 3 LV, mnms and canonical 1 LV 2 MYO 3 RV (default: an ACDC "
            "folder's acdc, an M&Ms folder's mnms; a map coded the other way round is refused, naming it)",
        )

    p = sub.add_parser(
        "segment",
        help="segment DICOM directories, NIfTI files, ACDC or M&Ms folders",
        description="Writes labels_ED/ES.nii.gz, seg_ED/ES.dcm and sr.dcm (DICOM input), report.json, "
        "report.html and overlay.png (labels.nii.gz, seg.dcm for a one-phase input); each study whole or not at all.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        help="DICOM directory, NIfTI file, ACDC patient or M&Ms subject folder, "
        "or a folder of NIfTI files, ACDC patients or M&Ms subjects",
    )
    p.add_argument("-o", "--output", required=True, help="output directory (one sub-folder per study when several)")
    engine_options(p)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    label_options(p)
    p.add_argument(
        "--mode",
        default="routed",
        choices=["routed", "baseline", "oracle"],
        help="routed: region U-Nets, regions from the bundle's classifier or from the baseline's masks "
        "(bundle's regions_from); baseline: one U-Net; oracle: routed by the ground-truth regions "
        "(inputs with labels only)",
    )
    add_fragment_and_thread_options(p)
    p.add_argument("--no-overlay", action="store_true", help="skip overlay.png (the slowest output)")
    p.add_argument("--no-report-html", action="store_true", help="do not write report.html (the page for a reader)")
    p.add_argument(
        "--series",
        metavar="UID",
        default=None,
        help="read this DICOM series (a SeriesInstanceUID, or a stack's UIDs joined by '+', as cmrsdk inspect "
        "lists them) instead of the short-axis cine the reader chooses; one DICOM input only",
    )
    p.add_argument(
        "--study",
        metavar="UID",
        default=None,
        help="read this DICOM study (a StudyInstanceUID; a folder holding several is refused naming them) of a "
        "folder holding several, its short-axis cine chosen by the reader's rules; one DICOM input only",
    )
    add_pipeline_options(p)
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser(
        "batch",
        help="segment a cohort into one table of measures (measures.csv), resumably, "
        "on a process pool or a Ray cluster",
        description="Finds the studies under each root (or reads --list), segments those not done yet "
        "with the same bundle and options, and writes OUT/measures.csv, OUT/cohort.png and "
        "each study's outputs under OUT/studies/. Exit 1 when any study failed.",
    )
    from .cohort.command import add_arguments as batch_arguments

    batch_arguments(p)
    label_options(p)
    engine_options(p, precision=False)
    add_pipeline_options(p)
    p.set_defaults(func=_cmd_batch)

    p = sub.add_parser("demo", help="segment the embedded example study with the demo bundle")
    p.add_argument("-o", "--output", default="out/demo", help="output directory (default: out/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic example study")
    p.add_argument("--phases", type=int, default=20, help="frames of the example cine (default: 20)")
    engine_options(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "evaluate",
        help="regional Dice, Tables 1-3, Figure 2 and volume agreement on labelled studies",
        description="Segments ED and ES of every ACDC patient / M&Ms subject folder under DATA with each mode "
        "and writes CSV, Markdown and PNG results to OUT, replaced whole (an earlier evaluation's files do not "
        "survive; a failed run leaves OUT as it was).",
    )
    p.add_argument(
        "--data", nargs="+", required=True, help="folders of ACDC patients or M&Ms subjects (or single case folders)"
    )
    p.add_argument("-o", "--output", required=True)
    p.add_argument(
        "--modes", nargs="+", default=["baseline", "routed", "oracle"], choices=["baseline", "routed", "oracle"]
    )
    p.add_argument(
        "--every", type=positive_int, default=None, help="keep every N-th case folder (ACDC's held-out split: 5)"
    )
    p.add_argument("--title", default="")
    p.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="evaluate the readable studies and list the others in report.md (default: refuse, naming them all)",
    )
    label_options(p)
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads of the kernels and networks")
    engine_options(p)
    add_pipeline_options(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "info",
        help="describe a model bundle (models, routing, preprocessing, parity)",
        description="Verifies every file hash of the bundle, then prints its format and creation date, "
        "preprocessing (spacing, size, normalisation), the pipeline defaults (heart crop, segment grid), "
        "routing (region -> model), where routed mode takes its regions from, the label order, each model "
        "with its artifacts and their sizes and parity records, and the held-out Dice checks of reduced "
        "precisions (python -m export.quantize).",
    )
    p.add_argument(
        "bundle", nargs="?", default=str(DEMO_BUNDLE), help="model bundle directory (default: the demo bundle)"
    )
    p.set_defaults(func=_cmd_info)

    from .serve.command import add_retrieve_parser, add_serve_parser, run_retrieve

    p = add_serve_parser(sub, str(DEMO_BUNDLE))
    p.add_argument(
        "--mode",
        default="routed",
        choices=["routed", "baseline"],
        help="routed: region U-Nets (default); baseline: one U-Net",
    )
    add_precision_option(p)
    add_fragment_and_thread_options(p)
    add_pipeline_options(p)
    p.set_defaults(func=_cmd_serve)
    add_retrieve_parser(sub).set_defaults(func=run_retrieve)

    p = sub.add_parser(
        "inspect",
        help="describe what a DICOM directory or NIfTI input holds",
        description="Prints, as JSON, one object per study: format, the DICOM series (the one chosen "
        "first), patient ID, slices, phases, matrix, spacing, orientation, ED and ES (ed_index, es_index) "
        "and trigger times; a ZIP archive is read unpacked. ED and ES are given only where the input names "
        "them (ed_es_from: input); for a cine that does not, segment finds them from the LV volume curve "
        "(ed_es_from: lv_volume; an ed_index given then is the first phase, the R-wave trigger's, not the ED "
        "segment measures). Segments nothing.",
    )
    p.add_argument("paths", nargs="+", help="DICOM directories, NIfTI files, ACDC or M&Ms folders, ZIP archives")
    p.set_defaults(func=_cmd_inspect)
    return parser


def _warning_line(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    """`warnings.showwarning` of the command line: one ``cmrsdk: warning:`` line, as the errors
    are, without Python's file name and source line; another package's names its category."""
    text = " ".join(str(message).split())
    own = issubclass(category, CmrWarning) or category.__module__.startswith("cmrsdk")
    print(f"cmrsdk: warning: {text if own else f'{category.__name__}: {text}'}", file=sys.stderr)


def _ignore_stop_signals() -> None:
    """Ctrl-C, SIGTERM and SIGHUP ignored from here on: the command has finished, its outputs are
    complete and its result line printed, so a signal now (while the interpreter shuts down) must
    not turn the exit status into 130 with no line saying why."""
    for s in (signal.SIGINT, *stop_signals()):
        try:
            signal.signal(s, signal.SIG_IGN)
        except ValueError:  # not the main thread
            return


def main(argv: Sequence[str] | None = None) -> int:
    """The ``cmrsdk`` program; ``argv`` None: the process's own arguments. Run as the program
    (``argv`` None), a stop signal that arrives once the command has finished is ignored: the
    exit status is the command's, not 130 with no 'interrupted' line. Called with ``argv`` (a
    test, another program), the caller's signal handlers are left as they were."""
    try:
        return _main(argv)
    finally:
        if argv is None:
            _ignore_stop_signals()


def _main(argv: Sequence[str] | None) -> int:
    import warnings

    for stream in (sys.stdout, sys.stderr):
        # a folder named in another encoding, or an ASCII-only terminal (PYTHONIOENCODING=ascii),
        # must not end a run at its result line: what cannot be shown is shown escaped
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    _note_routed_only(args)
    try:
        with raise_on_sigterm(), warnings.catch_warnings():
            warnings.showwarning = _warning_line
            status = int(args.func(args))
            if argv is None:  # Ctrl-C from here on would end a finished run with 130 and no line
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            return status
    except CmrError as exc:
        print(f"cmrsdk: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except ImportError as exc:
        if not exc.name:
            raise
        # an optional package a path of the command needs: one line, not a traceback
        print(f"cmrsdk: error: {_missing_package(exc)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"cmrsdk: error: out of memory{_memory_limit()}", file=sys.stderr)
        return 2
    except CmrWarning as exc:  # -W error / PYTHONWARNINGS=error made a warning the run's end
        print(
            f"cmrsdk: error: {' '.join(str(exc).split())} (a warning, raised as an error by the "
            "interpreter's warning filters: -W error or PYTHONWARNINGS)",
            file=sys.stderr,
        )
        return 2
    except (KeyboardInterrupt, Interrupted) as exc:
        # the study in progress was cleaned up on the way out (cmrsdk.study): nothing half-written
        signum = exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)
        print(
            f"cmrsdk: interrupted ({signal.Signals(signum).name}); finished studies are complete, the one in "
            "progress left nothing",
            file=sys.stderr,
        )
        return 128 + signum
    except BrokenPipeError:
        # the reader went away (`cmrsdk inspect ... | head -n 1`): stop quietly, as `cat` does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
