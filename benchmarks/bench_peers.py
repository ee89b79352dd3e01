"""This project against Sony's Model Compression Toolkit (MCT 2.6.1, PyTorch), like for like, on the Fashion-MNIST
models: real test accuracy (all 10,000 test images) and wall time, each side with its own synthetic data.

    python3.11 -m venv .venv-peers
    .venv-peers/bin/pip install -c benchmarks/constraints-peers.txt -e '.[peers]'
    .venv-peers/bin/python -m benchmarks.bench_peers --threads 1

MCT's pins clash with constraints.txt (networkx, matplotlib), so it lives in its own venv, pinned by
benchmarks/constraints-peers.txt (``bash .ci/refresh-peers-constraints`` rewrites it). Without MCT the benchmark
prints one line saying so and exits 2 (nothing was measured); ``--no-mct`` runs this project's side alone.

Per model (``--models``):
1. Synthetic data. Ours: the study file's batches (its recovery + held-out images and iterations), timed by
   synthesizing them once more here (the rows use the study's cached copy, the same seed). MCT: its data generation
   from BN statistics (``pytorch_data_generation_experimental``, its defaults: Gaussian init, RAdam, smoothing and
   augmentation) with as many images (``--mct-images``, default: ours, recovery + held-out) and iterations
   (``--mct-iters``, default: ours); a 1-channel model gets a wrapper that reads channel 0 of MCT's 3-channel
   images. MCT clips its images to the pixel range [0, 255] under a normalization: by default here the data's own
   (``--mct-normalization data``, its best: with its own default, torchvision's ImageNet one, its images miss the
   bright end of Fashion-MNIST and its W8A8 lost 1.7 points on the ResNet).
2. Each W/A setting (``--settings``), every layer at the named bits: MCT PTQ and MCT GPTQ (``--gptq-epochs``) with a
   TPC of uniform activations (see ``benchmarks/_mct.py``: the network input and the logits are quantized at the
   activation bits too), against our uniform policy recovered as a study trial is (FR on our synthetic batch;
   the first layer's input at the activation bits). Ours again with the first and last layers at W8A8 (the default
   ``keep_first_last``).
3. Weight mixed precision at 1/``--fractions`` of the fp32 weight bytes (conv and Linear weights), activations
   A8: MCT's (``ResourceUtilization(weights_memory=...)``, kernel candidates ``--mp-bits``) against the knapsack
   pick of our allocated space over the same bit widths (sensitivity table, no search, then FR). MCT counts kernel
   bits only; ours counts per-channel fp32 scales and pruning masks too, so ours gets the budget plus the scales'
   bytes (both store one scale per output channel).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import _mct
from frandi_core import LayerSetting, Policy, compressible_layers, synthesize
from frandi_core.data import PRESETS, accuracy
from search import AllocatedSpace, TrialRunner, open_for
from studies.experiments import Bench, Report, bench, markdown_table, parse, parser, uniform_wa, variant

SETTINGS = ("W8A8", "W4A8", "W4A4", "W2A8", "W3A4")
FRACTIONS = (8, 16)
MP_BITS = (8, 4, 3, 2)
GPTQ_EPOCHS = 50
QUICK: dict[str, Any] = {"settings": [(4, 4)], "gptq_epochs": 1, "fractions": [8], "mct_iters": 3}


def setting(text: str) -> tuple[int, int]:
    """'W4A8' -> (4, 8)."""
    t = text.upper()
    try:
        w, a = t.removeprefix("W").split("A")
        return int(w), int(a)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a setting like W4A8") from None


class Peers:
    """One model's rows: every method's accuracy, its quantization seconds, and its data's cost."""

    def __init__(self, b: Bench, args: argparse.Namespace) -> None:
        self.b = b
        self.args = args
        self.rows: list[dict[str, Any]] = []
        self.data: dict[str, dict[str, Any]] = {}
        self.mct_images: torch.Tensor | None = None

    def add(self, setting: str, first_last: str, method: str, acc: float, seconds: float, data: str,
            **extra: Any) -> None:
        row = {"model": self.b.name, "setting": setting, "first/last": first_last, "method": method,
               "accuracy": round(acc, 2), "vs original": round(acc - self.b.original, 2),
               "quantize s": round(seconds, 1), "total s": round(seconds + self.data[data]["seconds"], 1),
               "data": data} | extra  # fmt: skip
        self.rows.append(row)
        print(f"[{self.b.name}] {json.dumps(row)}", flush=True)

    def synthetic(self) -> None:
        """Both sides' synthetic data: ours timed once more, MCT's generated (unless --no-mct)."""
        c = self.b.cfg.synthetic
        t0 = time.perf_counter()
        synthesize(self.b.teacher, self.b.cfg.model.input_shape, c)
        self.data["ours"] = {"images": f"{c.batch_size} + {c.heldout_size} held-out", "iterations": c.iterations,
                             "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
        if not self.args.no_mct:
            n = self.args.mct_images or c.batch_size + c.heldout_size
            norm = None
            if self.args.mct_normalization == "data":
                preset = PRESETS[self.b.case.data]
                norm = (preset.mean[0], preset.std[0])
            seed = c.seed if self.args.mct_seed is None else self.args.mct_seed
            torch.manual_seed(seed)  # MCT draws its initial images from torch's global generator
            gen = _mct.generate(self.b.teacher, self.b.cfg.model.input_shape, n, self.args.mct_iters or c.iterations,
                                norm)
            self.mct_images = gen.images
            self.data["mct"] = {"images": len(gen.images), "iterations": gen.iterations,
                                "seconds": round(gen.seconds, 1), "normalization": self.args.mct_normalization,
                                "seed": seed}
        print(f"[{self.b.name}] synthetic data: {self.data}", flush=True)

    def ours(self, w: int, a: int, edges: bool) -> None:
        t0 = time.perf_counter()
        student, r = self.b.recovered(uniform_wa(self.b.teacher, w, a, edges=edges))
        seconds = time.perf_counter() - t0
        self.add(f"W{w}A{a}", "W8A8" if edges else f"W{w}A{a}", "ours (uniform, FR)", self.b.accuracy(student),
                 seconds, "ours", od=round(r.od, 4), input_bits=8 if edges else a)

    def mct(self, w: int, a: int) -> None:
        x = self.mct_images
        assert x is not None
        runs = [("MCT PTQ", lambda: _mct.ptq(self.b.teacher, x, w, a))]
        if self.args.gptq_epochs > 0:
            runs.append((f"MCT GPTQ ({self.args.gptq_epochs} epochs)",
                         lambda: _mct.gptq(self.b.teacher, x, w, a, self.args.gptq_epochs)))
        for method, quantize in runs:
            torch.manual_seed(0)  # what MCT draws (GPTQ's batches), the same on every run
            t0 = time.perf_counter()
            q = quantize()
            seconds = time.perf_counter() - t0
            held = _mct.quantizers(q)
            self.add(f"W{w}A{a}", f"W{w}A{a}", method, accuracy(q, self.b.test), seconds, "mct",
                     input_bits=held["input"], logit_bits=_last(held["activations"]),
                     weight_bits="/".join(map(str, sorted(set(held["weights"].values())))))

    def mixed(self) -> None:
        """Weight mixed precision at each 1/k of the fp32 weight bytes, A8. Our first row's seconds include
        building the allocated space (its sensitivity table, read from the database when a run made it before)."""
        layers = compressible_layers(self.b.teacher)
        fp32 = 4 * sum(layer.numel for layer in layers)
        scales = 4 * sum(layer.out_channels for layer in layers)
        space, built = self.allocated() if self.args.fractions else (None, 0.0)
        for k in self.args.fractions:
            budget = fp32 / k
            if space is not None:
                t0 = time.perf_counter()
                chosen, method = space.knapsack(int(budget + scales)), "ours (allocated knapsack, FR)"
                if chosen is None:  # the knapsack rounds each layer's bytes up: an exact fit is the one uniform
                    low = LayerSetting(0.0, min(space.bits), 8)
                    if sum(space.layer_bytes(n, low) for n in space.searched) <= budget + scales:
                        chosen, method = {n: low for n in space.searched}, "ours (uniform, the one fit, FR)"
                if chosen is None:
                    print(f"[{self.b.name}] ours: no policy within 1/{k} of the fp32 weight bytes", flush=True)
                else:
                    policy = Policy.from_dict(chosen)
                    student, r = self.b.recovered(policy)
                    self.add(f"1/{k} weight bytes, A8", "-", method,
                             self.b.accuracy(student), time.perf_counter() - t0 + built, "ours",
                             od=round(r.od, 4), kernel_bytes=round(_kernel_bytes(layers, chosen)),
                             budget_bytes=round(budget), weight_bits=_bits_used(chosen))
                    built = 0.0  # the space (its sensitivity table) is paid once, by the first budget's row
            if not self.args.no_mct:
                assert self.mct_images is not None
                t0 = time.perf_counter()
                try:
                    q = _mct.mixed(self.b.teacher, self.mct_images, budget, 8, tuple(self.args.mp_bits))
                except Exception as e:  # noqa: BLE001 - MCT reports an infeasible budget as an exception: a row
                    print(f"[{self.b.name}] MCT mixed precision at 1/{k}: {type(e).__name__}: {e}", flush=True)
                    continue
                held = _mct.quantizers(q)
                self.add(f"1/{k} weight bytes, A8", "-", "MCT mixed precision", accuracy(q, self.b.test),
                         time.perf_counter() - t0, "mct", kernel_bytes=round(_mct.kernel_bytes(q)),
                         budget_bytes=round(budget),
                         weight_bits="/".join(map(str, sorted(set(held["weights"].values())))))

    def allocated(self) -> tuple[AllocatedSpace, float]:
        """Our allocated space over the same bit widths, every layer searched (keep_first_last off), A8, and the
        seconds building it took (its sensitivity table, stored once in the study's database: a rerun reads it)."""
        keys = {"mode": "allocated", "bits": tuple(self.args.mp_bits), "act_bits": (8,), "keep_first_last": False,
                "sparsity": (0.0, 0.3), "sparsity_step": 0.1, "warm_starts": 1}  # fmt: skip
        cfg = variant(self.b.cfg, "peers-mp", study={"n_trials": 1}, space=keys)
        with open_for(cfg, self.args.storage) as st:
            t0 = time.perf_counter()
            space = TrialRunner(cfg, st).space
        assert isinstance(space, AllocatedSpace)
        return space, time.perf_counter() - t0


def _last(acts: dict[str, int]) -> int | None:
    return list(acts.values())[-1] if acts else None


def _kernel_bytes(layers: Sequence[Any], chosen: dict[str, LayerSetting]) -> float:
    """The policy's weights at their bits, dense (MCT's count)."""
    return sum(layer.numel * (chosen[layer.name].bits or 32) / 8 for layer in layers)


def _bits_used(chosen: dict[str, LayerSetting]) -> str:
    return "/".join(str(b) for b in sorted({s.bits or 32 for s in chosen.values()}))


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every key of any row, in the order first seen."""
    return list(dict.fromkeys(k for r in rows for k in r))


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per setting: each method's accuracy side by side."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        line = out.setdefault(r["setting"], {"setting": r["setting"]})
        column = r["method"] + (" first/last W8A8" if r["first/last"] == "W8A8" and r["setting"] != "W8A8" else "")
        line[column] = r["accuracy"]
    return list(out.values())


def run(b: Bench, args: argparse.Namespace, report: Report) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    p = Peers(b, args)
    p.synthetic()
    for w, a in args.settings:
        p.ours(w, a, edges=False)
        if (w, a) != (8, 8):
            p.ours(w, a, edges=True)
        if not args.no_mct:
            p.mct(w, a)
    p.mixed()
    report.setup(b, mct=f"model-compression-toolkit {_mct.MCT_VERSION}" if not args.no_mct else "not run (--no-mct)")
    report.add("Synthetic data (each side's, shared by its rows; `total s` = its seconds + the row's quantization):"
               "\n\n" + markdown_table([{"side": k} | v for k, v in p.data.items()]))
    side = summary(p.rows)
    report.add("Real test accuracy (%), side by side:\n\n" + markdown_table(side, columns(side)))
    report.add("Every row:\n\n" + markdown_table(p.rows, columns(p.rows)))
    return p.rows, {"original": round(b.original, 2), "data": p.data, "rows": p.rows}


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = parser(__doc__)
    p.set_defaults(threads=1)
    p.add_argument("--settings", nargs="+", type=setting, default=[setting(s) for s in SETTINGS],
                   help=f"W/A settings, every layer at the named bits (default {' '.join(SETTINGS)})")
    p.add_argument("--gptq-epochs", type=int, default=GPTQ_EPOCHS, help="MCT GPTQ epochs (0: no GPTQ rows)")
    p.add_argument("--fractions", nargs="*", type=int, default=list(FRACTIONS),
                   help="weight mixed precision at 1/k of the fp32 weight bytes (none: no such rows)")
    p.add_argument("--mp-bits", nargs="+", type=int, default=list(MP_BITS), help="mixed-precision weight bits")
    p.add_argument("--mct-images", type=int, help="MCT's synthetic images (default: ours, recovery + held-out)")
    p.add_argument("--mct-iters", type=int, help="MCT's data-generation iterations (default: ours)")
    p.add_argument("--mct-normalization", choices=("torchvision", "data"), default="data",
                   help="the pixel normalization MCT's data generation clips its images to: its default "
                        "(torchvision's ImageNet one) or the data's own (frandi_core.data.PRESETS)")
    p.add_argument("--mct-seed", type=int, help="torch seed of MCT's data generation (default: the study's seed)")
    p.add_argument("--no-mct", action="store_true", help="this project's rows only (no MCT needed)")
    raw = list(argv) if argv is not None else sys.argv[1:]
    if "--no-mct" not in raw and (line := _mct.missing()) is not None:
        print(line, file=sys.stderr)
        raise SystemExit(2)
    a = parse(p, raw)
    if a.quick:
        for key, value in QUICK.items():
            setattr(a, key, value)
    tag = "" if a.mct_normalization == "data" or a.no_mct else f"_mct-{a.mct_normalization}"  # its own files
    rows: list[dict[str, Any]] = []
    for name in a.models:
        with bench(name, a) as b:
            title = f"This project against MCT {_mct.MCT_VERSION}: {name}"
            report = Report("bench_peers", f"{name}{a.suffix}{tag}", title, Path(a.out), a.argv,
                            module="benchmarks.bench_peers")
            model_rows, record = run(b, a, report)
            report.write()
            path = report.out / f"{report.name}.json"  # the command and wall time Report wrote, and every number
            path.write_text(json.dumps(json.loads(path.read_text()) | record, indent=1) + "\n")
            rows += model_rows
    return rows


if __name__ == "__main__":
    main()
