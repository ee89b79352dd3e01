"""A stop signal always ends as a stop: SIGTERM and Ctrl-C at random moments of real runs, never exit 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.reliability.conftest import ROOT

DRIVERS, ROUNDS = 4, 52  # 208 signals, each to a fresh run of `frandi search`, four processes at a time
EXPECTED = {
    signal.SIGTERM: (143, "frandi: terminated; run the same command again to resume"),
    signal.SIGINT: (130, "frandi: interrupted; run the same command again to resume"),
}


def test_every_signal_at_a_random_moment_ends_the_search_as_a_stop(tmp_path: Path) -> None:
    """Rounds of tests/reliability/_signal_rounds.py: each signal ends its run within 60 s with its code and its
    line, no traceback, no trial left RUNNING, every stopped trial queued again, no synthesis claim left pending.
    Some of the signals land where Python swallows the raise (``__del__``, an import's weakref callback): their
    raise is sent again."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    drivers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.reliability._signal_rounds", str(tmp_path / f"d{i}"), str(ROUNDS), str(i)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for i in range(DRIVERS)
    ]
    rounds: list[dict] = []
    for d in drivers:
        out, err = d.communicate(timeout=1500)
        assert d.returncode == 0, f"driver exit {d.returncode}:\n{out[-3000:]}\n{err[-3000:]}"
        rounds += [json.loads(line) for line in out.splitlines()]
    assert len(rounds) == DRIVERS * (ROUNDS + 1)
    for r in rounds:
        code, line = EXPECTED[signal.Signals(r["signal"])]
        assert r["sent"] is not None, r  # the run was still going when its signal came
        assert (r["code"], r["last_line"], r["traceback"]) == (code, line, False), r
        assert r["ended"] - r["sent"] < 60 and r["running"] == 0 and r["pending_blobs"] == 0, r
        assert sorted(r["retries"]) == sorted(r["stopped_trials"]), r  # each stopped trial is queued once again
    phases = {"synthesis": 0, "trials": 0}
    for r in rounds:
        phases["trials" if r["complete"] or r["stopped_trials"] else "synthesis"] += 1
    assert min(phases.values()) >= 20, phases  # the signals landed before and during the trials
    assert max(r["retried_raises"] for r in rounds) >= 1  # some raises were swallowed, sent again, and still stopped
