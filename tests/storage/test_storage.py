"""Conformance suite run against every backend: SQLite file and PostgreSQL server."""

from __future__ import annotations

import pickle
import sqlite3
import time
import zlib

import optuna
import pytest
from sqlalchemy import inspect

from storage import Storage, StorageError, open_storage
from tests.blob_rows import set_data
from tests.conftest_pg import PgServer
from tests.optuna_ids import trial_id


def test_open_creates_tables(storage_url: str) -> None:
    with open_storage(storage_url) as st:
        assert isinstance(st, Storage)
        tables = set(inspect(st._engine).get_table_names())
    assert "frandi_blobs" in tables
    assert {"studies", "trials"} <= tables  # Optuna's own, created by Optuna


def test_counters_set_add_take(storage_url: str) -> None:
    with open_storage(storage_url) as st:
        assert st.get_counter("c") == 0 and not st.take_from_counter("c")  # never set: nothing to take
        st.add_to_counter("c", 2)  # from nothing
        st.set_counter("d", 7)
        st.add_to_counter("c", 1)
        assert st.get_counter("c") == 3 and st.get_counter("d") == 7
        assert [st.take_from_counter("c") for _ in range(4)] == [True, True, True, False]
        assert st.get_counter("c") == 0 and st.get_counter("d") == 7  # never below zero; keys independent
        st.set_counter("d", 1)
        assert st.get_counter("d") == 1


def test_put_get_roundtrip(storage_url: str) -> None:
    payload = bytes(range(256)) * 1000
    with open_storage(storage_url) as st:
        assert st.get_blob("k") is None
        assert st.blob_info("k") is None
        st.put_blob("k", payload, {"seed": 3})
        assert st.get_blob("k") == payload
        st.put_blob("k", b"v2")  # replaces
        assert st.get_blob("k") == b"v2"
        info = st.blob_info("k")
    assert info is not None
    assert info["state"] == "ready" and info["size"] == 2 and info["meta"] == {}
    assert len(info["sha256"]) == 64 and info["created"].tzinfo is not None


@pytest.mark.parametrize("bad", [zlib.compress(b"something else"), b"not zlib at all"])
def test_corrupted_blob_is_detected_and_regenerated(storage_url: str, bad: bytes) -> None:
    with open_storage(storage_url) as st:
        st.put_blob("k", b"good")
        set_data(st.url, "k", bad)
        assert st.get_blob("k") is None
        assert st.blob_info("k") is None  # the corrupted row was deleted
        st.put_blob("k", b"good")
        set_data(st.url, "k", bad)
        assert st.get_or_create_blob("k", lambda: b"regenerated") == b"regenerated"
        assert st.get_blob("k") == b"regenerated"


def test_get_or_create_runs_make_once_and_stores_meta(storage_url: str) -> None:
    calls: list[int] = []

    def make() -> bytes:
        calls.append(1)
        return b"payload"

    with open_storage(storage_url) as st:
        assert st.get_or_create_blob("k", make, meta={"n": 1}) == b"payload"
        assert st.get_or_create_blob("k", make) == b"payload"
        info = st.blob_info("k")
    assert len(calls) == 1
    assert info is not None and info["meta"] == {"n": 1}


def test_failing_make_releases_claim(storage_url: str) -> None:
    def boom() -> bytes:
        raise RuntimeError("synthesis crashed")

    with open_storage(storage_url) as st:
        with pytest.raises(RuntimeError, match="synthesis crashed"):
            st.get_or_create_blob("k", boom)
        assert st.blob_info("k") is None
        with pytest.raises(TypeError, match="expected bytes"):
            st.get_or_create_blob("k", lambda: "not bytes")  # type: ignore[arg-type, return-value]
        assert st.blob_info("k") is None
        assert st.get_or_create_blob("k", lambda: b"ok", timeout=5) == b"ok"


def test_storage_pickles_and_reconnects(storage_url: str) -> None:
    with open_storage(storage_url) as st:
        st.put_blob("k", b"v")
        clone = pickle.loads(pickle.dumps(st))
    with clone:
        assert clone.url == st.url and clone.masked_url == st.masked_url
        assert clone.get_blob("k") == b"v"
        assert clone.optuna.get_all_studies() == []


def test_optuna_study_runs(storage_url: str) -> None:
    with open_storage(storage_url) as st:
        study = optuna.create_study(storage=st.optuna, study_name="s")
        study.optimize(lambda trial: trial.suggest_float("x", -1, 1) ** 2, n_trials=5)
        reloaded = optuna.load_study(study_name="s", storage=st.optuna)
    assert len(reloaded.trials) == 5
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in reloaded.trials)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_heartbeat_stale_trial_is_failed_and_reenqueued(storage_url: str) -> None:
    with open_storage(storage_url, heartbeat_interval=1, grace_period=1) as st:
        study = optuna.create_study(storage=st.optuna)
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        # as a worker's heartbeat thread would, then it "dies"
        st.optuna.record_heartbeat(trial_id(st.optuna, study.study_name, trial.number))
        time.sleep(2.2)
        optuna.storages.fail_stale_trials(study)  # what every worker does before starting a trial
        first, retry = study.get_trials()
    TrialState = optuna.trial.TrialState
    assert (first.state, retry.state) == (TrialState.FAIL, TrialState.WAITING)
    assert retry.params == first.params
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == first.number


def test_sqlite_uses_wal(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "sub" / "wal.db"
    with open_storage(str(path)):
        pass
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unreachable_postgres_error_hides_password() -> None:
    url = "postgresql://frandi:s3cret-pw@127.0.0.1:1/db"
    with pytest.raises(StorageError) as err:
        open_storage(url, connect_timeout=2)
    text = str(err.value)
    assert text.startswith("cannot reach storage postgresql+psycopg://frandi:***@127.0.0.1:1/db: ")
    assert text.endswith("check the server is running and the URL")
    assert "s3cret" not in text and "s3cret" not in repr(err.value)
    cause: BaseException | None = err.value
    while cause is not None:  # the chained driver errors must not leak it either
        assert "s3cret" not in str(cause)
        cause = cause.__cause__ or cause.__context__


@pytest.mark.postgres
def test_postgres_restart_is_survived(pg_server: PgServer) -> None:
    url = pg_server.create_schema()
    with open_storage(url, connect_timeout=2, reconnect_patience=1) as st:
        st.put_blob("k", b"before")
        study = optuna.create_study(storage=st.optuna, study_name="s")
        study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
        pg_server.stop()
        try:
            with pytest.raises(StorageError, match=r"^storage error on postgresql\+psycopg://.*check the server"):
                st.get_blob("k")
        finally:
            pg_server.start()
        assert st.get_blob("k") == b"before"  # pooled connections died; pre-ping replaced them
        study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
        assert len(study.trials) == 2
