"""Worker scaling, start-up and peak memory, on the quickstart study in a temporary SQLite database.

    python -m benchmarks.bench_workers [--trials 48]

- scaling: trials per minute with 2 workers (1 thread each) against 1 worker (1 thread), both measured from the
  first trial's start to the last trial's end (start-up excluded; it is measured separately);
- start-up: from launching `frandi worker` on a prepared study with a warm batch cache to its first trial starting;
- peak memory: the largest resident set of that `frandi worker` process (os.wait4 on it), and of a bare
  `python -c "import torch"` for comparison.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from search import load_config, open_for, open_study

FRANDI = [sys.executable, "-m", "search.cli"]  # the frandi command of this interpreter


def run(args: list[str]) -> None:
    subprocess.run(FRANDI + args, check=True, stdout=subprocess.DEVNULL)


def throughput(study_file: Path, url: str) -> tuple[float, int]:
    cfg = load_config(study_file)
    with open_for(cfg, url) as st:
        trials = [t for t in open_study(cfg, st).get_trials() if t.state.name == "COMPLETE"]
    start = min(t.datetime_start for t in trials if t.datetime_start)
    end = max(t.datetime_complete for t in trials if t.datetime_complete)
    return len(trials) / ((end - start).total_seconds() / 60), len(trials)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default="studies/quickstart.toml")
    p.add_argument("--trials", type=int, default=48)
    a = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = Path(a.study).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        rates = {}
        for workers in (1, 2):
            url = f"sqlite:///{tmp}/w{workers}.db"
            run(["search", str(study), "--storage", url, "--workers", str(workers), "--threads", "1",
                 "--n-trials", str(a.trials), "--no-progress"])
            rates[workers], n = throughput(study, url)
            print(f"{workers} worker(s) x 1 thread: {n} trials, {rates[workers]:.1f} trials/min")
        print(f"scaling 2 workers / 1 worker: {rates[2] / rates[1]:.2f}x   (goal >= 1.7x on 2 cores)")

        # start-up and memory of one `frandi worker` joining the (warm) study with 3 more trials to run
        url = f"sqlite:///{tmp}/w1.db"
        run(["search", str(study), "--storage", url, "--n-trials", str(a.trials), "--no-progress"])  # no-op
        cfg = load_config(study)
        with open_for(cfg, url) as st:
            s = open_study(cfg, st)
            for _ in range(3):
                s.enqueue_trial({})
        launched = dt.datetime.now()
        t0 = time.perf_counter()
        proc = subprocess.Popen(FRANDI + ["worker", str(study), "--storage", url, "--threads", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if status != 0:
            raise SystemExit(f"frandi worker failed (wait status {status})")
        proc.returncode = 0
        t0 = time.perf_counter()
        bare = subprocess.Popen([sys.executable, "-c", "import torch"])
        bare_usage = os.wait4(bare.pid, 0)[2]
        bare_wall = time.perf_counter() - t0
        bare.returncode = 0
        with open_for(cfg, url) as st:
            mine = [t for t in open_study(cfg, st).get_trials() if t.datetime_start and t.datetime_start >= launched]
        first = min(t.datetime_start for t in mine if t.datetime_start)
        print(f"start-up (launch -> first trial, warm cache): {(first - launched).total_seconds():.2f} s "
              f"(worker ran {len(mine)} trials in {wall:.1f} s; 'import torch' alone takes {bare_wall:.2f} s)")
        print(f"peak resident memory of a worker process: {usage.ru_maxrss / 1024:.0f} MiB "
              f"(python -c 'import torch' alone: {bare_usage.ru_maxrss / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
