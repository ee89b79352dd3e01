"""`--timeout` / `[study] timeout` and `--hard-timeout`: a search runs to a deadline, keeps its front, resumes."""

from __future__ import annotations

import time
from datetime import timedelta

import optuna
import pytest
from optuna.trial import TrialState

from search import load_config, open_for, open_study, prepare
from search._duration import DurationError, parse_duration
from tests.tiny_study import make_weights, study_text

retried_from = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number


def _study(tmp_path, *, steps: int = 5, timeout: str | None = None, n_trials: int = 500):
    make_weights(tmp_path / "tiny.pt")
    text = study_text(name="dl", url="sqlite:///runs/dl.db", n_trials=n_trials, iterations=5, steps=steps)
    if timeout is not None:
        text = text.replace("baselines = [0.5]", f'baselines = [0.5]\ntimeout = "{timeout}"')
    path = tmp_path / "dl.toml"
    path.write_text(text)
    return path


def _prepare(path) -> None:
    cfg = load_config(path)
    with open_for(cfg) as st:
        prepare(cfg, st, progress=False)


def _trials(path):
    cfg = load_config(path)
    with open_for(cfg, mode="read") as st:
        return open_study(cfg, st).get_trials(deepcopy=False)


@pytest.mark.parametrize(
    "text, seconds", [("45s", 45), ("90m", 5400), ("2h", 7200), ("1h30m", 5400), ("1.5s", 1.5), (" 1d ", 86400)]
)
def test_durations(text, seconds) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "90", "5x", "m", "1h 30", "-5s", "0s", "1e3s", "s5"])
def test_bad_durations_are_refused(text) -> None:
    with pytest.raises(DurationError, match="duration|longer than 0"):
        parse_duration(text)


@pytest.mark.parametrize("option", ["--timeout", "--hard-timeout"])
@pytest.mark.parametrize("command", ["search", "worker"])
def test_bad_timeout_option_is_one_line_exit_2(tmp_path, frandi, command, option) -> None:
    code, out, err = frandi(command, _study(tmp_path), option, "ten minutes")
    assert code == 2 and err.count("\n") == 1 and f"{option} 'ten minutes' is not a duration" in err, err


def test_bad_timeout_in_the_study_file_is_one_line_exit_2(tmp_path, frandi) -> None:
    code, _, err = frandi("search", _study(tmp_path, timeout="soon"), "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "study.timeout 'soon' is not a duration" in err, err


def test_hard_timeout_shorter_than_the_timeout_is_refused(tmp_path, frandi) -> None:
    code, _, err = frandi("search", _study(tmp_path), "--timeout", "1h", "--hard-timeout", "5m")
    assert code == 2 and "shorter than the timeout" in err, err


def test_timeout_is_not_in_the_fingerprint(tmp_path) -> None:
    """It decides no trial's result: a study resumed with another time budget is the same study."""
    assert load_config(_study(tmp_path, timeout="2h")).fingerprint() == load_config(_study(tmp_path)).fingerprint()


@pytest.mark.parametrize("where", ["option", "study file"])
def test_timeout_stops_starting_trials_prints_the_front_exits_0_and_resumes(tmp_path, frandi, where) -> None:
    path = _study(tmp_path, timeout="5s" if where == "study file" else None)
    _prepare(path)  # batches cached: the deadline is spent on trials
    args = ["search", path, "--no-progress"] + (["--timeout", "5s"] if where == "option" else [])
    t0 = time.time()
    code, out, err = frandi(*args)
    wall = time.time() - t0
    assert code == 0, err
    assert "time limit reached" in err and "run the same command again to resume" in err, err
    assert "trial" in out.splitlines()[1]  # the front's header: the front was printed
    trials = _trials(path)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert 0 < len(done) < 500 and not [t for t in trials if t.state == TrialState.RUNNING]
    # no trial started after the deadline (5 s after the command's start, which came before its first trial),
    # the last one in flight finished (5 FR steps: well under a second), and the run did not stop early
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    assert max(starts) - min(starts) < timedelta(seconds=5) and 5 <= wall < 5 + 30, (min(starts), max(starts), wall)
    code, _, err = frandi("search", path, "--no-progress", "--n-trials", len(done) + 2)  # resumes
    assert code == 0, err
    assert sum(t.state == TrialState.COMPLETE for t in _trials(path)) == len(done) + 2


def test_hard_timeout_requeues_the_trial_in_flight_and_exits_0(tmp_path, frandi) -> None:
    path = _study(tmp_path, steps=100_000, n_trials=3)  # one trial takes minutes: the hard limit cuts it
    _prepare(path)
    t0 = time.time()
    code, out, err = frandi("search", path, "--no-progress", "--hard-timeout", "4s")
    assert code == 0 and time.time() - t0 < 60, err
    assert "time limit reached" in err, err
    trials = _trials(path)
    (stopped,) = [t for t in trials if t.state == TrialState.FAIL]
    assert stopped.user_attrs["fail_reason"].startswith("DeadlinePassed")
    (retry,) = [t for t in trials if retried_from(t) == stopped.number]
    assert retry.state == TrialState.WAITING and not [t for t in trials if t.state == TrialState.RUNNING]
