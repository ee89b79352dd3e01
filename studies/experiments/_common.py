"""What every experiment shares: the models it runs on, one Bench per model, fine-tuning, outputs.

A Bench wraps the search's own TrialRunner (teacher, cached synthetic batches, teacher targets) so the
experiments measure exactly what a study trial computes, then adds what the search never has: labels.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.utils.data import TensorDataset

from frandi_core import LayerSetting, Policy, channel_groups, compress, compressible_layers, layer_macs, model_size
from frandi_core.data import FASHION_ROOT, accuracy, labeled_data
from search import StudyConfig, TrialResult, TrialRunner, load_config, open_for, replace
from storage import Storage

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


@dataclass(frozen=True)
class Case:
    """A model the experiments run on: its study file (model, synthetic data, FR settings) and its data."""

    study: str
    data: str


CASES = {
    "resnet_fashion": Case("resnet_fashion.toml", "fashion"),
    "separable_fashion": Case("separable_fashion.toml", "fashion"),
    "digits": Case("digits.toml", "digits"),
}
QUICK_SYNTH = {"batch_size": 16, "heldout_size": 16, "iterations": 5}  # --quick: smoke-test sizes
QUICK_STEPS = 3


DEFAULT_MODELS = ("resnet_fashion", "separable_fashion")


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every experiment takes."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=sorted(CASES), default=list(DEFAULT_MODELS))
    p.add_argument("--quick", action="store_true", help="tiny setting (digits, few policies, few steps): a smoke test")
    p.add_argument("--steps", type=int, help="recovery steps (default: the study file's [recovery] steps)")
    p.add_argument("--limit", type=int, help="evaluate accuracy on the first N test samples only")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the committed results used 1)")
    p.add_argument("--out", default=str(RESULTS), help="folder for the CSV, PNG and markdown")
    p.add_argument("--storage", help="database URL overriding the study file's (the synthetic-batch cache)")
    p.add_argument("--root", help=f"{FASHION_ROOT} (default: that Debian folder)")
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, then apply what every experiment shares: --quick means digits, threads, the output folder."""
    a = p.parse_args(argv)
    a.argv = list(argv) if argv is not None else sys.argv[1:]
    a.suffix = f"_steps{a.steps}" if a.steps is not None else ""  # a different budget gets its own files
    if a.quick:
        a.models = ["digits"]
    torch.set_num_threads(a.threads)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    return a


