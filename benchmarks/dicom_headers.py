"""Reading a large DICOM disc's headers: `cmrsdk inspect` and the read of `cmrsdk segment`, now and before.

Builds a disc in a temporary folder from the shared Sunnybrook cines (SCD0000101, 240 files, and
SCD0000201, 260 files, taken in turn): ``--series`` copies, each a series of its own (new
SeriesInstanceUID and SOPInstanceUIDs, one StudyInstanceUID and PatientID for all, SeriesNumber
1..N), 3,000 files for the default 12: what a red-team sweep built, where `cmrsdk inspect` took
19.8 s, 7 ms a file. Each repeat then times, one after the other in this process:

- ``pydicom.dcmread``: every file read whole with pydicom (pixel data included, no element
  decoded), the plain reference;
- ``read previous`` / ``read now``: `cmrsdk.io.read_dicom_study` of the disc (what `cmrsdk
  segment` reads before segmenting: every header, then the chosen series' pixels), with the
  previous reader's header pass (every element of every header decoded, as iterating the data
  set does: `cmrsdk.io.dicom.check_decodable` replaced by that) and with cmrsdk's own;
- ``inspect previous`` / ``inspect now``: `cmrsdk.io.inspect` of the disc, previously reading
  every header twice (the study, then the series list: `one_walk` replaced by a no-op), now once.

It prints the median wall and CPU seconds of each, files per second, and the ratio previous /
now of the medians (> 1: now faster); it checks that both give the same study and inspect report.

    .venv/bin/python benchmarks/dicom_headers.py [--series 12] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pydicom
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cmrsdk.io import dicom, dispatch  # noqa: E402

CASES = [REPO.parent / "shared" / "data" / "sunnybrook" / name for name in ("SCD0000101", "SCD0000201")]


def build_disc(folder: Path, n_series: int) -> int:
    """``n_series`` copies of the Sunnybrook cines under ``folder`` (one sub-folder each); returns the file count."""
    study, count = generate_uid(), 0
    for index in range(n_series):
        source, series = CASES[index % len(CASES)], generate_uid()
        target = folder / f"series{index + 1:02d}"
        target.mkdir(parents=True)
        for file in sorted(source.glob("*.dcm")):
            dataset = pydicom.dcmread(file)
            dataset.SeriesInstanceUID, dataset.SOPInstanceUID = series, generate_uid()
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            dataset.StudyInstanceUID, dataset.PatientID, dataset.SeriesNumber = study, "DISC", index + 1
            dataset.save_as(target / file.name)
            count += 1
    return count


def _decode_every_element(dataset: pydicom.Dataset, decoded: object = None) -> None:
    """The previous reader's header pass: every top-level element decoded (``decoded`` unused)."""
    for _ in dataset:
        pass


@contextlib.contextmanager
def previous_reader() -> Iterator[None]:
    """cmrsdk's reader as it was: every header element decoded, `inspect` reading the disc twice."""
    check, walk = dicom.check_decodable, dispatch.one_walk
    dicom.check_decodable, dispatch.one_walk = _decode_every_element, contextlib.nullcontext  # type: ignore[assignment]
    try:
        yield
    finally:
        dicom.check_decodable, dispatch.one_walk = check, walk


def _timed(run: Callable[[], Any]) -> tuple[float, float, Any]:
    t0, c0 = time.perf_counter(), time.process_time()
    result = run()
    return time.perf_counter() - t0, time.process_time() - c0, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=12, help="copies of the cines on the disc (12: 3,000 files)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="4 series, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.series, args.repeats = 4, 1
    missing = [str(c) for c in CASES if not c.is_dir()]
    if missing:
        sys.exit(f"cmrsdk: the Sunnybrook cines are not there: {', '.join(missing)}")
    warnings.simplefilter("ignore")  # the disc holds 12 cines: the reader warns which it reads
    with tempfile.TemporaryDirectory(prefix="cmrsdk-disc-") as tmp:
        disc = Path(tmp)
        n_files = build_disc(disc, args.series)
        files = sorted(disc.rglob("*.dcm"))
        runs: dict[str, Callable[[], Any]] = {
            "pydicom.dcmread": lambda: [pydicom.dcmread(f) for f in files],
            "read previous": lambda: _previous(lambda: dicom.read_dicom_study(disc)),
            "read now": lambda: dicom.read_dicom_study(disc),
            "inspect previous": lambda: _previous(lambda: dispatch.inspect(disc)),
            "inspect now": lambda: dispatch.inspect(disc),
        }
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        results: dict[str, Any] = {}
        for _ in range(args.repeats):
            for name, run in runs.items():
                wall, cpu, results[name] = _timed(run)
                times[name].append((wall, cpu))
        _check_same(results)
    print(
        f"disc: {args.series} series, {n_files} files ({disc.name}), {args.repeats} repeat(s), "
        f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f} at the end; pydicom "
        f"{pydicom.__version__}"
    )
    print("| what | median wall s | median CPU s | files/s (wall) | previous / now (wall) | (CPU) |")
    print("|---|---:|---:|---:|---:|---:|")
    medians = {name: tuple(statistics.median(t[i] for t in runs_) for i in (0, 1)) for name, runs_ in times.items()}
    for name, (wall, cpu) in medians.items():
        before = medians.get(name.replace(" now", " previous")) if name.endswith(" now") else None
        ratios = f"{before[0] / wall:.2f}x | {before[1] / cpu:.2f}x" if before else " | "
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {n_files / wall:.0f} | {ratios} |")


def _previous(run: Callable[[], Any]) -> Any:
    with previous_reader():
        return run()


def _check_same(results: dict[str, Any]) -> None:
    """The previous reader and cmrsdk's give the same study and the same inspect report."""
    before, now = results["read previous"], results["read now"]
    same = before.info == now.info and len(before.phases) == len(now.phases)
    for a, b in zip(before.phases, now.phases):
        same = same and np.array_equal(a.pixels, b.pixels) and np.array_equal(a.affine, b.affine)
        same = same and a.spacing == b.spacing and a.source_files == b.source_files
    if not same or results["inspect previous"] != results["inspect now"]:
        sys.exit("cmrsdk: the previous reader and cmrsdk's read the disc differently")


if __name__ == "__main__":
    main()
