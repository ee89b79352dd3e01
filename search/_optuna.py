"""Every private Optuna name frandi uses, in one place; each function says what it stands in for and why.

Workers claim trials themselves (an atomic WAITING -> RUNNING move, so that many processes on many machines
start each trial once) instead of Optuna's ``Study.optimize``/``ask``, and Optuna 5 has no public API for the
few things that needs. A missing name raises ``OptunaChanged`` naming it (never an AttributeError deep in a
claim, nor a silently wrong result); ``check_optuna`` tries them all at once, and tests/search/test_optuna.py
runs it, so an Optuna upgrade that drops or renames one fails there first. constraints.txt pins Optuna.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, Trial, TrialState

from frandi_core import FrandiError


class OptunaChanged(FrandiError):
    """The installed Optuna lacks a private name frandi relies on."""


def _private(obj: object, name: str) -> Any:
    """``obj.name``, or OptunaChanged naming it when this Optuna version has no such attribute."""
    try:
        return getattr(obj, name)
    except AttributeError:
        raise OptunaChanged(
            f"Optuna {optuna.__version__} has no {type(obj).__name__}.{name}, which frandi relies on "
            "(search/_optuna.py); install the pinned version: pip install -c constraints.txt optuna"
        ) from None


def study_storage(study: optuna.Study) -> BaseStorage:
    """The storage the study reads and writes through (Optuna's caching wrapper around our RDBStorage).

    Stands in for: nothing public (``optuna.storages.get_storage`` wraps a new cache, ``load_study`` hides it).
    Why: creating a trial and moving it WAITING -> RUNNING must go through the study's own cache, or the
    study keeps serving its stale copy of the trial.
    """
    return _private(study, "_storage")


def study_id(study: optuna.Study) -> int:
    """The study's row id in the storage, which every storage call takes.

    Stands in for: ``storage.get_study_id_from_name(study.study_name)``, a database query on each claim.
    """
    return _private(study, "_study_id")


def trial_id(trial: FrozenTrial | Trial) -> int:
    """The trial's row id in the storage (trial numbers count within a study, ids across the database).

    Stands in for: ``storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)``, a query.
    """
    return _private(trial, "_trial_id")


def forget_cached_trials(study: optuna.Study) -> None:
    """Make the sampler read the trials as they are now, as ``Study.ask`` does before it samples.

    Stands in for: ``Study.ask``, which we cannot call on a trial we claimed ourselves. Why: a sampler reuses
    the trials cached by this thread's last sampling, so without this it would not see other workers' trials.
    """
    local = _private(study, "_thread_local")
    _private(local, "cached_all_trials")  # refuse to set a name Optuna no longer reads
    local.cached_all_trials = None


def stale_trial_ids(study: optuna.Study) -> list[int]:
    """Ids of RUNNING trials whose heartbeat is older than the grace period; [] without heartbeats.

    Stands in for: ``optuna.storages.fail_stale_trials``, which fails them; ``frandi status`` only counts them.
    """
    storage = study_storage(study)
    if not storage.get_heartbeat_interval():  # type: ignore[attr-defined]
        return []
    return _private(storage, "_get_stale_trial_ids")(study_id(study))


def check_optuna(study: optuna.Study) -> None:
    """Raise OptunaChanged naming the first private Optuna name that ``study`` (or this Optuna) lacks."""
    storage = study_storage(study)
    study_id(study)
    local = _private(study, "_thread_local")
    _private(local, "cached_all_trials")
    _private(storage, "_get_stale_trial_ids")
    trial_id(optuna.trial.create_trial(state=TrialState.WAITING))
