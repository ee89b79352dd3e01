"""A finished trial again: found by number, its student re-materialized, its score compared with the stored one.

``frandi export`` refuses a student whose score moved; ``frandi evaluate`` notes it. The re-run is deterministic
(compression, then FR with its seed) up to the torch thread count, which sets how float sums are split.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from ._errors import UsageError
from ._records import TrialRecord
from ._trial import TrialResult, TrialRunner


def finished_trials(study: optuna.Study, numbers: Sequence[int], *, verb: str) -> list[FrozenTrial]:
    """The trials with these numbers, each COMPLETE; UsageError naming the first that does not exist or is not."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    chosen = []
    for n in numbers:
        t = trials.get(n)
        if t is None:
            raise UsageError(f"trial {n} does not exist in study '{study.study_name}' (0..{len(trials) - 1})")
        if t.state != TrialState.COMPLETE:
            raise UsageError(f"trial {n} is {t.state.name}, not COMPLETE; {verb} a finished trial")
        chosen.append(t)
    return chosen


def rerun(runner: TrialRunner, trial: FrozenTrial) -> tuple[nn.Module, TrialResult, float]:
    """The trial's student and result re-computed, and |score - stored score| (its first objective value).

    On CPU with the trial's own torch thread count, when it recorded one: float sums depend on how work was split.
    """
    record = TrialRecord.from_trial(trial)
    if record.threads is not None and runner.device.type == "cpu":
        torch.set_num_threads(record.threads)
    student, r = runner.student(record.policy)
    return student, r, abs(r.score - trial.values[0])
