"""Every private Optuna name frandi uses, in one place; each function says what it stands in for and why.

Workers claim trials themselves (an atomic WAITING -> RUNNING move, so that many processes on many machines
start each trial once) instead of Optuna's ``Study.optimize``/``ask``, and Optuna 5 has no public API for the
few things that needs. A missing name raises ``OptunaChanged`` naming it (never an AttributeError deep in a
claim, nor a silently wrong result); ``check_optuna`` tries them all at once, and tests/search/test_optuna.py
runs it, so an Optuna upgrade that drops or renames one fails there first. constraints.txt pins Optuna.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, Trial, TrialState
from sqlalchemy import func, or_, select

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


@dataclass(frozen=True)
class TrialSummary:
    """What reading a study back needs of one trial: its ids, state, values, a few user attributes, constraints."""

    trial_id: int
    number: int
    state: TrialState
    values: tuple[float, ...]
    user_attrs: dict[str, Any]
    constraints: dict[str, float]


def _rdb(study: optuna.Study) -> Any:
    """The RDBStorage under the study's caching wrapper."""
    storage = study_storage(study)
    return storage if isinstance(storage, optuna.storages.RDBStorage) else _private(storage, "_backend")


def _tables() -> tuple[Any, ...]:
    from optuna.storages._rdb import models

    names = ("TrialModel", "TrialValueModel", "TrialUserAttributeModel", "TrialSystemAttributeModel")
    return tuple(_private(models, n).__table__ for n in names)


def _constraints_reader() -> Any:
    from optuna.study import _constrained_optimization

    return _private(_constrained_optimization, "_get_constraints_from_system_attrs")


def trial_summaries(study: optuna.Study, user_attrs: tuple[str, ...]) -> list[TrialSummary]:
    """Every trial of the study, with only the user attributes named, read in four queries.

    Stands in for: ``study.get_trials()``, which builds every trial whole (params with their distributions, all
    attributes): 300,000 ORM objects and 8 s on a 10,000-trial study, where ``frandi pareto`` and ``frandi status``
    need a few numbers per trial (see benchmarks/bench_big_study.py). Read-only, on Optuna's own tables.
    """
    trials, values, attrs, system = _tables()
    constraints = _constraints_reader()
    sid = study_id(study)
    mine = select(trials.c.trial_id).where(trials.c.study_id == sid)
    with _rdb(study).engine.connect() as c:
        rows = c.execute(select(trials.c.trial_id, trials.c.number, trials.c.state).where(trials.c.study_id == sid))
        base = {r.trial_id: (r.number, TrialState[r.state.name]) for r in rows}
        objective: dict[int, dict[int, float]] = {i: {} for i in base}
        q = select(values.c.trial_id, values.c.objective, values.c.value, values.c.value_type)
        for r in c.execute(q.where(values.c.trial_id.in_(mine))):
            objective[r.trial_id][r.objective] = _value(r.value, r.value_type.name)
        named: dict[int, dict[str, Any]] = {i: {} for i in base}
        q = select(attrs.c.trial_id, attrs.c.key, attrs.c.value_json)
        for r in c.execute(q.where(attrs.c.trial_id.in_(mine), attrs.c.key.in_(user_attrs))):
            named[r.trial_id][r.key] = json.loads(r.value_json)
        stored: dict[int, dict[str, Any]] = {i: {} for i in base}  # the system attributes that hold constraints
        q = select(system.c.trial_id, system.c.key, system.c.value_json).where(system.c.trial_id.in_(mine))
        for r in c.execute(q.where(or_(system.c.key == _CONSTRAINTS, system.c.key.startswith(_CONSTRAINTS + ":")))):
            stored[r.trial_id][r.key] = json.loads(r.value_json)
    return [
        TrialSummary(
            i, number, state, tuple(v for _, v in sorted(objective[i].items())), named[i], constraints(stored[i]),
        )  # fmt: skip
        for i, (number, state) in sorted(base.items(), key=lambda kv: kv[1][0])
    ]


_CONSTRAINTS = "constraints"  # Optuna's system attribute (and prefix, "constraints:NAME") of constraint values


def _value(value: float | None, kind: str) -> float:
    return {"INF_POS": math.inf, "INF_NEG": -math.inf}.get(kind, value if value is not None else math.nan)


def trial_count(study: optuna.Study) -> int:
    """How many trials the study holds, by one COUNT.

    Stands in for: ``len(study.get_trials())``, which reads every trial whole (8 s at 10,000 trials).
    """
    trials = _tables()[0]
    with _rdb(study).engine.connect() as c:
        return int(c.execute(select(func.count()).where(trials.c.study_id == study_id(study))).scalar_one())


def _models() -> Any:
    from optuna.storages._rdb import models

    return models


