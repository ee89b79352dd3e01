"""Many workers on one PostgreSQL study, simulated on this machine with trivial trials (tiny model, 0 FR steps).

    python -m benchmarks.bench_many_workers [--workers 8,16,32,64] [--real 8,16] [--grow 0,1000,10000]

Starts its own throwaway PostgreSQL server on 127.0.0.1 (stock ``max_connections = 100``, no fsync) and stops it.

- scale: N worker processes share one study of ``--trials-per-worker`` x N trials. "fork" workers run the real
  worker loop (``search.work``: claim, stale-trial reaps, sampling, tell, heartbeats) in processes forked from
  this one after it imported torch, so 64 of them fit in memory; "real" workers are ``frandi worker``
  processes, each importing torch itself. Per run: trials per second while every worker was running, the
  frandi connections PostgreSQL held (pg_stat_activity, peak and mean), the workers' summed PSS, and the
  checks: exactly n_trials COMPLETE, no policy twice, every worker exited 0.
- growth: at each study size of ``--grow`` (the study filled with COMPLETE trials between sizes), ``--grow-workers``
  fork workers run ``--grow-trials`` more: the time a worker spends per trial (claim to claim, median), the
  server's CPU per trial and the time from launch to a worker's first trial, so a cost that grows with the
  study shows.

Bounded: each run is stopped after ``--timeout`` s. The load average is printed beside each measurement.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import optuna
import torch._dynamo  # noqa: F401  (imported by the first Adam; here once, so forked workers share it)
from optuna.trial import FrozenTrial, TrialState

from search import TrialRecord, load_config, open_for, open_study, prepare, work
from tests.conftest_pg import PgServer, start_pg_server
from tests.tiny_study import make_weights, study_text

FRANDI = [sys.executable, "-m", "search.cli"]


def write_study(folder: Path, url: str, n_trials: int, sampler: str) -> Path:
    """A tiny study with trivial trials (0 FR steps) and the default heartbeat settings (10 s, grace 30 s)."""
    make_weights(folder / "tiny.pt")
    path = folder / "study.toml"
    text = study_text(name="many", url=url, sampler=sampler, n_trials=n_trials, baselines="[]", steps=0,
                      heartbeat_interval=10, grace_period=30)  # fmt: skip
    path.write_text(text)
    return path


def _prepare(folder: Path, url: str, n_trials: int, sampler: str) -> None:
    """Write the study and its weights, create the study and its batches: run in a spawned process, so that
    this one runs no torch op before it forks workers."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_config(write_study(folder, url, n_trials, sampler))
    with open_for(cfg) as st:
        prepare(cfg, st, progress=False)


def _prepared(folder: Path, url: str, n_trials: int, sampler: str) -> Path:
    """The study file, once _prepare has run in a spawned process."""
    spawn = mp.get_context("spawn").Process(target=_prepare, args=(folder, url, n_trials, sampler))
    spawn.start()
    spawn.join()
    if spawn.exitcode != 0:
        raise SystemExit(f"preparing the study failed (exit {spawn.exitcode})")
    return folder / "study.toml"


