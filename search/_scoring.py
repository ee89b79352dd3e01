"""Scoring trials with labels (frandi evaluate): top-1 accuracy, its rank correlation with OD, where it is kept.

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
import torch
from optuna.trial import FrozenTrial, TrialState
from torch.utils.data import TensorDataset

from ._config import ConfigError
from ._report import pareto_trials
from ._rerun import finished_trials

ACCURACY = "frandi:accuracy"  # study user attribute: trial number -> real top-1 accuracy (percent)


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: TensorDataset, *, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent of ``model`` (eval mode) on a labeled TensorDataset, on the model's device."""
    model.eval()
    x, y = data.tensors
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        pred = model(x[i : i + batch_size].to(device)).argmax(1).cpu()
        correct += int((pred == y[i : i + batch_size]).sum())
    return 100.0 * correct / len(x)


def correlations(od: Sequence[float], acc: Sequence[float]) -> dict[str, float | None]:
    """Spearman's rho and Kendall's tau of OD against accuracy (None when undefined: < 3 points, constant)."""
    try:
        from scipy import stats
    except ImportError:
        raise ConfigError("frandi evaluate needs scipy for the correlations: pip install scipy") from None
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
        if t.user_attrs.get("baseline"):
            picked[t.number] = t
    if not picked:
        raise ConfigError(f"study '{study.study_name}' has no finished trials yet; run frandi search first")
    return [picked[n] for n in sorted(picked)]


def stored_accuracy(study: optuna.Study) -> dict[int, dict[str, Any]]:
    """The accuracies ``frandi evaluate`` stored in the study, by trial number."""
    return {int(n): v for n, v in json.loads(study.user_attrs.get(ACCURACY, "{}")).items()}


def store_accuracy(study: optuna.Study, trial: int, record: dict[str, Any]) -> None:
    """Add (or replace) one trial's record in the study's ``frandi:accuracy`` attribute."""
    records = stored_accuracy(study)
    records[trial] = record
    study.set_user_attr(ACCURACY, json.dumps({str(n): records[n] for n in sorted(records)}))
