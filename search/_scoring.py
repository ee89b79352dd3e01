"""Scoring trials with labels (frandi evaluate): accuracy's rank correlation with OD, and where accuracy is kept.

Where the accuracy is kept: Optuna refuses to change a finished trial's user attributes
(UpdateFinishedTrialError), and Optuna's tables are never written directly, so the accuracies live in one
study user attribute, ``frandi:accuracy``: JSON of trial number -> {"accuracy", "data", "samples"}.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from frandi_core import MissingDependency

from ._errors import UsageError
from ._records import ACCURACY, BASELINE
from ._report import pareto_trials
from ._rerun import finished_trials


def correlations(od: Sequence[float], acc: Sequence[float]) -> dict[str, float | None]:
    """Spearman's rho and Kendall's tau of OD against accuracy (None when undefined: < 3 points, constant)."""
    try:
        from scipy import stats
    except ImportError:
        raise MissingDependency("frandi evaluate needs scipy for the correlations: pip install scipy") from None
    if len(od) < 3 or len(set(od)) < 2 or len(set(acc)) < 2:
        return {"spearman": None, "kendall": None}
    rho = float(stats.spearmanr(od, acc).statistic)
    tau = float(stats.kendalltau(od, acc).statistic)
    return {k: (v if math.isfinite(v) else None) for k, v in (("spearman", rho), ("kendall", tau))}


def choose_trials(study: optuna.Study, numbers: Sequence[int] | None) -> list[FrozenTrial]:
    """The trials asked for by number (each must be COMPLETE), or by default the Pareto front + baselines."""
    if numbers:
        return finished_trials(study, numbers, verb="evaluate")
    picked = {t.number: t for t in pareto_trials(study)}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get(BASELINE):
            picked[t.number] = t
    if not picked:
        raise UsageError(f"study '{study.study_name}' has no finished trials yet; run frandi search first")
    return [picked[n] for n in sorted(picked)]


def stored_accuracy(study: optuna.Study) -> dict[int, dict[str, Any]]:
    """The accuracies ``frandi evaluate`` stored in the study, by trial number."""
    return {int(n): v for n, v in json.loads(study.user_attrs.get(ACCURACY, "{}")).items()}


def store_accuracy(study: optuna.Study, trial: int, record: dict[str, Any]) -> None:
    """Add (or replace) one trial's record in the study's ``frandi:accuracy`` attribute."""
    records = stored_accuracy(study)
    records[trial] = record
    study.set_user_attr(ACCURACY, json.dumps({str(n): records[n] for n in sorted(records)}))