class Bench:
    """One model under test: the study's TrialRunner plus real labeled data for accuracy and fine-tuning."""

    def __init__(self, name: str, storage: Storage, cfg: StudyConfig, *, root: str | None, limit: int | None) -> None:
        self.name = name
        self.cfg = cfg
        self.case = CASES[name]
        self.root = root
        self.runner = TrialRunner(cfg, storage)
        self.teacher = self.runner.teacher
        test = labeled_data(self.case.data, "test", root)
        if limit is not None and limit < len(test):
            test = TensorDataset(*(t[:limit] for t in test.tensors))
        self.test = test
        self._train: TensorDataset | None = None
        self.original = self.accuracy(self.teacher)

    @property
    def train(self) -> TensorDataset:
        if self._train is None:
            self._train = labeled_data(self.case.data, "train", self.root)
        return self._train

    def accuracy(self, model: nn.Module) -> float:
        return accuracy(model, self.test)

    def uniform(self, sparsity: float = 0.0, bits: int | None = None) -> Policy:
        return Policy.uniform(self.teacher, sparsity, bits)

    def compressed(self, policy: Policy, calibration: str | None = None) -> nn.Module:
        """The compressed model with no recovery at all; activation ranges (if the policy quantizes activations)
        from the synthetic recovery batch by ``calibration`` (default: the study's)."""
        method = calibration or self.cfg.recovery.calibration
        return compress(self.teacher, policy, calibration=self.runner.targets.inputs, method=method)

    def recovered(self, policy: Policy) -> tuple[nn.Module, TrialResult]:
        """Compress and recover with Feature Regression on the synthetic batch, exactly as a trial does."""
        return self.runner.student(policy)

    def finetuned(self, policy: Policy, *, seed: int = 0) -> nn.Module:
        """Compress, then fine-tune on the real labeled training set with cross-entropy.

        Same budget as FR: the study's recovery steps, batch size, Adam learning rate, cosine schedule and
        frozen BN statistics (eval mode); only the data (real, labeled) and the loss differ.
        """
        rc = self.cfg.recovery
        student = self.compressed(policy)
        params = list(student.parameters())
        for prm in params:
            prm.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=rc.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(rc.steps, 1))
        gen = torch.Generator().manual_seed(seed)
        x, y = self.train.tensors
        student.eval()
        for _ in range(rc.steps):
            idx = torch.randint(len(x), (rc.batch_size,), generator=gen)
            loss = F.cross_entropy(student(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        return student.eval()

    def for_ratio(self, ratio: float, bits: int | None = None) -> Policy:
        """The uniform policy (at ``bits``) whose compression ratio is ``ratio``: sparsity by bisection."""
        lo, hi = 0.0, 0.999
        if model_size(self.teacher, self.uniform(0.0, bits)).ratio >= ratio:
            return self.uniform(0.0, bits)
        for _ in range(40):
            mid = (lo + hi) / 2
            if model_size(self.teacher, self.uniform(mid, bits)).ratio < ratio:
                lo = mid
            else:
                hi = mid
        policy = self.uniform(round(hi, 4), bits)
        reached = model_size(self.teacher, policy).ratio
        if reached < ratio * 0.999:
            raise ValueError(
                f"{self.name}: no uniform sparsity at {bits or 32} bits reaches ratio {ratio} ({reached:.2f})"
            )
        return policy

    def describe(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "model": self.name,
            "study file": f"studies/experiments/{self.case.study}",
            "original accuracy": f"{self.original:.2f}% on {len(self.test)} {self.case.data} test samples",
            "synthetic": f"{c.synthetic.batch_size} recovery + {c.synthetic.heldout_size} held-out images, "
            f"{c.synthetic.iterations} iterations, seed {c.synthetic.seed} (held-out seed {c.synthetic.seed + 1}), "
            f"inputs {'kept in ' + str(list(c.synthetic.input_range)) if c.synthetic.input_range else 'unbounded'}",
            "recovery": f"{c.recovery.steps} steps, batch {c.recovery.batch_size}, Adam lr {c.recovery.lr}, "
            f"seed {c.recovery.seed}",
        }


def study_config(name: str, *, quick: bool, steps: int | None) -> StudyConfig:
    """The model's study file, shrunk for --quick, with --steps applied."""
    cfg = load_config(HERE / CASES[name].study)
    if quick:
        cfg = replace(cfg, "synthetic", **QUICK_SYNTH)
        cfg = replace(cfg, "recovery", steps=QUICK_STEPS)
    if steps is not None:
        cfg = replace(cfg, "recovery", steps=steps)
    return replace(cfg, "run", workers=1, threads=torch.get_num_threads())  # searches keep the experiment's threads


@contextmanager
def bench(name: str, args: argparse.Namespace) -> Iterator[Bench]:
    """Open the model's storage (its synthetic-batch cache) and build its Bench."""
    cfg = study_config(name, quick=args.quick, steps=args.steps)
    with open_for(cfg, args.storage) as st:
        t0 = time.perf_counter()
        b = Bench(name, st, cfg, root=args.root, limit=args.limit)
        print(
            f"[{name}] loaded model and synthetic batches in {time.perf_counter() - t0:.0f} s; "
            f"original accuracy {b.original:.2f}%",
            flush=True,
        )
        yield b


def each_model(
    args: argparse.Namespace,
    experiment: str,
    title: str,
    run: Callable[[Bench, Report], list[dict[str, Any]]],
    *,
    prefix: str = "",
) -> list[dict[str, Any]]:
    """Run one experiment on each of --models: ``run`` fills the model's Report (``title`` with {name} filled in)
    and returns its rows; the report is written after it. Returns every model's rows."""
    rows = []
    for name in args.models:
        with bench(name, args) as b:
            report = Report(experiment, prefix + name + args.suffix, title.format(name=name), Path(args.out), args.argv)
            rows += run(b, report)
            report.write()
    return rows


def channel_policy(
    model: nn.Module, shape: tuple[int, ...], fraction: float, bits: int | None, act_bits: int | None
) -> Policy:
    """``fraction`` of the output channels of every prunable group removed, the same bits on every layer."""
    prunable = {n for g in channel_groups(model, shape) for n in g}
    return Policy.from_dict({layer.name: LayerSetting(0.0, bits, act_bits, fraction if layer.name in prunable else 0.0)
                             for layer in compressible_layers(model)})


def fewer_macs(
    model: nn.Module, shape: tuple[int, ...], factor: float, *, multiple: int = 1, steps: int = 9
) -> tuple[float, float]:
    """The uniform channel fraction whose pruned student (each group keeping a multiple of ``multiple`` channels)
    has ``factor`` times fewer MACs (bisection), and the factor it reaches."""
    full = sum(layer_macs(model, shape).values())
    example = torch.zeros(1, *shape)

    def reached(fraction: float) -> float:
        policy = channel_policy(model, shape, fraction, None, None)
        student = compress(model, policy, calibration=example, channel_multiple=multiple)
        return full / sum(layer_macs(student, shape).values())

    lo, hi = 0.0, 0.9
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if reached(mid) < factor else (lo, mid)
    return round(hi, 4), reached(round(hi, 4))


def uniform_wa(model: nn.Module, w: int, a: int, *, edges: bool) -> Policy:
    """W``w``A``a`` on every compressible layer; ``edges``: the first and last (in module order) at W8A8."""
    names = [layer.name for layer in compressible_layers(model)]
    edge = {names[0], names[-1]} if edges else set()
    return Policy.from_dict({n: {"bits": 8 if n in edge else w, "act_bits": 8 if n in edge else a} for n in names})


def policy_summary(policy: Policy) -> dict[str, Any]:
    """Mean sparsity and the bit-widths a policy uses, for tables."""
    settings = [s for _, s in policy.layers]
    bits = sorted({s.bits or 32 for s in settings})
    return {
        "mean_sparsity": round(sum(s.sparsity for s in settings) / len(settings), 3),
        "bits": "/".join("fp32" if b == 32 else str(b) for b in bits),
    }


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    cols = list(columns or rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


@dataclass
class Report:
    """An experiment's markdown: title, what was run (seeds, settings), tables, and its wall time."""

    experiment: str  # the module: python -m studies.experiments.<experiment>
    model: str
    title: str
    out: Path
    argv: Sequence[str]
    module: str | None = None  # what runs it (default studies.experiments.<experiment>)
    start: float = field(default_factory=time.perf_counter)
    parts: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """Stem of this report's files: <experiment>_<model>."""
        return f"{self.experiment}_{self.model}"

    @property
    def png(self) -> Path:
        """Where this report's plot goes."""
        return self.out / f"{self.name}.png"

    def add(self, text: str) -> None:
        self.parts.append(text)

    def add_results(self, rows: list[dict[str, Any]]) -> None:
        """Write the results to ``<name>.csv`` and add their table, pointing at the plot and CSV of that name."""
        write_csv(self.out / f"{self.name}.csv", rows)
        plot = f"Plot: `{self.name}.png`, " if self.png.exists() else ""  # drawn before, or not at all
        self.add(f"{plot}CSV: `{self.name}.csv`.\n\n" + markdown_table(rows))

    def setup(self, b: Bench, **extra: Any) -> None:
        items = b.describe() | extra
        self.add("\n".join(f"- {k}: {v}" for k, v in items.items()))

    def write(self) -> Path:
        wall = time.perf_counter() - self.start
        cmd = " ".join(["python -m " + (self.module or f"studies.experiments.{self.experiment}"), *self.argv])
        footer = (
            f"Command: `{cmd}`. Wall time {wall / 60:.1f} min ({wall:.0f} s) on {platform.machine()} CPU, "
            f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}."
        )
        path = self.out / f"{self.name}.md"
        path.write_text("\n\n".join([f"# {self.title}", *self.parts, footer]) + "\n")
        (self.out / f"{self.name}.json").write_text(json.dumps({"wall_seconds": round(wall, 1), "command": cmd}) + "\n")
        print(f"{self.name}: {wall:.0f} s -> {path}", flush=True)
        return path


def figure(ncols: int, *, width: float = 4.2, height: float = 3.4) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, axes[0]


def finish(report: Report, fig: Any, ax: Any, title: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Title and legend on the plot, the plot saved, the rows added to the report; returns the rows."""
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    save(fig, report.png)
    report.add_results(rows)
    return rows


def save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
