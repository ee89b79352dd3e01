"""Helpers for the reliability tests: tiny study files, `frandi` in a subprocess, reading trials back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from storage import open_storage
from tests.tiny_study import make_weights, study_text

ROOT = Path(__file__).resolve().parents[2]

@pytest.fixture
def write_study(tmp_path: Path) -> Callable[..., Path]:
    """Write ``study.toml`` (and the tiny ResNet's weights) into tmp_path; keywords fill the template."""
    make_weights(tmp_path / "tiny.pt")

    def write(url: str | None = None, *, name: str = "study.toml", **fields: Any) -> Path:
        path = tmp_path / name
        path.write_text(study_text(url=url or f"sqlite:///{tmp_path / 'runs' / 'rel.db'}", **fields))
        return path

    return write


class Frandi:
    """``python -m search.cli ...`` in its own session (so a signal can go to its whole process group)."""

    def __init__(self, args: list[Any], log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = f"{time.monotonic_ns()}"
        self.out_path, self.err_path = log_dir / f"{stamp}.out", log_dir / f"{stamp}.err"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "search.cli", *[str(a) for a in args]],
                cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the command and its worker processes, as Ctrl-C in a terminal does."""
        os.killpg(self.proc.pid, sig)

    def group_alive(self) -> bool:
        """Whether any process of the command's group (it and its workers) is still running (zombies aside)."""
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            state, pgrp = fields[0], int(fields[2])
            if pgrp == self.proc.pid and state not in ("Z", "X"):
                return True
        return False

    def wait(self, timeout: float) -> tuple[int, str, str]:
        """Exit code, stdout and stderr; the process group is killed (and the test failed) on timeout."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"frandi did not exit within {timeout} s; stderr:\n{self.err_path.read_text()[-3000:]}")
        return code, self.out_path.read_text(), self.err_path.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)


@pytest.fixture
def frandi_proc(tmp_path: Path) -> Iterator[Callable[..., Frandi]]:
    """Start `frandi ARGS...` as a subprocess; every one still running at the end of the test is killed."""
    started: list[Frandi] = []

    def start(*args: Any) -> Frandi:
        started.append(Frandi(list(args), tmp_path / "logs"))
        return started[-1]

    yield start
    for f in started:
        f.kill()


def read_trials(url: str, study: str = "rel") -> list[FrozenTrial]:
    """All trials of a study, read without heartbeats (a bystander); [] while the study does not exist."""
    with open_storage(url, heartbeat_interval=None) as st:
        try:
            return optuna.load_study(study_name=study, storage=st.optuna).get_trials(deepcopy=False)
        except KeyError:
            return []


def states(trials: list[FrozenTrial]) -> dict[str, int]:
    return {s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}


def wait_until(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.25) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def assert_finished(trials: list[FrozenTrial], n_trials: int, *, distinct: bool = True) -> None:
    """Exactly n_trials COMPLETE, nothing RUNNING or WAITING, every baseline finished once, and (``distinct``,
    for spaces too large to draw a policy twice by chance) no policy evaluated twice."""
    counts = states(trials)
    assert counts.get("COMPLETE", 0) == n_trials, counts
    assert counts.get("RUNNING", 0) == 0 and counts.get("WAITING", 0) == 0, counts
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    policies = [t.user_attrs["policy"] for t in complete]
    assert not distinct or len(set(policies)) == len(policies), "the same policy was evaluated twice"
    for t in trials:
        if t.user_attrs.get("baseline"):
            done = [c for c in complete if c.user_attrs.get("baseline") and c.params == params_of(t)]
            assert len(done) == 1, f"baseline {params_of(t)} finished {len(done)} times"


def params_of(t: FrozenTrial) -> dict[str, Any]:
    """The parameters a trial was enqueued with (it may have been stopped before suggesting them all), else its own."""
    return dict(t.system_attrs.get("fixed_params") or t.params)



def prepare_study(study_file: Path) -> None:
    """Create the study and its cached batches, as `frandi search` does before starting workers."""
    from search import load_config, open_for, prepare

    cfg = load_config(study_file)
    with open_for(cfg) as st:
        prepare(cfg, st)
