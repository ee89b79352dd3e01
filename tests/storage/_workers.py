"""Functions run in spawned worker processes by the concurrency tests (importable, hence picklable)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from storage import Storage, open_storage

_barrier: Any = None


def init_barrier(barrier: Any) -> None:
    """Pool initializer: keep the barrier all workers wait on, so they start their race together."""
    global _barrier
    _barrier = barrier


def slow_make(counter: Path) -> bytes:
    """Record one call in ``counter`` (one line per call), then take a while, like a real synthesis."""
    with open(counter, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(0.5)
    return os.urandom(256 * 1024)  # random: all callers agreeing proves they read the one stored copy


def race_for_blob(storage: Storage, key: str, counter: str) -> bytes:
    """Ask for the blob at the same moment as every other worker."""
    _barrier.wait(timeout=120)
    with storage:
        return storage.get_or_create_blob(key, lambda: slow_make(Path(counter)), poll=0.05)


def open_and_put(url: str, key: str) -> str:
    """Open a fresh database at the same moment as other workers (racing on table creation), write a blob."""
    _barrier.wait(timeout=120)
    with open_storage(url) as storage:
        storage.put_blob(key, key.encode())
        return storage.masked_url


def run_trials(storage: Storage, study_name: str, n_trials: int) -> int:
    """Run trials of a trivial objective on a shared study, all workers at once; returns how many ran here."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _barrier.wait(timeout=120)
    with storage:
        study = optuna.load_study(study_name=study_name, storage=storage.optuna)
        study.optimize(lambda trial: trial.suggest_float("x", -1, 1) ** 2, n_trials=n_trials)
    return n_trials


def take_all(storage: Storage, key: str) -> int:
    """Take from the counter at the same moment as every other worker until it is empty; returns how many."""
    _barrier.wait(timeout=120)
    got = 0
    with storage:
        while storage.take_from_counter(key):
            got += 1
    return got
