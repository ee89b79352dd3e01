"""What a user opens on a 10,000-trial study: `frandi pareto`, `frandi status` and `frandi dashboard`.

    python -m benchmarks.bench_big_study [--trials 10000] [--db /tmp/big.db]

Builds (once; an existing ``--db`` is reused) the quickstart study with ``--trials`` COMPLETE trials through
Optuna's API: policies drawn by a random sampler from the quickstart's real search space, their real size, ratio,
density and BOPs, and a made-up OD that falls with the ratio (no trial is run). Then times, each as a user runs
it (a fresh process, imports included):

- ``frandi pareto`` and ``frandi status``: launch to exit (goal for pareto: < 5 s);
- ``frandi dashboard``: launch to the study page served with what its Pareto plot draws from: the page itself,
  ``/api/studies`` and ``/api/studies/ID`` (every trial and the front; goal < 10 s), then the same page again on
  the warm server.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
from optuna.trial import TrialState

from frandi_core import bops, compressible_layers, layer_macs, model_size
from search import TrialRecord, check_model, create_or_resume, load_config, open_for, replace

FRANDI = [sys.executable, "-m", "search.cli"]  # the frandi command of this interpreter
STUDY = Path("studies/quickstart.toml")


def build(url: str, n: int, seed: int = 0) -> None:
    """The quickstart study holding ``n`` COMPLETE trials (added in batches, through Optuna's public API)."""
    cfg = replace(load_config(STUDY), "study", n_trials=n)
    teacher, space = check_model(cfg)
    macs = layer_macs(teacher, cfg.model.input_shape)
    assert compressible_layers(teacher)
    rng = random.Random(seed)
    scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))  # in memory: draws policies
    with open_for(cfg, url) as st:
        study = create_or_resume(cfg, st, space)
        have = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
        batch: list[optuna.trial.FrozenTrial] = []
        for i in range(have, n):
            trial = scratch.ask()
            policy = space.sample(trial)
            size = model_size(teacher, policy)
            od = max(0.02, 0.9 / size.ratio + rng.gauss(0, 0.03))
            attrs = TrialRecord(
                policy, od, od * 2.5, size.bits, size.ratio, size.density, bops=bops(macs, policy),
                seconds={"compress": 0.02, "recover": 1.2, "total": 1.3}, threads=1, worker=f"bench:{i % 8}",
            ).to_attrs()  # fmt: skip
            batch.append(
                optuna.trial.create_trial(
                    params=trial.params, distributions=trial.distributions, values=[od, size.bits / 8192],
                    user_attrs=attrs,
                )  # fmt: skip
            )
            if len(batch) == 500 or i == n - 1:
                study.add_trials(batch)
                batch = []
                print(f"  built {i + 1} trials", file=sys.stderr, flush=True)
        st.set_counter(f"frandi:to-start:{cfg.study.name}", 0)


def timed(args: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(FRANDI + args, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - t0, out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=300) as r:
        return bytes(r.read())


def dashboard(url: str) -> tuple[float, float, int]:
    """Seconds from launching `frandi dashboard` to the study page's data served, the same page again (warm),
    and how many trials it served."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        FRANDI + ["dashboard", str(STUDY), "--storage", url, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while True:
            try:
                _get(base + "/api/meta")
                break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(f"frandi dashboard exited with {proc.returncode}") from None
                time.sleep(0.05)

        def page() -> int:
            _get(base + "/dashboard")
            (summary,) = json.loads(_get(base + "/api/studies"))["study_summaries"]
            detail = json.loads(_get(f"{base}/api/studies/{summary['study_id']}"))
            assert detail["best_trials"], "no Pareto front served"
            return len(detail["trials"])

        served = page()
        cold = time.perf_counter() - t0
        t1 = time.perf_counter()
        page()
        return cold, time.perf_counter() - t1, served
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=10_000)
    p.add_argument("--db", help="SQLite file to build (or reuse); default: a temporary one")
    a = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(a.db or Path(tmp) / 'big.db').resolve()}"
        t0 = time.perf_counter()
        build(url, a.trials)
        print(f"study of {a.trials} trials ready in {time.perf_counter() - t0:.0f} s ({url})")
        seconds, _ = timed(["status", str(STUDY), "--storage", url])
        print(f"frandi status: {seconds:.2f} s")
        seconds, out = timed(["pareto", str(STUDY), "--storage", url])
        print(f"frandi pareto: {seconds:.2f} s ({len(out.splitlines()) - 1} front trials; goal < 5 s)")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import search"], check=True)
        print(f"  of which 'import search' (torch, optuna) alone: {time.perf_counter() - t0:.2f} s")
        cold, warm, served = dashboard(url)
        print(f"frandi dashboard: study page with its Pareto data ({served} trials) {cold:.2f} s from launch "
              f"(goal < 10 s); again, warm: {warm:.2f} s")


if __name__ == "__main__":
    main()
