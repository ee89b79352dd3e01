"""Workers racing for the same trial: a claim and a stale-trial reap are each won by exactly one process.

SQLite has no row locks: Optuna's read-then-update let two processes both move one WAITING trial to RUNNING, or
both fail one stale trial and both enqueue its retry (a study then ends with more than n_trials).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import time
from collections.abc import Iterator

import optuna
import pytest
from optuna.trial import TrialState

from storage import open_storage
from tests.optuna_ids import trial_id
from tests.search import _race_workers

N_PROCESSES = 4
retried_from = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning"),
]


@pytest.fixture(scope="module")
def pool() -> Iterator[multiprocessing.pool.Pool]:
    """Spawned processes (nothing inherited, like separate machines) that start each batch of calls together."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(N_PROCESSES)
    with ctx.Pool(N_PROCESSES, initializer=_race_workers.init_barrier, initargs=(barrier,)) as pool:
        yield pool


@pytest.mark.parametrize("round_", range(3))
def test_each_waiting_trial_is_claimed_by_exactly_one_process(storage_url, pool, round_) -> None:
    with open_storage(storage_url, heartbeat_interval=1, grace_period=60) as st:
        study = optuna.create_study(study_name="race", storage=st.optuna)
        for i in range(24):
            study.enqueue_trial({"x": float(i)})
        waiting = {trial_id(st.optuna, "race", t.number) for t in study.get_trials(states=(TrialState.WAITING,))}
        won = pool.starmap(_race_workers.claim_all, [(st, "race")] * N_PROCESSES)
        claimed = [trial_id for ids in won for trial_id in ids]
        assert sorted(claimed) == sorted(waiting), "a trial was claimed twice (or not at all)"
        assert all(t.state == TrialState.RUNNING for t in study.get_trials())


@pytest.mark.parametrize("round_", range(3))
def test_a_stale_trial_is_failed_and_retried_once_by_concurrent_reapers(storage_url, pool, round_) -> None:
    with open_storage(storage_url, heartbeat_interval=1, grace_period=2) as st:
        study = optuna.create_study(study_name="race", storage=st.optuna)
        stale = []
        for _ in range(8):  # trials whose worker died: they beat once, then never again
            trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 10)})
            st.optuna.record_heartbeat(trial_id(st.optuna, "race", trial.number))
            stale.append(trial.number)
        time.sleep(4)  # past the grace period (2 s), with SQLite telling the time in whole seconds
        pool.starmap(_race_workers.reap, [(st, "race")] * N_PROCESSES)
        trials = study.get_trials()
        assert [trials[n].state for n in stale] == [TrialState.FAIL] * len(stale)
        retries = sorted(retried_from(t) for t in trials if retried_from(t) is not None)
        assert retries == stale, "a stale trial was retried more than once (or not at all)"
        assert len(trials) == 2 * len(stale)
