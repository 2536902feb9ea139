"""cmrsdk as a guest in a host's threads: its warnings handling leaves the host's alone (sweep 36).

Before 0.14.6 every file read wrapped ``warnings.catch_warnings`` (process-wide): four threads
reading DICOM left an "ignore" filter behind that silenced every warning of the host for good,
and let through 100 of the host's 3,416 warnings meanwhile; pydicom's log records about
invalid UIDs reached a host's logging (716 per Sunnybrook study).
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path

import pydicom
import pytest

from cmrsdk.errors import CmrWarning
from cmrsdk.io import read_study, write_dicom_series
from cmrsdk.synth import synthetic_study


class HostWarning(UserWarning):
    pass


@pytest.fixture(scope="module")
def quirky_series(tmp_path_factory) -> Path:
    """A small DICOM cine whose UIDs are invalid (a leading zero), as Sunnybrook's are: pydicom
    warns and logs about them as they are read."""
    folder = tmp_path_factory.mktemp("quirky")
    files = write_dicom_series(folder, synthetic_study(seed=2, n_slices=4, shape=(32, 32), n_phases=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns as the invalid values are set
        for i, file in enumerate(files):
            ds = pydicom.dcmread(file)
            ds.StudyInstanceUID = "1.2.826.0.1.3680043.9.07"
            ds.SeriesInstanceUID = "1.2.826.0.1.3680043.9.07.1"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.9.07.1.0{i + 1}"
            ds.save_as(file)
    return folder


def test_reading_in_threads_leaves_the_hosts_warnings_as_they_were(quirky_series):
    shown: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always", HostWarning)
        warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
        before = list(warnings.filters)
        stop = threading.Event()
        errors: list[BaseException] = []
        reads = [0] * 4

        def reader(n: int) -> None:
            try:
                while not stop.is_set():
                    read_study(quirky_series)
                    reads[n] += 1
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        sent = 0
        try:  # the host warns all the while each thread reads the series three times
            while min(reads) < 3 and not errors and sent < 200_000:
                warnings.warn("the host's own", HostWarning, stacklevel=1)
                sent += 1
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert not errors
        # every one of the host's warnings reached its hook while cmrsdk read (100 of 3,416 before)
        assert shown.count("the host's own") == sent
        # and the host's filters are its own afterwards (an "ignore" stayed at their head before)
        assert warnings.filters == before
        warnings.warn("after", HostWarning, stacklevel=1)
        assert shown[-1] == "after"


def test_each_thread_collects_its_own_warnings_only():
    """segment_one's report holds its own study's warnings; another thread's, and the host's,
    are not taken (it swallowed 97 % of the host's before)."""
    from cmrsdk._warn import collect, quiet, warn

    results: dict[int, list[str]] = {}
    barrier = threading.Barrier(3)

    def study(n: int) -> None:
        with collect() as caught:
            barrier.wait()
            for i in range(50):
                warn(f"study {n}: note {i}")
            barrier.wait()
        results[n] = [str(w.message) for w in caught]

    threads = [threading.Thread(target=study, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    with warnings.catch_warnings(record=True) as host:
        warnings.simplefilter("always")
        barrier.wait()
        warnings.warn("the host's own", HostWarning, stacklevel=1)
        barrier.wait()
    for thread in threads:
        thread.join()
    assert results == {n: [f"study {n}: note {i}" for i in range(50)] for n in (1, 2)}
    assert [str(w.message) for w in host] == ["the host's own"]
    # outside any collector a CmrWarning is an ordinary warning, for the caller's filters
    with pytest.warns(CmrWarning, match="said to the caller"):
        warn("said to the caller")
    # a quiet block silences pydicom's notices, not cmrsdk's own
    with warnings.catch_warnings(record=True) as inside:
        warnings.simplefilter("always")
        with quiet():
            warn("kept")
            warnings.warn_explicit("a vendor quirk", UserWarning, "valuerep.py", 1, module="pydicom.valuerep")
    assert [str(w.message) for w in inside] == ["kept"]


def test_pydicoms_notices_do_not_reach_the_hosts_logging(quirky_series):
    class Records(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.seen: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.seen.append(record.getMessage())

    # a handler on the logger itself: another library may have configured the root's away
    logger, records = logging.getLogger("pydicom"), Records()
    saved = (logger.level, logger.disabled)
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    logger.disabled = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = read_study(quirky_series)
        assert study.info.series_uid == "1.2.826.0.1.3680043.9.07.1"
        assert records.seen == []  # 716 "Invalid value for VR UI" records per Sunnybrook study before
        # the same logger still logs for the host's own threads
        logger.warning("the host's own")
        assert records.seen == ["the host's own"]
    finally:
        logger.removeHandler(records)
        logger.level, logger.disabled = saved


def test_reading_nifti_leaves_nibabels_log_level(tmp_path):
    import nibabel as nib
    import numpy as np

    logger = logging.getLogger("nibabel.global")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        image = nib.Nifti1Image(
            np.random.default_rng(0).random((32, 32, 4)).astype(np.float32), np.diag([1.5, 1.5, 8, 1])
        )
        nib.save(image, tmp_path / "stack.nii.gz")
        read_study(tmp_path / "stack.nii.gz")
        assert logger.level == logging.DEBUG  # set to ERROR for good before
    finally:
        logger.setLevel(level)


def test_a_filter_the_host_adds_during_a_quiet_block_stays():
    """quiet() took catch_warnings' copy of the list and put it back: 174 of 200 filters a host
    added meanwhile were lost (sweep 37)."""
    from cmrsdk._warn import quiet

    inside, leave = threading.Event(), threading.Event()

    def reader() -> None:
        with quiet():
            inside.set()
            leave.wait(10)

    with warnings.catch_warnings():
        before = len(warnings.filters)
        thread = threading.Thread(target=reader)
        thread.start()
        inside.wait(10)
        assert len(warnings.filters) == before + 1  # the one entry quiet() put in front
        warnings.filterwarnings("error", category=HostWarning)
        leave.set()
        thread.join()
        assert warnings.filters[0][:3] == ("error", None, HostWarning) and len(warnings.filters) == before + 1
        with pytest.raises(HostWarning):
            warnings.warn("the host's filter holds", HostWarning, stacklevel=1)


def test_a_warning_raised_as_an_error_ends_the_command_in_one_line(tmp_path, capsys):
    """`python -W error` or PYTHONWARNINGS=error made a CmrWarning a traceback (sweep 37)."""
    import nibabel as nib
    import numpy as np

    from cmrsdk.cli import main

    # slices on the first array axis: read, with a CmrWarning saying so
    image = nib.Nifti1Image(np.ones((4, 32, 32), np.float32), np.diag([8.0, 1.5, 1.5, 1.0]))
    nib.save(image, tmp_path / "stack.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code = main(["inspect", str(tmp_path / "stack.nii.gz")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith("cmrsdk: error: ") and "the slice axis is array axis 1" in err
    assert err.rstrip().endswith(
        "(a warning, raised as an error by the interpreter's warning filters: -W error or PYTHONWARNINGS)"
    )
