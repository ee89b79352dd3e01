"""The search service: study files, search space, objective, workers and the frandi CLI.

Everything other packages (studies, benchmarks, tests) use is imported from here; the ``_name`` modules are
this package's own (tests/test_imports.py keeps it so).
"""

from __future__ import annotations

from ._allocate import AllocatedSpace
from ._artifacts import artifact_dir
from ._config import ConfigError, SpaceSection, StudyConfig, load_config, parse_config, replace
from ._data import FASHION_ROOT, labeled_data, labeled_set
from ._knapsack import choose, choose_within
from ._launch import check_model, launch, prepare
from ._open import open_for
from ._optuna import OptunaChanged, check_optuna
from ._report import feasible, pareto_trials, row
from ._rerun import finished_trials, rerun
from ._scoring import accuracy, correlations, stored_accuracy
from ._sensitivity import Probe, candidates, measure
from ._space import SearchSpace
from ._study import create_or_resume, open_study, to_start_key, warm_start_seconds
from ._trial import TrialResult, TrialRunner, batch_key, cached_batches, model_spec
from ._worker import claim, claim_waiting, fail_stale_trials, run_trial, stale_trials, work

__all__ = [
    "finished_trials",
    "rerun",
    "FASHION_ROOT",
    "AllocatedSpace",
    "ConfigError",
    "OptunaChanged",
    "Probe",
    "SearchSpace",
    "SpaceSection",
    "StudyConfig",
    "TrialResult",
    "TrialRunner",
    "accuracy",
    "artifact_dir",
    "batch_key",
    "cached_batches",
    "candidates",
    "check_model",
    "check_optuna",
    "choose",
    "choose_within",
    "claim",
    "claim_waiting",
    "correlations",
    "create_or_resume",
    "fail_stale_trials",
    "feasible",
    "labeled_data",
    "labeled_set",
    "launch",
    "load_config",
    "measure",
    "model_spec",
    "open_for",
    "open_study",
    "pareto_trials",
    "parse_config",
    "prepare",
    "replace",
    "row",
    "run_trial",
    "stale_trials",
    "stored_accuracy",
    "to_start_key",
    "warm_start_seconds",
    "work",
]