def read_trials(
    rdb: optuna.storages.RDBStorage, study_id: int, states: Container[TrialState] | None = None
) -> list[FrozenTrial]:
    """Every trial of a study, whole, by number: what ``RDBStorage.get_all_trials`` returns, read with six plain
    queries and each distinct distribution parsed once, instead of ORM objects (8 s at 10,000 trials)."""
    m = _models()
    trials, values, user, system, params, steps = (
        _private(m, n).__table__
        for n in ("TrialModel", "TrialValueModel", "TrialUserAttributeModel", "TrialSystemAttributeModel",
                  "TrialParamModel", "TrialIntermediateValueModel")
    )  # fmt: skip
    to_value = _private(m.TrialValueModel, "stored_repr_to_value")
    to_step_value = _private(m.TrialIntermediateValueModel, "stored_repr_to_intermediate_value")
    mine = select(trials.c.trial_id).where(trials.c.study_id == study_id)
    parse = functools.lru_cache(maxsize=None)(optuna.distributions.json_to_distribution)
    with rdb.engine.connect() as c:
        rows = c.execute(select(trials).where(trials.c.study_id == study_id).order_by(trials.c.number)).all()
        rows = [r for r in rows if states is None or TrialState[r.state.name] in states]
        vals: dict[int, dict[int, float]] = {r.trial_id: {} for r in rows}
        attrs: dict[int, dict[str, Any]] = {r.trial_id: {} for r in rows}
        sys_attrs: dict[int, dict[str, Any]] = {r.trial_id: {} for r in rows}
        dists: dict[int, dict[str, Any]] = {r.trial_id: {} for r in rows}
        chosen: dict[int, dict[str, Any]] = {r.trial_id: {} for r in rows}
        inter: dict[int, dict[int, float]] = {r.trial_id: {} for r in rows}
        for r in c.execute(select(values).where(values.c.trial_id.in_(mine))):
            if r.trial_id in vals:
                vals[r.trial_id][r.objective] = to_value(r.value, r.value_type)
        for table, into in ((user, attrs), (system, sys_attrs)):
            for r in c.execute(select(table).where(table.c.trial_id.in_(mine))):
                if r.trial_id in into:
                    into[r.trial_id][r.key] = json.loads(r.value_json)
        for r in c.execute(select(params).where(params.c.trial_id.in_(mine)).order_by(params.c.param_id)):
            if r.trial_id in dists:
                d = parse(r.distribution_json)
                dists[r.trial_id][r.param_name] = d
                chosen[r.trial_id][r.param_name] = d.to_external_repr(r.param_value)
        for r in c.execute(select(steps).where(steps.c.trial_id.in_(mine))):
            if r.trial_id in inter:
                inter[r.trial_id][r.step] = to_step_value(r.intermediate_value, r.intermediate_value_type)
    return [
        FrozenTrial(
            number=r.number, state=TrialState[r.state.name], value=None,
            values=[v for _, v in sorted(vals[r.trial_id].items())] or None,
            datetime_start=r.datetime_start, datetime_complete=r.datetime_complete, params=chosen[r.trial_id],
            distributions=dists[r.trial_id], user_attrs=attrs[r.trial_id], system_attrs=sys_attrs[r.trial_id],
            intermediate_values=inter[r.trial_id], trial_id=r.trial_id,
        )  # fmt: skip
        for r in rows
    ]


class _FastReads(optuna.storages.RDBStorage):
    """An RDBStorage whose ``get_all_trials`` is ``read_trials``."""

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return read_trials(self, study_id, states)  # new objects on every call: nothing to copy


def fast_reads(rdb: optuna.storages.RDBStorage) -> optuna.storages.RDBStorage:
    """``rdb`` (sharing its engine and sessions) with ``get_all_trials`` read by ``read_trials``.

    Stands in for: nothing; optuna-dashboard reads a whole study with ``get_all_trials`` every 10 s, which on a
    10,000-trial study took longer than the page may (see benchmarks/bench_big_study.py).
    """
    fast = object.__new__(_FastReads)
    fast.__dict__.update(vars(rdb))
    return fast


def check_optuna(study: optuna.Study) -> None:
    """Raise OptunaChanged naming the first private Optuna name that ``study`` (or this Optuna) lacks."""
    storage = study_storage(study)
    study_id(study)
    local = _private(study, "_thread_local")
    _private(local, "cached_all_trials")
    _private(storage, "_get_stale_trial_ids")
    trial_id(optuna.trial.create_trial(state=TrialState.WAITING))
    _tables()
    _constraints_reader()
    for name in ("TrialParamModel", "TrialIntermediateValueModel"):
        _private(_models(), name)
    _rdb(study)
