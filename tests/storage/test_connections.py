"""How many connections a worker holds on PostgreSQL: one kept, a second only while its threads overlap."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import optuna
import psycopg
import pytest

from storage import open_storage
from tests.conftest_pg import PgServer
from tests.optuna_ids import trial_id

pytestmark = pytest.mark.postgres
QUERY = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"


def test_a_worker_keeps_one_connection_and_its_busy_threads_at_most_two(pg_server: PgServer) -> None:
    url = pg_server.create_database("one_pool")
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

    with open_storage(url, heartbeat_interval=1) as st:
        pools = {id(e.pool): e.pool for e in (st._engine, st.optuna.engine)}.values()  # ours and Optuna's

        def count() -> None:  # connections this process holds open: idle in a pool or in use
            held.append(sum(p.checkedin() + p.checkedout() for p in pools))  # type: ignore[attr-defined]

        study = optuna.create_study(study_name="s", storage=st.optuna)
        running = study.ask()
        running_id = trial_id(st.optuna, "s", running.number)
        st.set_counter("to-start", 1000)
        threads = [
            every(0.005, count),
            every(0.002, lambda: st.optuna.record_heartbeat(running_id)),  # a heartbeat thread, hurried
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
        assert _server_count(pg_server, "one_pool", until=1) == 1  # once they are done, the server sees one


def _server_count(server: PgServer, database: str, until: int, patience: float = 5) -> int:
    """Connections the server lists for ``database``, polled until ``until`` (a closed one lingers a moment)."""
    dsn = f"host=127.0.0.1 port={server.port} user={server.user} dbname=postgres"
    deadline = time.monotonic() + patience
    with psycopg.connect(dsn, autocommit=True) as admin:
        while True:
            row = admin.execute(QUERY, (database,)).fetchone()
            n = int(row[0]) if row else -1
            if n == until or time.monotonic() > deadline:
                return n
            time.sleep(0.1)