def _forked_worker(path: Path, index: int, log: Path) -> None:
    """Run search.work as `frandi worker` does; an error is one line in ``log`` and exit code 1."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_config(path)
    try:
        with open_for(cfg, mode="write") as st:
            work(cfg, st, worker_index=index, threads=1)
    except Exception as e:  # noqa: BLE001 - counted and shown by the benchmark
        with log.open("a") as f:
            f.write(f"fork worker {index}: error: {str(e).splitlines()[0]}\n")
        raise SystemExit(1) from None


def _pss_mib(pid: int) -> float:
    """Proportional set size of ``pid``: its private pages plus its share of shared ones."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _server_cpu_s(server: PgServer) -> float:
    """CPU seconds used so far by the PostgreSQL server: its live processes, plus the backends it reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    postmaster = int((server.datadir / "postmaster.pid").read_text().split()[0])
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(stat.parent.name), int(fields[1])
        if pid == postmaster:
            total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
        elif ppid == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Watch:
    """Samples the study database's frandi connections, the workers' PSS and free memory while a run lasts.

    Connects before the workers start, so that a server full of their connections cannot lock it out.
    """

    QUERY = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'frandi' AND datname = %s"

    def __init__(self, server: PgServer, database: str) -> None:
        import psycopg

        dsn = f"host=127.0.0.1 port={server.port} user={server.user} dbname=postgres"
        self._conn = psycopg.connect(dsn, autocommit=True, application_name="bench")
        self.database = database
        self.pids: list[int] = []
        self.connections: list[int] = []
        self.pss = 0.0
        self.min_available = float("inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(0.25):
            row = self._conn.execute(self.QUERY, (self.database,)).fetchone()
            self.connections.append(int(row[0]) if row else 0)
            if tick % 8 == 0:  # every 2 s
                self.pss = max(self.pss, sum(_pss_mib(p) for p in self.pids))
                self.min_available = min(self.min_available, _mem_available_mib())
            tick += 1

    def start(self, pids: list[int]) -> None:
        self.pids = pids
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()


def _steady_rate(trials: list[FrozenTrial]) -> float:
    """Trials finished per second while every worker was running: from the last worker's first start to the
    first worker's last finish (start-up and draining excluded)."""
    by_worker: dict[str, list[FrozenTrial]] = defaultdict(list)
    for t in trials:
        by_worker[str(TrialRecord.from_trial(t).worker)].append(t)
    start = max(min(t.datetime_start for t in ts if t.datetime_start) for ts in by_worker.values())
    end = min(max(t.datetime_complete for t in ts if t.datetime_complete) for ts in by_worker.values())
    span = (end - start).total_seconds()
    done = [t for t in trials if t.datetime_complete and start <= t.datetime_complete <= end]
    return len(done) / span if span > 0 else float("nan")


def _trials(path: Path) -> list[FrozenTrial]:
    cfg = load_config(path)
    with open_for(cfg, mode="read") as st:
        return open_study(cfg, st).get_trials()


def _spawn(mode: str, path: Path, n: int, log: Path) -> list:
    """Start ``n`` workers: forked processes running ``search.work``, or ``frandi worker`` processes."""
    if mode == "fork":
        ctx = mp.get_context("fork")
        procs = [ctx.Process(target=_forked_worker, args=(path, i, log)) for i in range(n)]
        for p in procs:
            p.start()
        return procs
    with log.open("a") as err:
        return [subprocess.Popen([*FRANDI, "worker", str(path), "--threads", "1"], stdout=subprocess.DEVNULL,
                                 stderr=err) for _ in range(n)]  # fmt: skip


def _wait(procs: list, deadline: float) -> list[int | None]:
    """Exit codes; workers still running at ``deadline`` are terminated (their code is None)."""
    codes: list[int | None] = []
    for p in procs:
        left = max(deadline - time.monotonic(), 0)
        if isinstance(p, subprocess.Popen):
            try:
                codes.append(p.wait(timeout=left))
            except subprocess.TimeoutExpired:
                p.terminate()
                p.wait()
                codes.append(None)
        else:
            p.join(timeout=left)
            if p.is_alive():
                p.terminate()
                p.join()
                codes.append(None)
            else:
                codes.append(p.exitcode)
    return codes


