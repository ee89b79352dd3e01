"""Per-trial cost on the quickstart study, against its floor, once the worker is warm.

    python -m benchmarks.bench_trial [--trials 20] [--threads 1] [--study-size 400] [--compile]

Floor = what a bare loop needs for the same work in the same run: recovery steps x (student forward + backward
+ Adam step) on the same mini-batches, plus one OD forward on the held-out batch. Trial = sampling (Optuna TPE),
compression, OD before recovery, recovery, OD, and the storage round trips (SQLite), in a study of
--study-size trials (the per-trial overhead must not grow with the study). --compile: the FR loss through
torch.compile (its compile time, paid once per worker, is the warm-up trial's and is printed apart).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import optuna
import torch

from frandi_core import compress
from search import TrialRecord, TrialRunner, claim, create_or_resume, load_config, open_for, replace, run_trial


def floor(runner: TrialRunner, student: torch.nn.Module) -> float:
    """A bare loop: steps x (forward, MSE to the cached output target, backward, Adam) + one OD forward."""
    cfg = runner.cfg.recovery
    x = runner.targets.inputs
    target = runner.targets.features["output"]
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr, fused=True)  # fused, as recovery runs it on CPU
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(cfg.steps):
        idx = torch.randperm(len(x), generator=gen)[: cfg.batch_size]
        loss = (student(x[idx]) - target[idx]).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        student(runner.heldout)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default="studies/quickstart.toml")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--study-size", type=int, default=400)
    p.add_argument("--compile", action="store_true")
    a = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(a.study)
        size = max(a.study_size, a.trials + 1)
        cfg = replace(cfg, "study", n_trials=size, storage=f"sqlite:///{Path(tmp) / 'bench.db'}")
        cfg = replace(cfg, "run", compile=a.compile)
        with open_for(cfg) as st:
            runner = TrialRunner(cfg, st)
            study = create_or_resume(cfg, st, runner.space)
            total = floors = 0.0
            parts: dict[str, float] = {}
            for i in range(a.trials + 1):
                tid = claim(study, st)
                assert tid is not None
                t0 = time.perf_counter()
                run_trial(study, runner, tid, cfg, "bench")
                wall = time.perf_counter() - t0
                t = st.optuna.get_trial(tid)
                student = compress(runner.teacher, TrialRecord.from_trial(t).policy)
                for q in student.parameters():
                    q.requires_grad_(True)
                f = floor(runner, student)
                if i == 0:
                    warm_up = wall
                    continue  # warm-up
                total += wall
                floors += f
                for k in ("compress", "od_before", "recover", "od", "total"):
                    parts[k] = parts.get(k, 0.0) + TrialRecord.from_trial(t).seconds[k]
            n = a.trials
            other = total - parts["total"]
            print(f"{cfg.study.name}: {n} warm trials of a {size}-trial study, {a.threads} thread(s), recovery "
                  f"{cfg.recovery.steps} steps x batch {cfg.recovery.batch_size}, FR loss compiled: {a.compile}")
            print(f"  {'warm-up trial (not counted)':<28} {warm_up * 1e3:8.1f} ms")
            for k in ("compress", "od_before", "recover", "od"):
                print(f"  {k:<28} {parts[k] / n * 1e3:8.1f} ms")
            print(f"  {'sampling + storage':<28} {other / n * 1e3:8.1f} ms")
            print(f"  {'trial total':<28} {total / n * 1e3:8.1f} ms")
            print(f"  {'floor (bare loop)':<28} {floors / n * 1e3:8.1f} ms")
            print(f"  ratio trial / floor: {total / floors:.2f}x   (goal <= 1.10x)")


if __name__ == "__main__":
    main()
