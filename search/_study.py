"""The Optuna study behind a study file: creation, fingerprint check, trials left to start, samplers."""

from __future__ import annotations

import json
import time
import warnings
from typing import TYPE_CHECKING, Literal

import optuna
from optuna.trial import TrialState

from storage import Storage

from . import _compat, _optuna
from ._config import StudyConfig
from ._errors import ConfigError, UsageError
from ._records import (
    BASELINE,
    BASELINES_ENQUEUED,
    CONFIG,
    FINGERPRINT,
    WARM_SECONDS,
    WARM_START,
    WARM_STARTS_ENQUEUED,
)
from ._space import SearchSpace

if TYPE_CHECKING:
    from ._allocate import AllocatedSpace

METRICS = {"od": "OD", "size": "size_kib", "bops": "GBOPs", "latency": "latency_ms"}


def make_sampler(cfg: StudyConfig, worker_index: int = 0, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded per worker and per run (by the trials already there), so that neither
    parallel workers nor a resumed run draw the policies an earlier one drew."""
    seed = (cfg.study.seed + 1000 * worker_index + 1_000_003 * trials_so_far) % 2**32
    if cfg.study.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    if cfg.study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=10)


def directions(cfg: StudyConfig) -> list[Literal["minimize"]]:
    return ["minimize"] * len(cfg.study.objectives)


def open_study(cfg: StudyConfig, storage: Storage, *, worker_index: int = 0) -> optuna.Study:
    """Load an existing study (for workers and read-only commands)."""
    try:
        study = optuna.load_study(
            study_name=cfg.study.name, storage=storage.optuna, sampler=make_sampler(cfg, worker_index)
        )
    except KeyError:
        raise UsageError(
            f"study '{cfg.study.name}' does not exist in {storage.masked_url}; start it with frandi search"
        ) from None
    study.sampler = make_sampler(cfg, worker_index, _optuna.trial_count(study))  # a COUNT: no trial read whole
    return study


def create_or_resume(
    cfg: StudyConfig,
    storage: Storage,
    space: SearchSpace | AllocatedSpace,
    *,
    force: bool = False,
    stamp: bool = True,
) -> optuna.Study:
    """Create the study or resume it; refuse a changed study file unless ``force``; enqueue the baselines and
    warm starts once (not again on resume); top up the trials to start. ``stamp=False`` leaves the study file's
    fingerprint to the caller (``stamp_fingerprint``), once what the new file needs (its batches) exists."""
    study = optuna.create_study(
        study_name=cfg.study.name,
        storage=storage.optuna,
        sampler=make_sampler(cfg),
        directions=directions(cfg),
        load_if_exists=True,
    )
    if [d.name.lower() for d in study.directions] != directions(cfg):
        raise ConfigError(
            f"study '{cfg.study.name}' exists with {len(study.directions)} objective(s), the file asks for "
            f"{len(cfg.study.objectives)}; use a new study.name"
        )
    fingerprint = cfg.fingerprint()
    old = study.user_attrs.get(FINGERPRINT)
    if old is not None and old != fingerprint and not force:
        what, hint = _compat.what_changed(json.loads(study.user_attrs.get(CONFIG, "{}")), cfg)
        raise ConfigError(
            f"study '{cfg.study.name}' was run with a different study file ({what} changed), so past trials "
            f"would not be comparable; {hint or 'use a new study.name, or --force to continue anyway'}"
        )
    if stamp:
        stamp_fingerprint(study, cfg)
    if not study.user_attrs.get(BASELINES_ENQUEUED):
        for params in baselines(cfg, space):
            study.enqueue_trial(params, user_attrs={BASELINE: True}, skip_if_exists=True)
        study.set_user_attr(BASELINES_ENQUEUED, True)
    if not study.user_attrs.get(WARM_STARTS_ENQUEUED):
        t0 = time.perf_counter()
        room = max(cfg.study.n_trials - len(study.get_trials(deepcopy=False)), 0)  # fewer trials: fewer, wider bins
        warm = space.warm_starts(
            min(cfg.space.warm_starts, room), min_ratio=cfg.study.min_ratio, max_bops=cfg.study.max_bops,
            max_latency_ms=cfg.study.max_latency_ms,
        )
        if warm:
            for params in warm:
                study.enqueue_trial(params, user_attrs={WARM_START: True}, skip_if_exists=True)
            study.set_user_attr(WARM_SECONDS, round(time.perf_counter() - t0, 3))  # what choosing them cost
            study.set_user_attr(WARM_STARTS_ENQUEUED, True)
    top_up(study, storage, cfg.study.n_trials)
    return study


def stamp_fingerprint(study: optuna.Study, cfg: StudyConfig) -> None:
    """Record that the study now runs ``cfg``'s study file (its fingerprint, what it compares, metric names)."""
    if study.user_attrs.get(FINGERPRINT) == cfg.fingerprint():
        return
    study.set_user_attr(FINGERPRINT, cfg.fingerprint())
    study.set_user_attr(CONFIG, json.dumps(cfg.comparable(), sort_keys=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([METRICS[o] for o in cfg.study.objectives])


def warm_start_seconds(study: optuna.Study) -> float:
    """Seconds the study spent choosing its warm starts (probing them), 0 when it has none."""
    return float(study.user_attrs.get(WARM_SECONDS, 0.0))


def baselines(cfg: StudyConfig, space: SearchSpace | AllocatedSpace) -> list[dict]:
    """Uniform policies: each baseline sparsity at the top bit-width, and the middle one at every other width."""
    top = max(space.bits)
    out = [space.uniform_params(s, top) for s in cfg.study.baselines]
    if cfg.study.baselines:
        mid = sorted(cfg.study.baselines)[len(cfg.study.baselines) // 2]
        out += [space.uniform_params(mid, b) for b in sorted(space.bits) if b != top]
    unique = []
    for p in out:
        if p not in unique:
            unique.append(p)
    return unique[: cfg.study.n_trials]


def counts(study: optuna.Study) -> dict[TrialState, int]:
    trials = study.get_trials(deepcopy=False)
    return {s: sum(t.state == s for t in trials) for s in TrialState}


def to_start_key(study_name: str) -> str:
    """The storage counter of trials a study may still start (beyond its WAITING ones)."""
    return f"frandi:to-start:{study_name}"


def top_up(study: optuna.Study, storage: Storage, n_trials: int) -> int:
    """Let workers start trials until complete + running + waiting reach n_trials; returns that number.

    A counter, not n_trials empty WAITING trials: Optuna re-reads every unfinished trial on each sampling
    and claim, so a pool of hundreds made each trial's overhead grow with the study (see benchmarks).
    """
    c = counts(study)
    need = max(n_trials - c[TrialState.COMPLETE] - c[TrialState.RUNNING] - c[TrialState.WAITING], 0)
    storage.set_counter(to_start_key(study.study_name), need)
    return need