def scale_run(server: PgServer, tmp: Path, mode: str, n: int, per_worker: int, timeout: float) -> dict:
    """One study of ``per_worker`` x ``n`` trials run by ``n`` workers; the figures and checks of the run."""
    database = f"w{mode}{n}"
    url = server.create_database(database)
    folder = tmp / database
    folder.mkdir()
    n_trials = per_worker * n
    path = _prepared(folder, url, n_trials, "random")
    t0, cpu0, clients0 = time.monotonic(), _server_cpu_s(server), os.times()
    watch = Watch(server, database)
    try:
        procs = _spawn(mode, path, n, folder / "workers.log")
        watch.start([p.pid for p in procs])
        codes = _wait(procs, t0 + timeout)
    finally:
        watch.stop()
    wall = time.monotonic() - t0
    server_cpu = _server_cpu_s(server) - cpu0
    clients = os.times()
    client_cpu = clients.children_user + clients.children_system - clients0.children_user - clients0.children_system
    trials = _trials(path)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    policies = [TrialRecord.from_trial(t).policy.to_json() for t in complete]
    log = folder / "workers.log"
    errors = [line for line in log.read_text().splitlines() if "error:" in line] if log.exists() else []
    return {
        "mode": mode,
        "workers": n,
        "n_trials": n_trials,
        "complete": len(complete),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "duplicates": len(policies) - len(set(policies)),
        "exit_ok": sum(c == 0 for c in codes),
        "rate": _steady_rate(complete) if complete else float("nan"),
        "wall": wall,
        "server_ms": 1000 * server_cpu / max(len(complete), 1),
        "client_ms": 1000 * client_cpu / max(len(complete), 1),
        "conn_peak": max(watch.connections, default=0),
        "conn_mean": statistics.fmean(watch.connections) if watch.connections else 0.0,
        "pss": watch.pss,
        "available": watch.min_available,
        "load": os.getloadavg()[0],
        "errors": len(errors),
        "first_error": errors[0][:200] if errors else "",
    }


def _random_params(template: FrozenTrial, rng: random.Random) -> dict[str, object]:
    """Parameters drawn at random from the template trial's distributions (a policy like a sampled one)."""
    params: dict[str, object] = {}
    for name, dist in template.distributions.items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            params[name] = rng.choice(dist.choices)
        elif isinstance(dist, optuna.distributions.FloatDistribution) and dist.step:
            params[name] = dist.low + dist.step * rng.randint(0, round((dist.high - dist.low) / dist.step))
        else:
            raise TypeError(f"no random draw for {name}: {dist}")
    return params


