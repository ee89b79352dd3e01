"""Rounds of `frandi search` in one process, each stopped by SIGTERM or Ctrl-C at a random moment.

``python -m tests.reliability._signal_rounds FOLDER ROUNDS SEED`` prints one JSON line per round (and one for
a first, warm-up round). Each round is a new study in one SQLite file (so synthesis runs again), on a model whose
forward leaves garbage behind that re-imports a module in ``__del__``: signals land in imports, ``__del__``,
synthesis, FR, claims and tells. A signal is sent by a thread, a random delay after the command installed its
handlers, as any other process would (the kernel picks the thread; Python runs the handler in the main thread).
A round that has not ended 60 s after its signal prints what it was doing and exits 3.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import sys
import threading
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import optuna
from optuna.trial import TrialState

import search._signals as signals
from search.cli import main
from storage import open_storage
from tests import blob_rows
from tests.reliability._models import save_littered
from tests.tiny_study import study_text

retried_from = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
DELAY = (0.0, 1.4)  # seconds after the round starts; a round runs for ever unless stopped
WARM_UP = 4.0  # the first round's delay: past synthesis and a few trials
PATIENCE = 60.0


def _round(folder: Path, k: int, rng: random.Random, retried: list[int], delay: float | None) -> dict[str, object]:
    url = f"sqlite:///{folder / 'rounds.db'}"
    study = folder / f"r{k}.toml"
    text = study_text(
        name=f"r{k}", url=url, architecture="tests.reliability._models:littered", kwargs="{}",
        weights="littered.pt", n_trials=100_000, iterations=20 + k % 7, steps=5, baselines="[0.5]",
        heartbeat_interval=1, grace_period=3,
    )  # fmt: skip
    study.write_text(text.replace("seed = 0", f"seed = {k}"))
    sig = rng.choice([signal.SIGTERM, signal.SIGINT])
    delay = rng.uniform(*DELAY) if delay is None else delay
    sent: list[float] = []
    done = threading.Event()
    t0 = time.monotonic()

    def send() -> None:  # ``delay`` after the command installed its handlers (before, the signal kills it outright)
        while signal.getsignal(signal.SIGTERM) is not signals._on_signal:
            time.sleep(0.001)
        if done.wait(delay):
            return  # the command ended by itself (an error): nothing to stop
        sent.append(time.monotonic() - t0)
        os.kill(os.getpid(), sig)

    def give_up() -> None:
        stacks = "".join(traceback.format_stack(sys._current_frames()[threading.main_thread().ident or 0]))
        print(json.dumps({"round": k, "hung": True, "signal": int(sig), "stack": stacks}), flush=True)
        os._exit(3)

    timer = threading.Thread(target=send)
    watchdog = threading.Timer(10 + delay + PATIENCE, give_up)
    watchdog.daemon = timer.daemon = True
    err, out = io.StringIO(), io.StringIO()
    timer.start()
    watchdog.start()
    try:
        with redirect_stderr(err), redirect_stdout(out):
            code = main(["search", str(study), "--no-progress"])
    finally:
        done.set()
        watchdog.cancel()
    timer.join()
    with open_storage(url, heartbeat_interval=None) as st:
        try:
            trials = optuna.load_study(study_name=f"r{k}", storage=st.optuna).get_trials(deepcopy=False)
        except KeyError:
            trials = []
    return {
        "round": k,
        "signal": int(sig),
        "delay": round(delay, 3),
        "sent": sent[0] if sent else None,
        "ended": round(time.monotonic() - t0, 3),
        "code": code,
        "last_line": err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "",
        "traceback": err.getvalue()[-4000:] if "Traceback" in err.getvalue() else False,
        "running": sum(t.state == TrialState.RUNNING for t in trials),
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "stopped_trials": [t.number for t in trials if t.state == TrialState.FAIL and _stopped(t)],
        "retries": [retried_from(t) for t in trials if t.state == TrialState.WAITING and retried_from(t) is not None],
        "pending_blobs": blob_rows.states(url).count("pending"),
        "retried_raises": retried[0],
    }


def _stopped(t: optuna.trial.FrozenTrial) -> bool:
    return str(t.user_attrs.get("fail_reason", "")).startswith(("KeyboardInterrupt", "Terminated"))


def run(folder: Path, rounds: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_littered(folder / "littered.pt")
    rng = random.Random(seed)
    retried = [0]
    on_unraisable = signals._on_unraisable

    def counting(unraisable: object) -> None:  # how often a raise was swallowed and sent again
        if isinstance(getattr(unraisable, "exc_value", None), KeyboardInterrupt):
            retried[0] += 1
        on_unraisable(unraisable)

    signals._on_unraisable = counting  # type: ignore[assignment]
    # round 0 first imports what the command imports lazily (torch._dynamo, sympy, ...), stopped late: an import cut
    # in two by a stop leaves half a package behind for the next round in this process, as it never does in a
    # command, which exits
    for k in range(rounds + 1):
        print(json.dumps(_round(folder, k, rng, retried, WARM_UP if k == 0 else None)), flush=True)


if __name__ == "__main__":
    run(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
