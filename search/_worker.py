"""A worker: load once, then claim and run trials until the study holds n_trials finished."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import TrialState

from frandi_core import FrandiError, NonFiniteError
from storage import Storage, StorageError, atomic, connection_lost, lost_storage

from . import _optuna
from ._config import StudyConfig
from ._device import set_threads
from ._open import open_for
from ._records import FAIL_REASON, POLICY_KEY, REUSED, TrialRecord, result_attrs, start_attrs
from ._signals import (
    EXIT_CODES,
    DeadlinePassed,
    check,
    deferred_interrupts,
    exit_with_parent,
    hard_deadline,
    interrupts_raise,
    raise_held,
)
from ._study import counts, open_study, to_start_key
from ._trial import TrialResult, TrialRunner, reused_result

log = logging.getLogger("frandi.worker")


@dataclass(frozen=True)
class Deadline:
    """When a run stops starting trials (``soft``) and stops the ones in flight (``hard``), as time.time() values."""

    soft: float | None = None
    hard: float | None = None

    @classmethod
    def after(cls, soft: float | None, hard: float | None, start: float | None = None) -> Deadline:
        """The deadline ``soft`` / ``hard`` seconds after ``start`` (default now); None: no such limit. A hard limit
        alone is also the soft one."""
        t0 = time.time() if start is None else start
        soft = hard if soft is None else soft
        return cls(None if soft is None else t0 + soft, None if hard is None else t0 + hard)

    def passed(self) -> bool:
        """Whether the soft deadline has passed (the run stopped starting trials)."""
        return self.soft is not None and time.time() >= self.soft


@contextmanager
def heartbeat(storage: optuna.storages.RDBStorage, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat in a thread while the block runs; always stops the thread."""
    interval = storage.get_heartbeat_interval()
    stop = threading.Event()

    def beat() -> None:  # the first beat was recorded when the trial was claimed
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except Exception as e:  # noqa: BLE001 - a missed beat must not kill the trial
                log.warning("heartbeat failed: %s", type(e).__name__)

    thread = threading.Thread(target=beat, daemon=True) if interval else None
    if thread:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread:
            thread.join()


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and re-enqueue, by the storage's callback) trials whose worker stopped beating.

    Atomic per trial, so of many workers checking at once exactly one fails a stale trial and enqueues its retry.
    """
    with warnings.catch_warnings(), atomic(), deferred_interrupts():  # never a FAIL without its retry
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def stale_trials(study: optuna.Study) -> list[int]:
    """Ids of RUNNING trials whose heartbeat is older than the grace period (their worker is gone)."""
    return _optuna.stale_trial_ids(study)


def _start(storage: optuna.storages.BaseStorage, trial_id: int) -> bool:
    """Beat, then move the trial WAITING -> RUNNING atomically; False if another worker got it first.

    In this order a worker dying at any point leaves either a WAITING trial (someone else runs it) or a
    RUNNING one with a heartbeat (failed as stale after the grace period and retried), never one RUNNING for ever.
    """
    if storage.get_heartbeat_interval():  # type: ignore[attr-defined]
        storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
    try:
        with atomic():  # one process wins: the others see RUNNING and get False
            return storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def claim_waiting(study: optuna.Study) -> int | None:
    """Atomically move one WAITING trial (baseline, retry) to RUNNING; None when there is none."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if _start(_optuna.study_storage(study), _optuna.trial_id(t)):
            return _optuna.trial_id(t)
    return None


def claim(study: optuna.Study, storage: Storage) -> int | None:
    """The next trial for this worker, RUNNING: a WAITING one, else a new one while the study may start more.

    Taking from the study's to-start counter is one atomic UPDATE, so all workers together start exactly
    n_trials (plus replacements), on any number of machines. (A worker killed between the take and the
    trial's creation loses that one trial: the search then ends one short and a rerun tops it up.)
    """
    trial_id = claim_waiting(study)
    if trial_id is None and storage.take_from_counter(to_start_key(study.study_name)):
        waiting = optuna.trial.create_trial(state=TrialState.WAITING)
        new = _optuna.study_storage(study).create_new_trial(_optuna.study_id(study), waiting)
        trial_id = new if _start(_optuna.study_storage(study), new) else claim_waiting(study)
    return trial_id


def objective_values(cfg: StudyConfig, r: TrialResult) -> list[float]:
    """The trial's values in the order of study.objectives: the score (OD by default), size in KiB, GBOPs,
    predicted latency in ms."""
    value = {"od": r.score, "size": r.size_bits / 8192, "bops": r.bops / 1e9, "latency": r.latency_ms or 0.0}
    return [value[o] for o in cfg.study.objectives]