def _fill(path: Path, count: int, seed: int) -> None:
    """Add ``count`` COMPLETE trials shaped like the study's first one (its values, user attributes, random
    parameters), through Optuna's API: a quick way to a large study."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_config(path)
    rng = random.Random(seed)
    with open_for(cfg, mode="write") as st:
        study = open_study(cfg, st)
        template = study.get_trials(states=(TrialState.COMPLETE,))[0]
        for _ in range(count):
            study.add_trial(optuna.trial.create_trial(
                values=template.values, params=_random_params(template, rng), distributions=template.distributions,
                user_attrs=template.user_attrs))  # fmt: skip


def growth_run(server: PgServer, tmp: Path, n: int, sizes: list[int], per_size: int, timeout: float) -> list[dict]:
    """For each study size, ``n`` fork workers run ``per_size`` more trials; a worker's median seconds from one
    trial's start to its next one's (claim, stale check, sampling, trivial trial, tell) and the median seconds
    from launch to a worker's first trial (it loads the whole study once). Between sizes the study is filled
    with COMPLETE trials by 2 processes (_fill)."""
    url = server.create_database("growth")
    folder = tmp / "growth"
    folder.mkdir()
    rows = []
    complete = 0
    for size in sizes:
        path = _prepared(folder, url, max(size, complete) + per_size, "random")
        if size > complete:
            ctx = mp.get_context("fork")
            parts = _split(size - complete, 2)
            fillers = [ctx.Process(target=_fill, args=(path, part, i)) for i, part in enumerate(parts)]
            for f in fillers:
                f.start()
            _wait(fillers, time.monotonic() + timeout)
            path = _prepared(folder, url, size + per_size, "random")  # top the trials to start up again
        launched, cpu0 = datetime.now(), _server_cpu_s(server)
        _wait(_spawn("fork", path, n, folder / "workers.log"), time.monotonic() + timeout)
        server_cpu = _server_cpu_s(server) - cpu0
        trials = [t for t in _trials(path) if t.state == TrialState.COMPLETE]
        complete = len(trials)
        mine = [t for t in trials if t.datetime_start and t.datetime_start >= launched]
        by_worker: dict[str, list[FrozenTrial]] = defaultdict(list)
        for t in mine:
            by_worker[str(TrialRecord.from_trial(t).worker)].append(t)
        cycles, firsts = [], []
        for ts in by_worker.values():
            ts.sort(key=lambda t: t.number)
            firsts.append((ts[0].datetime_start - launched).total_seconds())
            cycles += [(b.datetime_start - a.datetime_start).total_seconds() for a, b in zip(ts, ts[1:], strict=False)]
        rows.append({"size": complete - len(mine), "trials": len(mine), "cycle": statistics.median(cycles),
                     "server_ms": 1000 * server_cpu / max(len(mine), 1), "start": statistics.median(firsts),
                     "load": os.getloadavg()[0]})  # fmt: skip
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


COLUMNS = [  # (header, key, format) of the scale table
    ("mode", "mode", "s"), ("workers", "workers", "d"), ("trials", "n_trials", "d"), ("complete", "complete", "d"),
    ("failed", "failed", "d"), ("dup", "duplicates", "d"), ("exit 0", "exit_ok", "d"), ("trials/s", "rate", ".1f"),
    ("wall s", "wall", ".0f"), ("server ms", "server_ms", ".1f"), ("worker ms", "client_ms", ".0f"),
    ("conn peak", "conn_peak", "d"), ("conn mean", "conn_mean", ".1f"), ("PSS MiB", "pss", ".0f"),
    ("free MiB", "available", ".0f"), ("load", "load", ".1f"),
]  # fmt: skip


def _print_scale(rows: list[dict]) -> None:
    print(" ".join(f"{h:>{len(h)}}" for h, _, _ in COLUMNS))
    for r in rows:
        print(" ".join(f"{r[k]:>{len(h)}{f}}" for h, k, f in COLUMNS))
        if r["first_error"]:
            print(f"      {r['errors']} worker error(s), the first: {r['first_error']}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="8,16,32,64", help="fork-worker counts to run (comma-separated)")
    p.add_argument("--real", default="8,16", help="frandi worker process counts to run ('' for none)")
    p.add_argument("--trials-per-worker", type=int, default=20)
    p.add_argument("--grow", default="0,1000,10000", help="study sizes to measure the per-trial cost at ('' to skip)")
    p.add_argument("--grow-workers", type=int, default=8)
    p.add_argument("--grow-trials", type=int, default=160, help="trials run at each study size")
    p.add_argument("--max-connections", type=int, default=100, help="the server's max_connections (stock: 100)")
    p.add_argument("--timeout", type=float, default=900, help="seconds before a run's workers are stopped")
    p.add_argument("--json", help="also write the figures to this JSON file")
    a = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    counts = [("fork", int(n)) for n in a.workers.split(",") if n] + [("real", int(n)) for n in a.real.split(",") if n]
    server = start_pg_server({"max_connections": str(a.max_connections)})
    figures: dict[str, object] = {"max_connections": a.max_connections, "cpus": os.cpu_count()}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows = []
            for mode, n in counts:
                rows.append(scale_run(server, Path(tmp), mode, n, a.trials_per_worker, a.timeout))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            print(f"PostgreSQL {a.max_connections} max_connections, {os.cpu_count()} cores; trials/s while all "
                  "workers ran; server / worker ms = CPU per trial of the PostgreSQL server / of the workers (start-up "
                  "included); PSS summed over the workers; free = lowest MemAvailable; load = 1-min average")
            _print_scale(rows)
            figures["scale"] = rows
            if a.grow:
                sizes = [int(n) for n in a.grow.split(",")]
                grow = growth_run(server, Path(tmp), a.grow_workers, sizes, a.grow_trials, a.timeout)
                print(f"\nstudy growth: {a.grow_workers} fork workers run {a.grow_trials} trials on a study of each "
                      "size (random sampler); median seconds")
                print(f"{'study size':>10} {'trials run':>10} {'s per trial (claim to claim)':>28} "
                      f"{'server ms per trial':>19} {'s launch to first trial':>23} {'load':>5}")
                for r in grow:
                    print(f"{r['size']:>10} {r['trials']:>10} {r['cycle']:>28.3f} {r['server_ms']:>19.1f} "
                          f"{r['start']:>23.1f} {r['load']:>5.1f}")
                figures["growth"] = grow
    finally:
        server.destroy()
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
