"""The Fashion-MNIST reference models the experiments use: train each (with studies.train), record accuracy and
wall time.

python -m studies.experiments.references               # both, one after the other
python -m studies.experiments.references --only resnet # 5.4 min measured (separable: 8.2), 1 thread, 2026-11-29
Checkpoints go to runs/models/ (gitignored); the study files in this folder point at them.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from frandi_core.data import FASHION_ROOT
from studies.train import train

from ._common import RESULTS


@dataclass(frozen=True)
class Reference:
    """A reference model: architecture (as studies.train names it), its kwargs, training epochs."""

    arch: str
    kwargs: dict[str, Any]
    epochs: int


MODELS = {
    "resnet": Reference("resnet", {"widths": [16, 32, 64]}, 5),
    "separable": Reference("separable", {"widths": [32, 64, 128]}, 6),
}
LR, BATCH_SIZE = 0.1, 128  # SGD + Nesterov, one-cycle schedule, weight decay 5e-4 (studies.train.train)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(MODELS), action="append", help="train only this model")
    p.add_argument("--out-dir", default="runs/models")
    p.add_argument("--root", help=f"{FASHION_ROOT} (default: that Debian folder)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    rows = []
    for name in a.only or sorted(MODELS):
        m = MODELS[name]
        t0 = time.perf_counter()
        model, acc = train(
            m.arch,
            "fashion",
            kwargs=m.kwargs,
            epochs=m.epochs,
            lr=LR,
            batch_size=BATCH_SIZE,
            seed=a.seed,
            root=a.root,
            threads=a.threads,
        )
        wall = time.perf_counter() - t0
        out = Path(a.out_dir) / f"{name}_fashion.pt"
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out)
        row = {
            "model": name,
            "kwargs": json.dumps(m.kwargs),
            "epochs": m.epochs,
            "seed": a.seed,
            "threads": a.threads,
            "test_accuracy": round(acc, 2),
            "train_seconds": round(wall),
            "out": str(out),
        }
        print(row, flush=True)
        (RESULTS / f"reference_{name}.json").write_text(json.dumps(row, indent=2) + "\n")
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
