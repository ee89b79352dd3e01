"""The search service: study files, search space, objective, workers and the frandi CLI.

What users, ``studies`` and ``benchmarks`` use is imported from here; the ``_name`` modules are this package's
own (its tests may import them; tests/test_imports.py keeps everyone else out).
"""

from __future__ import annotations

from ._allocate import AllocatedSpace
from ._config import StudyConfig, load_config, parse_config, replace
from ._errors import ConfigError, ExportError, UsageError
from ._launch import check_model, launch, prepare
from ._open import open_for
from ._records import TrialRecord
from ._report import feasible, pareto_trials
from ._scoring import correlations
from ._study import create_or_resume, open_study, warm_start_seconds
from ._trial import TrialResult, TrialRunner, model_spec
from ._worker import claim, run_trial, work

__all__ = [
    # study files: read, change, and the errors every command may print
    "StudyConfig",
    "load_config",
    "parse_config",
    "replace",
    "ConfigError",
    "UsageError",
    "ExportError",
    # a study in its storage: open, create or resume, launch workers
    "open_for",
    "open_study",
    "create_or_resume",
    "check_model",
    "prepare",
    "launch",
    "warm_start_seconds",
    # trials: one policy compressed, recovered and scored; a worker's loop
    "TrialRunner",
    "TrialResult",
    "model_spec",
    "claim",
    "run_trial",
    "work",
    "TrialRecord",
    # the allocated space (global level spread over layers)
    "AllocatedSpace",
    # results: the front, its feasible part, OD against accuracy
    "pareto_trials",
    "feasible",
    "correlations",
]
