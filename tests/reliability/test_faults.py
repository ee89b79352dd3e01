"""Faults a long search meets: killed workers, Ctrl-C, a database restart, lock contention, NaN, rotten blobs.

Each test drives the real `frandi` CLI (in a subprocess where processes die or get signals) on a tiny study,
with heartbeats every second and a 3 s grace period, and checks that nothing is lost or counted twice.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import zlib
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from frandi_core import load_model
from search import load_config, model_spec, open_for
from search._trial import cached_batches
from search.cli import main
from tests import blob_rows
from tests.conftest_pg import PgServer

from ._models import save_tempered
from .conftest import assert_finished, params_of, prepare_study, read_trials, states, wait_until

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
retried_from = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number


def _url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'runs' / 'rel.db'}"
    server: PgServer = request.getfixturevalue("pg_server")
    return server.create_schema()


def test_kill_9_worker_mid_trial_is_failed_and_retried(storage_url, write_study, frandi_proc, frandi) -> None:
    n, study = 3, write_study(storage_url, n_trials=3, steps=100)
    prepare_study(study)
    victim = frandi_proc("worker", study)

    def running() -> optuna.trial.FrozenTrial | None:
        mine = f":{victim.pid}:"
        trials = read_trials(storage_url)
        return next(
            (t for t in trials if t.state == TrialState.RUNNING and mine in t.user_attrs.get("worker", "")), None
        )

    killed = wait_until(running, 150, "the worker to start a trial", poll=0.1)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(30)[0] == -signal.SIGKILL
    assert read_trials(storage_url)[killed.number].state == TrialState.RUNNING  # killed in the middle of it
    time.sleep(5)  # past the grace period (3 s; SQLite tells the time in whole seconds): `frandi status` says stale
    code, out, _ = frandi("status", study, "--format", "json")
    s = json.loads(out)
    assert code == 0 and (s["running"], s["stale"]) == (0, 1), s

    code, _, err = frandi("worker", study)  # another worker: fails the stale trial after the grace period, retries it
    assert code == 0, err
    trials = read_trials(storage_url)
    assert_finished(trials, n)
    assert trials[killed.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if retried_from(t) == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == trials[killed.number].params
    assert retry.user_attrs["worker"] != killed.user_attrs["worker"]
    assert len(trials) == n + 1  # the killed trial, and nothing else, was run twice


STOPS = {  # how a search is stopped: (signal, sent to the whole process group?, exit code, what it prints)
    "ctrl-c": (signal.SIGINT, True, 130, "interrupted"),  # a terminal sends it to the command and its workers
    "sigterm": (signal.SIGTERM, False, 143, "terminated"),  # kill PID, systemd, docker stop: the launcher alone
    "kill-9-launcher": (signal.SIGKILL, False, -signal.SIGKILL, None),  # workers must notice and stop themselves
    "kill-9-all": (signal.SIGKILL, True, -signal.SIGKILL, None),  # nothing runs on: trials go stale, reruns reap
}


@pytest.mark.parametrize(
    "backend, workers, stop",
    [
        ("sqlite", 1, "ctrl-c"),
        ("sqlite", 1, "sigterm"),
        ("sqlite", 2, "sigterm"),
        ("sqlite", 2, "kill-9-launcher"),
        ("sqlite", 2, "kill-9-all"),
        pytest.param("postgres", 2, "ctrl-c", marks=pytest.mark.postgres),
        pytest.param("postgres", 2, "sigterm", marks=pytest.mark.postgres),
    ],
)
def test_stopped_search_requeues_its_trials_leaves_no_process_and_rerun_finishes(
    backend, workers, stop, tmp_path, request, write_study, frandi_proc, frandi
) -> None:
    sig, to_group, expected_code, message = STOPS[stop]
    orphans = stop == "kill-9-launcher"  # workers stop by themselves (between trials, maybe): check they stop early
    url, n = _url(backend, tmp_path, request), 6  # more than can finish while we look, and before orphans stop
    # long evaluations (2,000 FR steps, seconds each) so that the trial seen evaluating is still evaluating when the
    # signal lands, a few hundredths of a second later
    study = write_study(url, n_trials=n, steps=2000, baselines="[0.25, 0.5, 0.75]")
    prepare_study(study)  # batches cached: the command below starts its workers at once
    args = ("search", study, "--workers", workers, "--no-progress")
    search = frandi_proc(*args)

    def busy() -> bool:
        """A finished trial, and one evaluating: sampled (its policy stored), not yet recording its result (a
        signal then waits for the result, as it does during a claim: that trial is not failed)."""
        assert search.proc.poll() is None, search.err_path.read_text()[-3000:]
        trials = read_trials(url)
        evaluating = [t for t in trials if t.state == TrialState.RUNNING and "policy" in t.user_attrs]
        return states(trials).get("COMPLETE", 0) >= 1 and bool(evaluating)

    wait_until(busy, 150, "a finished trial and one evaluating", poll=0.1)
    t0 = time.monotonic()
    search.signal_group(sig) if to_group else os.kill(search.pid, sig)
    code, _, err = search.wait(60)
    assert code == expected_code and time.monotonic() - t0 < 10, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    if message:
        assert err.strip().splitlines()[-1] == f"frandi: {message}; run the same command again to resume", err
    wait_until(lambda: not search.group_alive(), 15, "every worker process to exit")
    trials = read_trials(url)
    # after kill -9 of everything, what was in flight stays RUNNING (unless it finished first) and the rerun's two
    # workers reap it together; otherwise it was told FAIL and queued again
    if stop != "kill-9-all":
        assert states(trials).get("RUNNING", 0) == 0, err[-3000:]  # the interrupted trials were told FAIL...
        failed = [t for t in trials if t.state == TrialState.FAIL]
        if orphans:  # they stopped on their own, long before the study was done (between trials, failing none)
            assert states(trials).get("COMPLETE", 0) < n
        else:
            assert failed
        for t in failed:  # ...and put back in the pool as they were, to run on the next start
            assert t.user_attrs["fail_reason"].startswith(("KeyboardInterrupt", "Terminated"))
            (retry,) = [r for r in trials if retried_from(r) == t.number]
            assert params_of(retry) == params_of(t)
            # an orphan's retry may already have been run by another orphan that had not yet noticed
            assert retry.state == TrialState.WAITING or (orphans and retry.state == TrialState.COMPLETE)

    code, _, err = frandi(*args)  # the same command again; it would hang on a trial left RUNNING for ever
    assert code == 0, err
    assert_finished(read_trials(url), n)


@pytest.mark.postgres
def test_postgres_restart_mid_study_loses_nothing(pg_server: PgServer, write_study, frandi_proc, frandi) -> None:
    url, n = pg_server.create_schema(), 6
    study = write_study(url, n_trials=n, steps=40)
    prepare_study(study)
    workers = [frandi_proc("worker", study) for _ in range(2)]
    wait_until(lambda: states(read_trials(url)).get("COMPLETE", 0) >= 2, 150, "two finished trials")
    pg_server.stop("fast")  # every connection drops
    try:
        time.sleep(8)  # longer than a trial and the grace period: workers meet the outage in their own calls
    finally:
        pg_server.start()
    for worker in workers:
        code, _, err = worker.wait(120)
        assert "Traceback" not in err, err[-3000:]
        if code != 0:  # giving up is allowed, with one clear line; running the study again then finishes it
            assert code == 2 and err.strip().splitlines()[-1].startswith("frandi: error: lost the storage"), err
    if states(read_trials(url)).get("COMPLETE", 0) < n:
        code, _, err = frandi("search", study, "--no-progress")
        assert code == 0, err
    assert_finished(read_trials(url), n)


def test_resumed_runs_and_joining_workers_do_not_redraw_policies(tmp_path, write_study, frandi) -> None:
    """Each run and each `frandi worker` seeds its sampler afresh: a resumed study must not repeat its first draws."""
    url = f"sqlite:///{tmp_path / 'runs' / 'rel.db'}"
    assert frandi("search", write_study(n_trials=3, baselines="[]"), "--no-progress")[0] == 0
    assert frandi("search", write_study(n_trials=6, baselines="[]"), "--no-progress")[0] == 0  # resume
    prepare_study(write_study(n_trials=9, baselines="[]"))
    assert frandi("worker", tmp_path / "study.toml")[0] == 0  # a worker joining the study
    assert_finished(read_trials(url), 9)


def test_four_workers_on_one_sqlite_file_finish_100_trials(tmp_path, write_study, capfd) -> None:
    url, n = f"sqlite:///{tmp_path / 'runs' / 'rel.db'}", 100
    study = write_study(n_trials=n, steps=1, layers='["layer1.0.conv1"]')  # short trials: contention is the point
    code = main(["search", str(study), "--workers", "4", "--no-progress"])
    out, err = capfd.readouterr()  # the workers' output too
    assert code == 0, err[-3000:]
    assert "database is locked" not in out + err
    trials = read_trials(url)
    assert_finished(trials, n, distinct=False)  # 27 policies in this space: 100 trials repeat some
    assert len(trials) == n  # no failure, no retry
    assert len({t.user_attrs["worker"] for t in trials}) == 4


def test_inf_in_forward_fails_that_trial_with_reason_and_study_goes_on(tmp_path, write_study, capsys) -> None:
    """A policy that prunes the model's learned temperature to 0 makes its outputs inf: OD cannot be measured.

    The temperature is one weight, pruned from sparsity 0.6 (round(0.5) = 0): the 0.6 baseline always fails,
    random policies fail 1 time in 7, far from the cap of n_trials replacements."""
    save_tempered(tmp_path / "tempered.pt")
    study = write_study(architecture="tests.reliability._models:tempered", kwargs="{}", weights="tempered.pt",
                        n_trials=6, baselines="[0.1, 0.6, 0.2]", sparsity="[0.0, 0.6]")  # fmt: skip
    code = main(["search", str(study), "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 0, err
    trials = read_trials(f"sqlite:///{tmp_path / 'runs' / 'rel.db'}")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all("NaN or inf" in t.user_attrs["fail_reason"] for t in failed)
    assert all(t.params["temperature:sparsity"] >= 0.5 for t in failed)
    assert states(trials) == {"COMPLETE": 6, "FAIL": len(failed)}


def test_diverging_recovery_fails_trials_with_reason(tmp_path, write_study, capsys) -> None:
    """recovery.lr = 1e30 blows every student up during Feature Regression: each trial FAILs, saying why."""
    code = main(["search", str(write_study(n_trials=2, lr=1e30)), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1 and "0 of 2 finished trials" in err and "lower recovery.lr" in err
    trials = read_trials(f"sqlite:///{tmp_path / 'runs' / 'rel.db'}")
    assert trials and all(t.state == TrialState.FAIL for t in trials)
    assert all("lower recovery.lr" in t.user_attrs["fail_reason"] for t in trials)
    assert len(trials) == 2 * 2  # each failed trial is replaced, but only n_trials times: the search ends
    assert "0 finished" in out


def test_corrupted_cached_batch_is_detected_and_regenerated(storage_url, write_study, caplog) -> None:
    cfg = load_config(write_study(storage_url))
    teacher = load_model(model_spec(cfg))
    with open_for(cfg) as st:
        key, first = cached_batches(cfg, st, teacher)
        sha = st.blob_info(key)["sha256"]  # type: ignore[index]
        blob_rows.set_data(st.url, key, zlib.compress(b"rot"))  # valid zlib holding other bytes: only the hash can tell
        with caplog.at_level(logging.WARNING, logger="storage"):
            again_key, again = cached_batches(cfg, st, teacher)
        info = st.blob_info(key)
    assert "corrupted" in caplog.text
    assert again_key == key and info is not None and info["sha256"] == sha
    assert torch.equal(again.recovery, first.recovery) and torch.equal(again.heldout, first.heldout)


@pytest.mark.parametrize("stop", ["sigterm", "kill-9"])
def test_search_killed_during_synthesis_is_taken_over_within_the_grace_period(
    stop, tmp_path, write_study, frandi_proc, frandi, caplog
) -> None:
    """The synthesis claim beats like a trial: a rerun waits (saying for what) at most the grace period (3 s)."""
    url = f"sqlite:///{tmp_path / 'runs' / 'rel.db'}"
    study = write_study(n_trials=2, iterations=300)  # synthesis takes long enough to be killed in the middle
    search = frandi_proc("search", study, "--no-progress")

    def synthesizing() -> bool:
        assert search.proc.poll() is None, search.err_path.read_text()[-3000:]
        return blob_rows.states(url) == ["pending"]

    wait_until(synthesizing, 120, "the synthesis to start", poll=0.1)
    search.signal_group(signal.SIGTERM if stop == "sigterm" else signal.SIGKILL)
    code, _, err = search.wait(60)
    if stop == "sigterm":  # the claim is released on the way out: nobody has to wait for it
        assert code == 143 and "Traceback" not in err, err[-3000:]
        assert blob_rows.states(url) == []
    else:
        assert code == -signal.SIGKILL and blob_rows.states(url) == ["pending"]
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="storage"):
        code, _, err = frandi("search", study, "--no-progress")  # the same study: it needs the same batches
    assert code == 0, err
    if stop == "kill-9":  # the dead claim is trusted for the grace period (3 s), no longer for 600 s
        said = caplog.text
        assert "waiting for the synthetic batches, being made by" in said and "if it stops for 3 s" in said
        assert "taking over" in said
        assert time.monotonic() - t0 < 300
    assert_finished(read_trials(url), 2)
