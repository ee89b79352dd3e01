"""The search service: study files, search space, objective, workers and the frandi CLI."""

from __future__ import annotations

from ._allocate import AllocatedSpace
from ._artifacts import artifact_dir
from ._config import ConfigError, StudyConfig, load_config, parse_config
from ._launch import launch, open_for, prepare
from ._optuna import OptunaChanged, check_optuna
from ._report import pareto_trials, row
from ._space import SearchSpace
from ._study import create_or_resume, open_study
from ._trial import TrialResult, TrialRunner, batch_key, cached_batches
from ._worker import claim, claim_waiting, fail_stale_trials, run_trial, stale_trials, work

__all__ = [
    "AllocatedSpace",
    "ConfigError",
    "OptunaChanged",
    "SearchSpace",
    "StudyConfig",
    "TrialResult",
    "TrialRunner",
    "artifact_dir",
    "batch_key",
    "cached_batches",
    "check_optuna",
    "claim",
    "claim_waiting",
    "create_or_resume",
    "fail_stale_trials",
    "launch",
    "load_config",
    "open_for",
    "open_study",
    "pareto_trials",
    "parse_config",
    "prepare",
    "row",
    "run_trial",
    "stale_trials",
    "work",
]