@contextmanager
def claimed(study: optuna.Study, storage: Storage) -> Iterator[int | None]:
    """Claim the next trial (None when there is none) and beat for it while the block runs.

    A Ctrl-C / SIGTERM that comes while the trial is claimed and its heartbeat started is held for the block
    (run_trial raises it once it can fail the trial and queue it again; with no trial, work() raises it), so a
    claimed trial is never left RUNNING until it goes stale.
    """
    with ExitStack() as stack:
        with deferred_interrupts(release=False):
            trial_id = claim(study, storage)
            if trial_id is not None:
                stack.enter_context(heartbeat(storage.optuna, trial_id))
        try:
            yield trial_id
        except KeyboardInterrupt as e:  # a stop raised before run_trial could fail the trial (a no-op after it did)
            if trial_id is not None:
                try:
                    _fail(study, trial_id, f"{type(e).__name__}: {e}", retry=True)
                except Exception as failed:  # the storage is gone: the trial goes stale and is retried later
                    log.warning("trial %d could not be queued again (%s); it is retried once stale", trial_id, failed)
            raise


def run_trial(study: optuna.Study, runner: TrialRunner, trial_id: int, cfg: StudyConfig, worker: str) -> bool:
    """Sample, evaluate and tell one claimed trial (its heartbeat kept by ``claimed``); False when it failed
    (recorded with its reason).

    Ctrl-C / SIGTERM while it samples or evaluates fails the trial and queues it again; while its result is
    being recorded, the signal waits until the trial is COMPLETE.
    """
    _optuna.forget_cached_trials(study)  # sample from the trials as they are now
    try:
        # Database calls are never cut in two (an interrupted write can leave SQLite locked for the clean-up): a
        # signal from the claim or from here is raised when the block ends; evaluating is interruptible at once.
        with deferred_interrupts():
            trial = optuna.trial.Trial(study, trial_id)  # samples the multivariate parameters
            policy = runner.space.sample(trial)
            key = runner.policy_key(policy)
            for k, v in start_attrs(worker, policy, key).items():
                trial.set_user_attr(k, v)
            earlier = measured(study, key, trial.number)
            if earlier is not None:
                trial.set_user_attr(REUSED, earlier.number)
        if earlier is None:
            r = runner.evaluate(policy)
        else:  # measured already: its result, no FR paid twice
            r = reused_result(TrialRecord.from_trial(earlier), earlier.values[0])
    except (NonFiniteError, FloatingPointError) as e:
        _fail(study, trial_id, str(e))
        log.warning("trial %d failed: %s", trial.number, e)
        return False
    except (StorageError, optuna.exceptions.StorageInternalError):
        raise  # the storage is gone: the trial's heartbeat stops, it goes stale and is retried as it was
    except BaseException as e:  # Ctrl-C / SIGTERM: not the policy's fault, so it runs again later
        _fail(study, trial_id, f"{type(e).__name__}: {e}", retry=isinstance(e, KeyboardInterrupt))
        raise
    with deferred_interrupts():
        _record(study, trial, r, cfg)
    return True


def measured(study: optuna.Study, key: str, number: int) -> optuna.trial.FrozenTrial | None:
    """The first finished trial of the study (not trial ``number``) that measured the policy under ``key``: its
    result is this one's, so no policy is paid twice (the sampler drawing a warm start's parameters again, two
    rules or levels that give one policy). Two workers drawing one policy at the same moment both measure it."""
    same = [t for t in _optuna.trial_summaries(study, (POLICY_KEY,))  # the keys alone: no trial read whole
            if t.state == TrialState.COMPLETE and t.number != number and t.user_attrs.get(POLICY_KEY) == key]
    first = min(same, key=lambda t: t.number, default=None)
    return None if first is None else _optuna.study_storage(study).get_trial(first.trial_id)


def _record(study: optuna.Study, trial: optuna.trial.Trial, r: TrialResult, cfg: StudyConfig) -> None:
    """Store the trial's measurements and tell its objective values."""
    for k, v in result_attrs(r, threads=torch.get_num_threads()).items():
        trial.set_user_attr(k, v)
    if cfg.study.min_ratio is not None:
        trial.set_constraint("min_ratio", cfg.study.min_ratio - r.ratio)  # feasible when <= 0
    if cfg.study.max_bops is not None:
        trial.set_constraint("max_bops", (r.bops - cfg.study.max_bops) / cfg.study.max_bops)
    if cfg.study.max_latency_ms is not None and r.latency_ms is not None:
        trial.set_constraint("max_latency_ms", (r.latency_ms - cfg.study.max_latency_ms) / cfg.study.max_latency_ms)
    _tell(study, trial, objective_values(cfg, r))


