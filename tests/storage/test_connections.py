"""How many connections a worker holds on PostgreSQL: one kept, a second only while its threads overlap."""

from __future__ import annotations

import threading
from collections.abc import Callable

import optuna
import psycopg
import pytest

from storage import open_storage
from tests.conftest_pg import PgServer

pytestmark = pytest.mark.postgres
QUERY = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"


def test_a_worker_keeps_one_connection_and_its_busy_threads_at_most_two(pg_server: PgServer) -> None:
    url = pg_server.create_database("one_pool")
    dsn = f"host=127.0.0.1 port={pg_server.port} user={pg_server.user} dbname=postgres"
    held: list[int] = []
    errors: list[Exception] = []
    stop = threading.Event()

    def every(seconds: float, call: Callable[[], object]) -> threading.Thread:
        def loop() -> None:
            try:
                while not stop.wait(seconds):
                    call()
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                errors.append(e)

        thread = threading.Thread(target=loop)
        thread.start()
        return thread

    with psycopg.connect(dsn, autocommit=True) as admin, open_storage(url, heartbeat_interval=1) as st:

        def count() -> None:
            row = admin.execute(QUERY, ("one_pool",)).fetchone()
            held.append(int(row[0]) if row else -1)

        study = optuna.create_study(study_name="s", storage=st.optuna)
        running = study.ask()
        st.set_counter("to-start", 1000)
        threads = [
            every(0.01, count),
            every(0.002, lambda: st.optuna.record_heartbeat(running._trial_id)),  # a heartbeat thread, hurried
            every(0.002, lambda: st.take_from_counter("to-start")),  # our own table, from another thread
        ]
        try:
            for _ in range(20):  # the trial thread: ask, sample, tell, as a worker does
                trial = study.ask()
                trial.suggest_float("x", 0, 1)
                trial.set_user_attr("worker", "w")
                study.tell(trial, 0.5)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not errors, errors
        assert st.get_counter("to-start") < 1000 and len(held) > 10  # the other threads ran meanwhile
        assert 1 <= max(held) <= 2  # Optuna's tables and ours on one pool: three busy threads, two connections
        count()
        assert held[-1] == 1  # and once the threads are done, one connection is kept
