"""`frandi search`: validate everything, prepare the study, run N worker processes, show progress."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import optuna
import torch
from optuna.trial import TrialState
from tqdm.auto import tqdm

from frandi_core import (
    FrandiError,
    SyntheticData,
    bops,
    compress,
    layer_macs,
    load_model,
    model_outputs,
    model_size,
)
from storage import Storage

from ._allocate import check_offsets, study_space
from ._config import StudyConfig
from ._device import check_device, set_threads
from ._errors import ConfigError
from ._open import open_for
from ._signals import check, deferred_interrupts, received, wait
from ._space import SearchSpace
from ._study import counts, create_or_resume, stamp_fingerprint
from ._trial import TrialRunner, cached_batches, cached_latency, model_spec
from ._worker import Deadline, work, worker_main


def check_model(cfg: StudyConfig, device: str = "cpu") -> tuple[torch.nn.Module, SearchSpace]:
    """The checks that need no storage: the model loads and runs one forward at input_shape, and the
    search space fits its layers. Returns the teacher and the space."""
    teacher = load_model(model_spec(cfg), device=device)
    space = SearchSpace.of_model(cfg.space, teacher, cfg.model.input_shape)
    check_offsets(cfg.space, space)
    policy = space.smallest()
    if policy.channels():  # sized on the pruned student: its tensors are smaller
        example = torch.zeros(1, *cfg.model.input_shape, device=device)
        student = compress(teacher, policy, calibration=example, channel_multiple=cfg.space.channels_multiple)
        smallest = model_size(student, policy, original=teacher)
    else:
        smallest = model_size(teacher, policy)
    if cfg.study.min_ratio is not None and smallest.ratio < cfg.study.min_ratio:
        raise ConfigError(
            f"study.min_ratio {cfg.study.min_ratio:g} is out of reach: the space's smallest policy compresses "
            f"{smallest.ratio:.2f}x; lower study.min_ratio, or widen space.sparsity or space.bits"
        )
    if cfg.study.max_bops is not None:
        fewest = bops(layer_macs(teacher, cfg.model.input_shape), space.cheapest())
        if fewest > cfg.study.max_bops:
            raise ConfigError(
                f"study.max_bops {cfg.study.max_bops:g} is out of reach: the space's cheapest policy takes "
                f"{fewest:.4g} bit operations; raise study.max_bops, or widen space.bits or space.act_bits"
            )
    return teacher, space


def prepare(
    cfg: StudyConfig,
    storage: Storage,
    *,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
    checked: tuple[torch.nn.Module, SearchSpace] | None = None,
) -> optuna.Study:
    """Check the model and space (``checked``: check_model's result, if the caller has it), and only then
    create or resume the study (a changed fingerprint is rewritten here, with --force) and its batches."""
    return _prepare(cfg, storage, checked or check_model(cfg, device), device, force, progress)[0]


def _prepare(
    cfg: StudyConfig,
    storage: Storage,
    checked: tuple[torch.nn.Module, SearchSpace],
    device: str,
    force: bool,
    progress: bool,
) -> tuple[optuna.Study, tuple[str, SyntheticData]]:
    """prepare(), also returning the batches (and their key), for a worker in this process to reuse."""
    teacher, space = checked
    if cfg.space.mode == "layerwise":
        # the new fingerprint only once its batches exist: a --force whose synthesis fails leaves the old one
        study = create_or_resume(cfg, storage, space, force=force, stamp=False)
        batches = cached_batches(cfg, storage, teacher, device=device, progress=progress)
        stamp_fingerprint(study, cfg)
        return study, batches
    # allocated: baselines and warm starts are parameters of the allocated space, which needs the batches
    # and the sensitivity table first
    key, data = cached_batches(cfg, storage, teacher, device=device, progress=progress)
    heldout = data.heldout.to(device)
    recovery = data.recovery.to(device)
    latency = cached_latency(cfg, storage, key, teacher) if cfg.uses_latency else None
    allocated = study_space(
        cfg.space, storage, key, teacher, space, heldout, model_outputs(teacher, heldout), recovery,
        method=cfg.recovery.calibration, latency=latency, max_bops=cfg.study.max_bops,
        max_latency_ms=cfg.study.max_latency_ms,
    )
    return create_or_resume(cfg, storage, allocated, force=force), (key, data)


def launch(
    cfg: StudyConfig,
    *,
    storage_override: str | None = None,
    force: bool = False,
    progress: bool = True,
    deadline: Deadline | None = None,
) -> optuna.Study:
    """Run the study to n_trials finished trials with cfg.run.workers processes (or until ``deadline``); resume
    when it exists."""
    devices = [check_device(d) for d in cfg.run.devices]
    n = cfg.run.workers
    threads = set_threads(cfg.run.threads, n)  # as many as one worker gets: more threads than cores thrash
    checked = check_model(cfg, devices[0])  # before the storage is opened, let alone created
    with open_for(cfg, storage_override) as storage:
        study, batches = _prepare(cfg, storage, checked, devices[0], force, progress)
        if n == 1:  # in this process: no start-up cost, Ctrl-C reaches the trial directly
            runner = TrialRunner(cfg, storage, device=devices[0], teacher=checked[0], batches=batches)
            done = min(counts(study)[TrialState.COMPLETE], cfg.study.n_trials)
            bar = tqdm(total=cfg.study.n_trials, desc=f"study {study.study_name}", unit="trial",
                       disable=not progress, initial=done)
            with bar:
                work(cfg, storage, device=devices[0], threads=threads, runner=runner, deadline=deadline,
                     on_trial=lambda done: bar.update(min(done, cfg.study.n_trials) - bar.n))
            return study
        ctx = mp.get_context("spawn")
        procs = [
            ctx.Process(
                target=worker_main,
                args=(cfg, storage.url, devices[i % len(devices)], i, threads, os.getpid(), deadline),
                name=f"frandi-worker-{i}",
            )
            for i in range(n)
        ]
        try:
            for p in procs:
                p.start()
            _watch(study, procs, cfg.study.n_trials, progress)
        except KeyboardInterrupt:
            _stop(procs)
            raise
        bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
        c = counts(study)
        if bad and c[TrialState.COMPLETE] < cfg.study.n_trials:
            raise FrandiError(
                f"{len(bad)} worker(s) exited with errors before the study finished (see above); "
                "run the same command again to resume"
            )
        return study


def _stop(procs: list, patience: float = 60) -> None:
    """SIGTERM each worker once (each fails and re-queues its trial), wait for them, then kill what is left
    (its trial goes stale and is retried by the next run)."""
    started = [p for p in procs if p.pid is not None]
    for p in started:
        if p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + patience
    for p in started:
        p.join(timeout=max(deadline - time.monotonic(), 0))
        if p.is_alive():
            p.kill()
            p.join()


def _watch(study: optuna.Study, procs: list, n_trials: int, progress: bool) -> None:
    """Show progress until the workers exit. Ctrl-C and SIGTERM are held, so neither lands inside a database
    call (a query interrupted half-way leaves the connection unusable); they are raised between polls."""
    bar = tqdm(total=n_trials, desc=f"study {study.study_name}", unit="trial", disable=not progress)
    try:
        with deferred_interrupts(release=False):
            while any(p.is_alive() for p in procs) and received() is None:
                done = counts(study)[TrialState.COMPLETE]
                bar.update(min(done, n_trials) - bar.n)
                wait(0.5)
            if received() is None:
                bar.update(min(counts(study)[TrialState.COMPLETE], n_trials) - bar.n)
    finally:
        bar.close()
    check()