def _fail(study: optuna.Study, trial_id: int, reason: str, *, retry: bool = False) -> None:
    """Tell the trial FAIL with its reason and, with ``retry``, enqueue it again as a stale trial is.

    A trial already failed as stale by another worker is left as it is: that worker enqueued its retry.
    """
    storage = _optuna.study_storage(study)
    with deferred_interrupts():  # a FAIL without its retry would lose the trial
        try:
            storage.set_trial_user_attr(trial_id, FAIL_REASON, reason[:500])
            _tell(study, storage.get_trial(trial_id).number, state=TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            if not storage.get_trial(trial_id).state.is_finished():
                raise
            return
        callback = storage.get_heartbeat_stale_trial_callback()  # type: ignore[attr-defined]
        if retry and callback is not None:
            callback(study, storage.get_trial(trial_id))


def _tell(
    study: optuna.Study, trial: optuna.trial.Trial | int, values: list[float] | None = None, **kwargs: object
) -> None:
    """Finish the trial, atomically: a trial failed as stale at the same moment is finished once, by one of us."""
    with atomic():
        study.tell(trial, values, **kwargs)  # type: ignore[arg-type]


def work(
    cfg: StudyConfig,
    storage: Storage,
    *,
    device: str = "cpu",
    worker_index: int = 0,
    threads: int | None = None,
    progress: bool = False,
    poll: float = 1.0,
    max_failures: int | None = None,
    on_trial: Callable[[int], None] | None = None,
    runner: TrialRunner | None = None,
    deadline: Deadline | None = None,
) -> int:
    """Pull and run trials until the study holds n_trials finished ones, or the deadline passed; returns how many
    this worker ran.

    ``runner``: one the caller built for this study (``frandi search`` in-process, teacher and batches loaded).
    ``deadline``: no trial starts after ``deadline.soft``; at ``deadline.hard`` the trial in flight is re-queued.
    """
    deadline = deadline or Deadline()
    try:
        with hard_deadline(deadline.hard):
            return _work(cfg, storage, device, worker_index, threads, progress, poll, max_failures, on_trial, runner,
                         deadline.soft)  # fmt: skip
    except DeadlinePassed:
        log.warning("the hard deadline passed: the trial in flight was stopped and queued again")
        return 0


def _work(
    cfg: StudyConfig,
    storage: Storage,
    device: str,
    worker_index: int,
    threads: int | None,
    progress: bool,
    poll: float,
    max_failures: int | None,
    on_trial: Callable[[int], None] | None,
    runner: TrialRunner | None,
    soft: float | None,
) -> int:
    set_threads(cfg.run.threads if threads is None else threads, cfg.run.workers)
    worker = f"{os.uname().nodename}:{os.getpid()}:{device}"
    study = open_study(cfg, storage, worker_index=worker_index)
    _optuna.check_optuna(study)  # before any claim: an Optuna that renamed what claims rely on is one line, not a mess
    runner = runner or TrialRunner(cfg, storage, device=device, progress=progress)
    _ = runner.space  # built (its sensitivity table measured or read) before a trial is claimed
    done = failed = 0
    limit = cfg.study.n_trials if max_failures is None else max_failures
    while True:
        check()  # a safe point: once a stop is recorded, no trial starts
        if soft is not None and time.time() >= soft:
            return done
        if storage.optuna.get_heartbeat_interval():
            fail_stale_trials(study)
        with claimed(study, storage) as trial_id:
            if trial_id is not None:
                try:
                    ok = run_trial(study, runner, trial_id, cfg, worker)
                except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
                    if not _optuna.study_storage(study).get_trial(trial_id).state.is_finished():
                        raise
                    log.warning("trial %d went stale while it ran (no heartbeat within the grace period)", trial_id)
                    continue
                except optuna.exceptions.StorageInternalError as e:
                    if not connection_lost(e):
                        raise
                    log.warning("trial %d: %s; it goes stale and is retried", trial_id, lost_storage(e).split(";")[0])
                    continue  # the next calls wait for the server (see storage.open_storage)
        if trial_id is not None:
            if ok:
                done += 1
            else:
                failed += 1
                if failed <= limit:
                    storage.add_to_counter(to_start_key(study.study_name), 1)  # so the study still reaches n_trials
            if on_trial:
                on_trial(counts(study)[TrialState.COMPLETE])
            continue
        raise_held()
        c = counts(study)
        if c[TrialState.COMPLETE] >= cfg.study.n_trials or c[TrialState.RUNNING] == 0:
            return done
        time.sleep(poll)  # others are running trials that may still fail and be retried


def worker_main(
    cfg: StudyConfig, storage_url: str, device: str, worker_index: int, threads: int, parent: int,
    deadline: Deadline | None = None,
) -> None:
    """Entry point of a spawned worker process: SIGTERM behaves like Ctrl-C so the trial is told FAIL and retried.

    Ctrl-C itself is ignored: the launcher sends one SIGTERM, so a trial is never interrupted twice. A worker
    whose launcher died (kill -9) stops the same way instead of running on unwatched.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(parent)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with interrupts_raise(sigint=False):
            with open_for(cfg, storage_url) as storage:  # the launcher's URL, already resolved
                work(cfg, storage, device=device, worker_index=worker_index, threads=threads, deadline=deadline)
            check()  # a SIGTERM recorded but never raised still ends this worker as terminated
    except KeyboardInterrupt:
        raise SystemExit(EXIT_CODES[signal.SIGTERM]) from None
    except (FrandiError, StorageError) as e:
        raise SystemExit(f"frandi worker {worker_index}: error: {e}") from None
    except optuna.exceptions.StorageInternalError as e:
        raise SystemExit(f"frandi worker {worker_index}: error: {lost_storage(e, storage_url)}") from None
