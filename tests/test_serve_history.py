"""The node's spool keeps a row per series for good (a resend is recognised by it), so a busy node
holds hundreds of thousands after a year. The stack gatherer read that whole history under the
spool's lock every second while a study's parts waited (sweep 46: 0.8 s at 110,000 rows, 9-10 s
at 1.05 million), holding up every C-STORE meanwhile; it now asks only for the rows it can use."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cmrsdk.io import write_dicom_series
from cmrsdk.serve.spool import NOT_A_STACK, RELEASED_PART, Spool
from cmrsdk.synth import synthetic_study

HISTORY = 20_000


def _history(spool: Spool, n: int, at: float) -> None:
    """``n`` finished rows judged long before ``at``: series done, failed and set aside, and stacks
    (a tenth of them) whose links were released."""
    rows = []
    for i in range(n):
        uid = f"stack.{i}" if i % 10 == 0 else f"1.2.840.99.{i}"
        state = ("done", "failed", "set_aside")[i % 3]
        rows.append((uid, state, at - 10**6 + i, "an old verdict"))
    with spool._lock:
        spool._db.executemany(
            "INSERT INTO series (series_uid, state, n_instances, first_instance_at, last_instance_at, result_at, "
            "finished_at, reason) VALUES (?1, ?2, 20, ?3, ?3, ?3, ?3, ?4)",
            rows,
        )
        spool._db.commit()


def _row(spool: Spool, uid: str, state: str, judged_at: float, reason: str = "x") -> None:
    with spool._lock:
        spool._db.execute(
            "INSERT INTO series (series_uid, state, n_instances, first_instance_at, last_instance_at, result_at, "
            "finished_at, reason) VALUES (?1, ?2, 1, ?3, ?3, ?3, ?3, ?4)",
            (uid, state, judged_at, reason),
        )
        spool._db.commit()


def test_a_per_file_cine_is_stacked_without_reading_the_nodes_history(tmp_path: Path, monkeypatch):
    """A 5 x 4 cine, each file its own series, arriving at a node with 20,000 rows of history:
    stacked whole, and the gatherer never lists every series (before: `Spool.all_series` on every
    pass, and again per study and per stack)."""
    from test_serve_per_file_series import N_PHASES, N_SLICES, _per_file_series, _reading, _store
    from test_serve_spool import _worker

    from cmrsdk.serve.stacks import stack_uid

    cine = tmp_path / "cine"
    write_dicom_series(cine, synthetic_study(seed=5, shape=(32, 32), n_slices=N_SLICES, n_phases=N_PHASES))
    files = _per_file_series(cine, tmp_path / "per_file")
    spool = Spool(tmp_path / "spool", reopen_window_s=600.0)
    _history(spool, HISTORY, time.time())
    uids = _store(spool, files)

    def whole_history(self):
        raise AssertionError("the gatherer read the node's whole history")

    monkeypatch.setattr(Spool, "all_series", whole_history)
    _reading(monkeypatch)
    worker, _ = _worker(spool, tmp_path)
    worker.promote_quiet_series()
    row = spool.series(stack_uid(uids))
    assert (row.state, row.slices, row.phases, row.n_instances) == ("queued", N_SLICES, N_PHASES, N_SLICES * N_PHASES)
    spool.close()


def test_possible_parts_are_the_kept_and_the_recently_released(tmp_path: Path):
    spool = Spool(tmp_path / "spool", reopen_window_s=600.0)
    now = time.time()
    _history(spool, 300, now)
    spool.store_instance("1.1", "1.1.1", b"kept")  # a part set aside, its files kept
    spool.mark_complete(
        "1.1", queue=False, phases=20, slices=1, reason=NOT_A_STACK + "1 slice position(s)", quiet_since=time.time()
    )
    spool.store_instance("1.2", "1.2.1", b"purged")  # set aside, then its files purged
    spool.mark_complete(
        "1.2", queue=False, phases=20, slices=1, reason=NOT_A_STACK + "1 slice position(s)", quiet_since=time.time()
    )
    spool.purge_instances("1.2")
    _row(spool, "1.3", "failed", now - 60, f"{RELEASED_PART} (study 9.9)")  # released within the window
    _row(spool, "1.4", "failed", now - 6000, f"{RELEASED_PART} (study 9.9)")  # released long ago
    _row(spool, "1.5", "done", now - 60)
    assert sorted(r.series_uid for r in spool.possible_parts(released_since=now - 600)) == ["1.1", "1.3"]
    spool.close()


def test_kept_stacks_since_leaves_out_the_stacks_judged_before(tmp_path: Path):
    spool = Spool(tmp_path / "spool", reopen_window_s=600.0)
    now = time.time()
    for uid, state, judged in (
        ("stack.old", "done", now - 6000),
        ("stack.new", "done", now - 60),
        ("stack.open", "queued", now - 6000),
    ):
        _row(spool, uid, state, judged)
        spool.series_folder(uid).mkdir(parents=True)
    _row(spool, "stack.gone", "done", now - 60)  # its folder released already
    _row(spool, "stackish.1", "queued", now)  # a series UID is never 'stack...', but the range must not take it
    spool.series_folder("stackish.1").mkdir(parents=True)
    assert [r.series_uid for r in spool.kept_stacks()] == ["stack.old", "stack.open", "stack.new"]
    assert [r.series_uid for r in spool.kept_stacks(since=now - 600)] == ["stack.open", "stack.new"]
    spool.close()


@pytest.mark.parametrize("clock", ["forward", "set_back"])
def test_a_stack_judged_after_a_purge_is_purged_in_its_turn(tmp_path: Path, clock: str):
    """The purge reads only the stacks judged since its last cutoff; one judged after it (or, with
    the clock set back, before it) still goes when its window has passed."""
    spool = Spool(tmp_path / "spool", reopen_window_s=600.0)
    now = time.time()
    _row(spool, "stack.a", "done", now - 6000)
    spool.series_folder("stack.a").mkdir(parents=True)
    assert spool.purge_expired(now=now) == ["stack.a"]
    judged = now + 100 if clock == "forward" else now - 3000
    _row(spool, "stack.b", "done", judged)
    spool.series_folder("stack.b").mkdir(parents=True)
    assert spool.purge_expired(now=judged + 300) == []  # within its window
    assert spool.purge_expired(now=judged + 601) == ["stack.b"]
    assert not spool.series_folder("stack.b").exists()
    spool.close()


def test_the_state_index_serves_the_queue(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    plan = " ".join(
        str(r) for r in spool._db.execute("EXPLAIN QUERY PLAN SELECT series_uid FROM series WHERE state = 'receiving'")
    )
    assert "series_state" in plan
    spool.close()


def test_a_spool_of_0_14_11_gets_the_index(tmp_path: Path):
    """An existing spool (no state index) opened by this version is indexed, its rows kept."""
    spool = Spool(tmp_path / "spool")
    _row(spool, "1.9", "done", time.time())
    with spool._lock:
        spool._db.execute("DROP INDEX series_state")
        spool._db.commit()
    spool.close()
    again = Spool(tmp_path / "spool")
    names = {r[0] for r in again._db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "series_state" in names and again.series("1.9").state == "done"
    again.close()
