"""Run in spawned processes by the race tests (importable, hence picklable): claim or reap all at once."""

from __future__ import annotations

from typing import Any

import optuna

from storage import Storage

_barrier: Any = None


def init_barrier(barrier: Any) -> None:
    """Pool initializer: the barrier every process waits on, so their calls start together."""
    global _barrier
    _barrier = barrier


def _study(storage: Storage, name: str) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=storage.optuna)


def claim_all(storage: Storage, name: str) -> list[int]:
    """Claim WAITING trials, together with the other processes, until none is left; the ids this one won."""
    from search._worker import claim_waiting

    with storage:
        study = _study(storage, name)
        _barrier.wait(timeout=120)
        won = []
        while (trial_id := claim_waiting(study)) is not None:
            won.append(trial_id)
        return won


def reap(storage: Storage, name: str) -> None:
    """Fail the study's stale trials (and enqueue their retries) at the same moment as the other processes."""
    from search._worker import fail_stale_trials

    with storage:
        study = _study(storage, name)
        _barrier.wait(timeout=120)
        fail_stale_trials(study)
