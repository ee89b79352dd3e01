"""Run a variant of a model's study (a search) from an experiment, in this process, and read it back."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from frandi_core import Policy
from search import (
    StudyConfig,
    TrialRecord,
    UsageError,
    launch,
    open_for,
    open_study,
    pareto_trials,
    replace,
    warm_start_seconds,
)


def variant(
    cfg: StudyConfig, suffix: str, *, study: dict[str, Any], space: dict[str, Any] | None = None
) -> StudyConfig:
    """The model's study with a new name (``<name>-<suffix>``) and some keys of [study] and [space] changed."""
    cfg = replace(cfg, "study", name=f"{cfg.study.name}-{suffix}", **study)
    return replace(cfg, "space", **space) if space else cfg


@dataclass(frozen=True)
class SearchRun:
    """A finished search: its complete trials, its Pareto front (feasible trials only), wall time, and the
    seconds spent choosing its warm starts (allocated spaces; 0 otherwise)."""

    trials: list[FrozenTrial]
    front: list[FrozenTrial]
    seconds: float
    new_trials: int
    warm_seconds: float = 0.0

    @property
    def trial_seconds(self) -> float:
        """Time spent in the trials themselves (recorded per trial, so it survives a resume)."""
        return sum(_trial_seconds(t) for t in self.trials)


def _trial_seconds(t: FrozenTrial) -> float:
    return TrialRecord.from_trial(t).seconds.get("total", 0.0)


def run_search(cfg: StudyConfig, storage: str | None) -> SearchRun:
    """Launch (or resume: a finished study runs no new trial) the study to n_trials, in this process."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with open_for(cfg, storage) as st:
        try:
            before = len(open_study(cfg, st).get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        except UsageError:  # no such study yet
            before = 0
    t0 = time.perf_counter()
    launch(cfg, storage_override=storage, progress=False)
    seconds = time.perf_counter() - t0
    with open_for(cfg, storage) as st:
        study = open_study(cfg, st)
        trials = study.get_trials(deepcopy=True, states=(TrialState.COMPLETE,))
        front = pareto_trials(study)
        warm_seconds = warm_start_seconds(study)
    return SearchRun(trials, front, seconds, len(trials) - before, warm_seconds)


def policy_of(t: FrozenTrial) -> Policy:
    return TrialRecord.from_trial(t).policy
