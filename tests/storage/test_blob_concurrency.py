"""Many workers on one storage: make-once blobs across processes, threads and dead workers; counters; a study."""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from storage import StorageError, open_storage
from tests.blob_rows import insert_pending
from tests.storage import _workers

N_WORKERS = 4


@pytest.fixture(scope="module")
def pool() -> Iterator[multiprocessing.pool.Pool]:
    """Spawned workers (nothing inherited, like separate machines) that start each batch of tasks together.

    Shared by the tests because starting interpreters that import optuna and sqlalchemy takes seconds.
    A worker blocked at the (cyclic) barrier holds its task, so each of a batch of N_WORKERS runs in its own.
    """
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(N_WORKERS, initializer=_workers.init_barrier, initargs=(ctx.Barrier(N_WORKERS),)) as pool:
        yield pool


def test_processes_race_make_runs_once(storage_url: str, tmp_path: Path, pool: multiprocessing.pool.Pool) -> None:
    counter = tmp_path / "calls.txt"
    with open_storage(storage_url) as st:
        results = pool.starmap(_workers.race_for_blob, [(st, "batch", str(counter))] * N_WORKERS)
        assert st.get_blob("batch") == results[0]
    assert len(counter.read_text().splitlines()) == 1
    assert all(r == results[0] for r in results) and len(results[0]) == 256 * 1024


def test_processes_open_fresh_database_at_once(storage_url: str, pool: multiprocessing.pool.Pool) -> None:
    keys = [f"k{i}" for i in range(N_WORKERS)]
    masked = pool.starmap(_workers.open_and_put, [(storage_url, key) for key in keys])
    assert len(set(masked)) == 1
    with open_storage(storage_url) as st:
        assert [st.get_blob(key) for key in keys] == [key.encode() for key in keys]


def test_stale_claim_is_taken_over(storage_url: str) -> None:
    insert_pending(storage_url, "k", "dead-worker")
    with open_storage(storage_url) as st:
        assert st.get_blob("k") is None  # pending is not ready
        t0 = time.monotonic()
        assert st.get_or_create_blob("k", lambda: b"mine", poll=0.05, stale_after=0.5) == b"mine"
        assert 0.5 <= time.monotonic() - t0 < 5
        info = st.blob_info("k")
    assert info is not None and info["state"] == "ready" and info["owner"] != "dead-worker"


def test_waiting_on_live_claim_times_out(storage_url: str) -> None:
    insert_pending(storage_url, "k", "slow-worker")
    with open_storage(storage_url) as st:
        expected = "timed out after .* waiting for blob 'k' being made by slow-worker"
        with pytest.raises(StorageError, match=expected):
            st.get_or_create_blob("k", lambda: b"x", poll=0.05, timeout=0.3, stale_after=60)


def test_heartbeat_keeps_a_slow_make_from_being_taken_over(storage_url: str) -> None:
    calls: list[str] = []

    def slow() -> bytes:
        calls.append("made")
        time.sleep(1.5)  # far longer than stale_after: only the heartbeat keeps the claim alive
        return b"slow result"

    results: dict[str, bytes] = {}

    def run(name: str) -> None:
        with open_storage(storage_url) as st:
            results[name] = st.get_or_create_blob("k", slow, poll=0.05, stale_after=0.4)

    first = threading.Thread(target=run, args=("first",))
    first.start()
    time.sleep(0.3)
    second = threading.Thread(target=run, args=("second",))
    second.start()
    first.join()
    second.join()
    assert calls == ["made"]
    assert results == {"first": b"slow result", "second": b"slow result"}


def test_processes_never_take_more_than_the_counter_holds(
    storage_url: str, pool: multiprocessing.pool.Pool
) -> None:
    with open_storage(storage_url) as st:
        st.set_counter("left", 60)
        taken = pool.starmap(_workers.take_all, [(st, "left")] * N_WORKERS)
        assert st.get_counter("left") == 0
    assert sum(taken) == 60


def test_processes_share_one_sqlite_study(tmp_path: Path, pool: multiprocessing.pool.Pool) -> None:
    """Writers on one SQLite file wait for each other (WAL + busy timeout): no "database is locked"."""
    with open_storage(str(tmp_path / "shared.db")) as st:
        optuna.create_study(storage=st.optuna, study_name="shared")
        pool.starmap(_workers.run_trials, [(st, "shared", 5)] * N_WORKERS)
        trials = optuna.load_study(study_name="shared", storage=st.optuna).trials
    assert len(trials) == 5 * N_WORKERS
    assert sorted(t.number for t in trials) == list(range(5 * N_WORKERS))
