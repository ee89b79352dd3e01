"""Claiming trials: a worker that dies at any point of a claim never leaves a trial RUNNING for ever."""

from __future__ import annotations

from collections.abc import Iterator

import optuna
import pytest
from optuna.trial import TrialState

from search import check_model, claim, create_or_resume, load_config, open_for, open_study
from search._study import to_start_key
from storage import Storage
from tests.optuna_ids import trial_id


class Died(BaseException):
    """Stands for the worker process being killed at that instant."""


@pytest.fixture
def opened(study_file) -> Iterator[tuple[optuna.Study, Storage]]:
    cfg = load_config(study_file(n_trials=4))
    with open_for(cfg) as st:
        space = check_model(cfg)[1]
        study = create_or_resume(cfg, st, space)
        for t in study.get_trials(states=(TrialState.WAITING,)):  # leave only new trials to claim
            st.optuna.set_trial_state_values(trial_id(st.optuna, study.study_name, t.number), state=TrialState.FAIL)
        st.set_counter(to_start_key(study.study_name), 2)
        yield study, st


@pytest.mark.parametrize("dies_in", ["record_heartbeat", "set_trial_state_values"])
def test_a_worker_dying_inside_a_claim_leaves_a_trial_another_worker_claims(opened, dies_in, monkeypatch) -> None:
    study, st = opened

    def die(*_args: object, **_kwargs: object) -> None:
        raise Died

    with monkeypatch.context() as m:
        m.setattr(st.optuna, dies_in, die)  # the database calls behind the study's cache
        with pytest.raises(Died):
            claim(study, st)
    (orphan,) = [t for t in study.get_trials() if t.state not in (TrialState.FAIL,)]
    assert orphan.state == TrialState.WAITING  # not RUNNING without a heartbeat, which nothing would ever fail
    assert claim(study, st) == trial_id(st.optuna, study.study_name, orphan.number)  # the next worker runs it
    assert study.get_trials()[orphan.number].state == TrialState.RUNNING
    assert st.get_counter(to_start_key(study.study_name)) == 1  # the dead claim's slot was used once, not twice


def test_claims_stop_when_the_study_may_start_no_more(opened) -> None:
    study, st = opened
    first, second = claim(study, st), claim(study, st)
    assert first is not None and second is not None and first != second
    assert claim(study, st) is None
    running = study.get_trials(states=(TrialState.RUNNING,))
    assert {trial_id(st.optuna, study.study_name, t.number) for t in running} == {first, second}


def test_a_trial_lost_before_creation_is_reported_and_started_by_a_rerun(study_file, frandi, monkeypatch) -> None:
    real = Storage.take_from_counter
    lost: list[str] = []

    def take(self: Storage, key: str) -> bool:
        if not lost:  # one slot taken by a worker killed before it created its trial
            lost.append(key)
            real(self, key)
        return real(self, key)

    with monkeypatch.context() as m:
        m.setattr(Storage, "take_from_counter", take)
        code, _, err = frandi("search", study_file(n_trials=5), "--no-progress")
    assert code == 1 and "holds 4 of 5 finished trials" in err and "run the same command again" in err
    code, _, err = frandi("search", study_file(n_trials=5), "--no-progress")
    assert code == 0, err
    cfg = load_config(study_file(n_trials=5))
    with open_for(cfg) as st:
        trials = open_study(cfg, st).get_trials()
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 5 and len(trials) == 5
