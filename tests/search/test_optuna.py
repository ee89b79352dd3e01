"""The private Optuna names workers rely on (search/_optuna.py): present in this Optuna, and meaning what we think.

On an Optuna that drops or renames one, test_this_optuna_has_every_private_name_frandi_uses fails with the name.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from search._optuna import OptunaChanged, check_optuna
from search._worker import claim_waiting, stale_trials
from storage import Storage, open_storage
from tests.optuna_ids import trial_id

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning"),
]


@pytest.fixture
def opened(tmp_path) -> Iterator[tuple[optuna.Study, Storage]]:
    with open_storage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=1, grace_period=1) as st:
        yield optuna.create_study(study_name="o", storage=st.optuna), st


def test_this_optuna_has_every_private_name_frandi_uses(opened) -> None:
    study, _ = opened
    try:
        check_optuna(study)
    except OptunaChanged as e:
        pytest.fail(f"Optuna {optuna.__version__} changed a private name search/_optuna.py uses: {e}")


def _drop_trial_id(monkeypatch: pytest.MonkeyPatch) -> None:
    real = FrozenTrial.__init__

    def init(self: FrozenTrial, *args: object, **kwargs: object) -> None:
        real(self, *args, **kwargs)  # type: ignore[arg-type]
        del self._trial_id

    monkeypatch.setattr(FrozenTrial, "__init__", init)


@pytest.mark.parametrize(
    "name", ["Study._storage", "Study._study_id", "Study._thread_local", "_CachedStorage._get_stale_trial_ids",
             "FrozenTrial._trial_id", "_ThreadLocalStudyAttribute.cached_all_trials"]
)
def test_a_missing_name_is_one_error_that_names_it(opened, monkeypatch, name: str) -> None:
    study, _ = opened
    owner, attr = name.split(".")
    if owner == "Study":
        monkeypatch.delattr(study, attr)
    elif owner == "_CachedStorage":  # and from the base classes that declare it
        for cls in type(study._storage).__mro__:  # private names here only to simulate their loss
            if attr in vars(cls):
                monkeypatch.delattr(cls, attr)
    elif owner == "FrozenTrial":
        _drop_trial_id(monkeypatch)
    else:
        monkeypatch.delattr(type(study._thread_local), attr)
    with pytest.raises(OptunaChanged, match=rf"has no {name}\b.*pip install -c constraints.txt optuna"):
        check_optuna(study)


def test_claimed_ids_are_the_storage_ids_of_the_waiting_trials(opened) -> None:
    study, st = opened
    for x in range(3):
        study.enqueue_trial({"x": x})
    ids = [claim_waiting(study) for _ in range(3)]
    assert ids == [trial_id(st.optuna, "o", n) for n in range(3)]  # _study_id and _trial_id mean what we think
    assert claim_waiting(study) is None
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING] * 3


def test_stale_trials_are_the_running_ones_whose_heartbeat_stopped(opened) -> None:
    study, st = opened
    study.ask()  # RUNNING, but it never beat: Optuna never calls it stale
    silent = study.ask()
    st.optuna.record_heartbeat(trial_id(st.optuna, "o", silent.number))
    assert stale_trials(study) == []  # within the grace period
    time.sleep(2.2)  # past the grace period (1 s), with SQLite telling the time in whole seconds
    assert stale_trials(study) == [trial_id(st.optuna, "o", silent.number)]
