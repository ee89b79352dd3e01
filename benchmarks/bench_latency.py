"""How fast the exported files run: onnxruntime CPU latency against the model as ``torch.onnx.export`` writes it.

    python -m benchmarks.bench_latency                    # resnet18, mobilenet_v2, digits, resnet_fashion
    python -m benchmarks.bench_latency --all              # + resnet50, separable_fashion
    python -m benchmarks.bench_latency --models resnet50 --budget 4
    python -m benchmarks.bench_latency --models resnet18 mobilenet_v2 --channels   # + channel-pruned files

Per model, one row per file, all run by onnxruntime's CPU provider with its default optimizations:
1. ``fp32 torch.onnx.export``: the user's baseline, the original model as ``torch.onnx.export`` writes it (the
   default exporter, dynamic batch): the denominator of every speed-up;
2. ``ort quantize_static``: onnxruntime's own static quantizer on that file (after ``quant_pre_process``; QDQ,
   uint8 activations, int8 per-channel weights, MinMax calibration), the reference;
3. ``frandi ...``: ``compress`` with a uniform policy (W8A8, W4A8, W4A4, W8A8 at 50% sparsity, 8-bit weights with
   fp32 activations), then ``to_onnx`` in its default layout: what ``frandi export --format onnx`` writes for such
   a trial (no Feature Regression: latency does not depend on the weights' values); and W8A8 in the bit-packed
   layout (``to_onnx(..., layout="packed")``, where ``to_onnx`` has layouts);
4. with ``--channels``: channel-pruned files (``[space] channels``): every prunable group loses the same fraction
   of its output channels, the fraction that gives 1.5x and 2x fewer MACs, in fp32 and at W8A8.
Both quantizers calibrate on the same ``--calib`` random normal inputs (seed 0). torchvision models have random
weights (``weights=None``); the Fashion-MNIST models need ``python -m studies.experiments.references`` first.

Columns: median latency (ms) and speed-up over row 1 at each batch size and intra-op thread count (the variants
are interleaved round-robin in each cell, at least ``--min-repeats`` runs each, more while the cell's time budget
lasts); median session load time (1 thread); file bytes; Conv/Gemm/MatMul nodes that run on integer kernels
(QLinearConv, QGemm, ...) in the graph onnxruntime optimized, against all of them; Q/DQ nodes left in that graph;
output error against row 1 on the largest batch (relative L2).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import inspect
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
import torchvision
from onnxruntime import quantization
from torch import nn

import frandi_core
from frandi_core import Policy, compress, load_model, measure_latency, pack, to_onnx
from search import load_config, model_spec
from studies.experiments import channel_policy, fewer_macs, markdown_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "studies" / "experiments" / "results"
INTEGER = {"QLinearConv", "ConvInteger", "QGemm", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat",
           "DynamicQuantizeMatMul"}  # Conv/Gemm/MatMul on integer kernels, any domain
FLOAT = {"Conv", "FusedConv", "NhwcFusedConv", "NchwcConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul",
         "FusedMatMul"}
BASELINE = "fp32 torch.onnx.export"
REFERENCE = "ort quantize_static"
# label -> (sparsity, weight bits, activation bits, to_onnx layout: None for its default)
POLICIES: dict[str, tuple[float, int, int | None, str | None]] = {
    "W8A8": (0.0, 8, 8, None), "W4A8": (0.0, 4, 8, None), "W4A4": (0.0, 4, 4, None),
    "W8A8 50% sparse": (0.5, 8, 8, None), "W8 weights only": (0.0, 8, None, None),
    "W8A8 packed": (0.0, 8, 8, "packed"),
}
# label -> (fewer MACs by this factor, weight bits, activation bits): every prunable group loses the same fraction
# of its output channels (``--channels``), the fraction found by bisection on the pruned student's MACs
CHANNELS: dict[str, tuple[float, int | None, int | None]] = {
    "fp32 1.5x fewer FLOPs": (1.5, None, None), "fp32 2x fewer FLOPs": (2.0, None, None),
    "W8A8 1.5x fewer FLOPs": (1.5, 8, 8), "W8A8 2x fewer FLOPs": (2.0, 8, 8),
}
LAYOUTS = "layout" in inspect.signature(to_onnx).parameters  # to_onnx(..., layout=) exists: fast by default


@dataclasses.dataclass(frozen=True)
class Case:
    """A benchmark model: how to build it (trained weights or random) and its input shape without the batch."""

    build: Callable[[], nn.Module]
    shape: tuple[int, ...]
    note: str


def _torchvision(name: str) -> Callable[[], nn.Module]:
    return lambda: getattr(torchvision.models, name)(weights=None)


def _study(toml: str, train: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        cfg = load_config(ROOT / toml)
        if not Path(cfg.weights_path).exists():
            raise SystemExit(f"{cfg.weights_path} is missing: train it first with {train}")
        return load_model(model_spec(cfg))

    return build


MODELS = {
    "resnet18": Case(_torchvision("resnet18"), (3, 224, 224), "torchvision, random weights"),
    "mobilenet_v2": Case(_torchvision("mobilenet_v2"), (3, 224, 224), "torchvision, random weights"),
    "resnet50": Case(_torchvision("resnet50"), (3, 224, 224), "torchvision, random weights"),
    "resnet_fashion": Case(
        _study("studies/experiments/resnet_fashion.toml", "python -m studies.experiments.references --only resnet"),
        (1, 28, 28), "Fashion-MNIST reference ResNet (widths 16/32/64), trained"),
    "separable_fashion": Case(
        _study("studies/experiments/separable_fashion.toml",
               "python -m studies.experiments.references --only separable"),
        (1, 28, 28), "Fashion-MNIST reference separable net (widths 32/64/128), trained"),
    "digits": Case(_study("studies/quickstart.toml", "(it is bundled)"), (1, 8, 8), "the bundled digits ResNet"),
}
DEFAULT_MODELS = ("resnet18", "mobilenet_v2", "digits", "resnet_fashion")


# ---- the files


def torch_export(model: nn.Module, example: torch.Tensor) -> bytes:
    """The user's fp32 file: ``torch.onnx.export`` with its defaults and a dynamic batch dimension."""
    program = torch.onnx.export(
        model, (example,), input_names=["input"], output_names=["output"], verbose=False,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
    )
    assert program is not None  # the default (dynamo) exporter returns its program
    return bytes(program.model_proto.SerializeToString())


class _Batches(quantization.CalibrationDataReader):
    """The calibration inputs, one batch."""

    def __init__(self, name: str, x: np.ndarray) -> None:
        self._left = [{name: x}]

    def get_next(self) -> dict[str, np.ndarray] | None:
        return self._left.pop() if self._left else None


def ort_static(fp32: bytes, calib: np.ndarray) -> bytes:
    """onnxruntime's static quantization of ``fp32`` as its docs recommend: ``quant_pre_process``, then QDQ with
    uint8 activations and int8 per-channel weights, MinMax ranges on ``calib``."""
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(fp32)
        quantization.quant_pre_process(str(src), str(pre))
        name = onnx.load(str(pre), load_external_data=False).graph.input[0].name
        quantization.quantize_static(
            str(pre), str(out), _Batches(name, calib), quant_format=quantization.QuantFormat.QDQ, per_channel=True,
            activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
        )
        return out.read_bytes()


def frandi_export(
    model: nn.Module, policy: Policy, calib: torch.Tensor, example: torch.Tensor, layout: str | None = None,
    multiple: int = 1,
) -> tuple[bytes, int]:
    """What ``frandi export --format onnx`` writes for ``policy`` (compressed, not recovered), in ``to_onnx``'s
    ``layout`` (None: its default), and the bytes of the packed safetensors file of the same student.
    ``multiple``: each channel-pruned group keeps a multiple of that many channels."""
    student = compress(model, policy, calibration=calib, channel_multiple=multiple) if multiple > 1 else compress(
        model, policy, calibration=calib)
    data = to_onnx(student, policy, example) if layout is None else to_onnx(student, policy, example, layout=layout)
    return data, len(pack(student, policy))


# ---- onnxruntime


def session(data: bytes, threads: int, optimized: Path | None = None) -> onnxruntime.InferenceSession:
    """A CPU session, default optimizations, ``threads`` intra-op threads and one inter-op thread."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # not its warning that a saved optimized graph is hardware-specific
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


@dataclasses.dataclass(frozen=True)
class Fusion:
    """What onnxruntime's optimized graph runs: Conv/Gemm/MatMul nodes on integer kernels, all of them, the
    Q/DQ nodes left, every op type with its count, and the Conv/Gemm/MatMul nodes left in fp32 (name: op)."""

    integer: int
    total: int
    qdq: int
    ops: dict[str, int]
    fp32: dict[str, str]


def fusion(data: bytes) -> Fusion:
    """Count the optimized graph's nodes (saved by a session with ``optimized_model_filepath``); the integer and
    total counts from ``frandi_core.onnx_fusion`` where frandi_core has it (the count ``frandi export`` prints)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optimized.onnx"
        session(data, 1, path)
        graph = onnx.load(str(path), load_external_data=False).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    integer = sum(ops[o] for o in INTEGER)
    total = integer + sum(ops[o] for o in FLOAT)
    counter = getattr(frandi_core, "onnx_fusion", None)
    if counter is not None:
        counted = counter(data)
        integer, total = counted["integer"], counted["total"]
    return Fusion(integer, total, ops["QuantizeLinear"] + ops["DequantizeLinear"], dict(sorted(ops.items())),
                  {n.name: n.op_type for n in graph.node if n.op_type in FLOAT})


def load_ms(data: bytes, repeats: int) -> float:
    """Median time to create a 1-thread session from the file's bytes (ms)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session(data, 1)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def interleaved(
    sessions: dict[str, onnxruntime.InferenceSession], x: np.ndarray, *, budget: float, min_repeats: int,
    max_repeats: int, block: float = 0.05,
) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Run every session on ``x`` in turns (the order rotated each round) until each ran ``min_repeats`` times and
    ``budget`` seconds per session passed, or ``max_repeats``: each one's run times (s) and output.

    A turn is one untimed run, then runs timed back to back for about ``block`` seconds (at least one): the
    untimed run lets the previous session's intra-op threads, which spin a while after their run, go idle
    before this session is timed. A run longer than ``block`` is timed alone, without the untimed one."""
    names = list(sessions)
    feeds = {n: {s.get_inputs()[0].name: x} for n, s in sessions.items()}
    outputs, runs = {}, {}
    for n in names:  # warm-up at this shape; its time sets the turn's length
        t0 = time.perf_counter()
        outputs[n] = np.asarray(sessions[n].run(None, feeds[n])[0])
        runs[n] = max(1, min(max_repeats, round(block / max(time.perf_counter() - t0, 1e-9))))
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(max_repeats):
        done = all(len(t) >= min(min_repeats, max_repeats) for t in times.values())
        if done and (time.perf_counter() - start >= budget * len(names)
                     or all(len(t) >= max_repeats for t in times.values())):
            break
        for n in names[r % len(names):] + names[: r % len(names)]:
            if len(times[n]) >= max_repeats:
                continue
            if runs[n] > 1:
                sessions[n].run(None, feeds[n])
            for _ in range(min(runs[n], max_repeats - len(times[n]))):
                t0 = time.perf_counter()
                sessions[n].run(None, feeds[n])
                times[n].append(time.perf_counter() - t0)
    return times, outputs


# ---- one model


def variants(name: str, a: argparse.Namespace) -> tuple[dict[str, bytes], dict[str, float], dict[str, int]]:
    """The model's files, row order, the seconds each took to make, and the packed file's bytes (frandi rows)."""
    case = MODELS[name]
    model = case.build().eval()
    gen = torch.Generator().manual_seed(0)
    calib = torch.randn(a.calib, *case.shape, generator=gen)
    example = calib[:1]
    files, seconds, packed = {}, {}, {}
    t0 = time.perf_counter()
    files[BASELINE] = torch_export(model, example)
    seconds[BASELINE] = time.perf_counter() - t0
    t0 = time.perf_counter()
    files[REFERENCE] = ort_static(files[BASELINE], calib.numpy())
    seconds[REFERENCE] = time.perf_counter() - t0
    for label in a.policies:
        sparsity, bits, act_bits, layout = POLICIES[label]
        if layout is not None and not LAYOUTS:
            continue  # this to_onnx has one layout: the rows above are it
        t0 = time.perf_counter()
        policy = Policy.uniform(model, sparsity, bits, act_bits)
        files[f"frandi {label}"], packed[f"frandi {label}"] = frandi_export(model, policy, calib, example, layout)
        seconds[f"frandi {label}"] = time.perf_counter() - t0
        print(f"[{name}] frandi {label}: {len(files[f'frandi {label}']):,} bytes in {seconds[f'frandi {label}']:.0f} s",
              flush=True)
    fractions: dict[tuple[float, int], tuple[float, float]] = {}
    for multiple in a.channel_multiples if a.channels else ():
        for label, (factor, bits, act_bits) in CHANNELS.items():
            t0 = time.perf_counter()
            if (factor, multiple) not in fractions:
                fractions[factor, multiple] = found = fewer_macs(model, case.shape, factor, multiple=multiple)
                print(f"[{name}] {factor:g}x fewer MACs, multiples of {multiple}: channels {found[0]:.4f} "
                      f"({found[1]:.3f}x)", flush=True)
            fraction, reached = fractions[factor, multiple]
            policy = channel_policy(model, case.shape, fraction, bits, act_bits)
            key = f"frandi {label} (channels {fraction:.3f}, x{multiple}, {reached:.2f}x)"
            files[key], packed[key] = frandi_export(model, policy, calib, example, multiple=multiple)
            seconds[key] = time.perf_counter() - t0
    return files, seconds, packed


def cell(batch: int, threads: int) -> str:
    return f"b{batch} t{threads}"


def bench_model(name: str, a: argparse.Namespace) -> list[dict[str, Any]]:
    """Make the model's files, count what onnxruntime fuses, time them: one row per file."""
    files, seconds, packed = variants(name, a)
    shape = MODELS[name].shape
    rows: dict[str, dict[str, Any]] = {}
    for label, data in files.items():
        f = fusion(data)
        rows[label] = {"model": name, "file": label, "bytes": len(data), "load_ms": load_ms(data, a.loads),
                       "packed_bytes": packed.get(label),
                       "integer": f.integer, "convs": f.total, "qdq_left": f.qdq, "make_s": round(seconds[label], 1),
                       "ops": f.ops, "fp32_nodes": f.fp32}
    if a.predict:  # the latency table a study would measure, per batch at the first thread count
        model = MODELS[name].build().eval()
        example = torch.zeros(1, *shape)
        for batch in a.batches:
            table = measure_latency(model, example, threads=a.threads[0], batch=batch, repeats=a.min_repeats * 4)
            for label in rows:
                spec = POLICIES.get(label.removeprefix("frandi "))
                if spec is not None and spec[3] is None:  # the fast layout: what the table predicts
                    policy = Policy.uniform(model, spec[0], spec[1], spec[2])
                    rows[label][f"{cell(batch, a.threads[0])} predicted x"] = table.base_ms / table.predict(policy)
    gen = torch.Generator().manual_seed(1)
    for threads in a.threads:
        sessions = {label: session(data, threads) for label, data in files.items()}
        for batch in a.batches:
            x = torch.randn(batch, *shape, generator=gen).numpy()
            load = os.getloadavg()[0]
            times, outputs = interleaved(sessions, x, budget=a.budget, min_repeats=a.min_repeats,
                                         max_repeats=a.max_repeats)
            base = statistics.median(times[BASELINE])
            ref = outputs[BASELINE]
            for label, t in times.items():
                ms = 1e3 * statistics.median(t)
                rows[label][f"{cell(batch, threads)} ms"] = ms
                rows[label][f"{cell(batch, threads)} x"] = base / statistics.median(t)
                rows[label][f"{cell(batch, threads)} n"] = len(t)
                rows[label][f"{cell(batch, threads)} load"] = round(load, 2)
                if batch == max(a.batches) and threads == a.threads[0]:
                    err = np.linalg.norm(outputs[label] - ref) / max(float(np.linalg.norm(ref)), 1e-30)
                    rows[label]["rel_err"] = float(err)
            print(f"[{name}] batch {batch}, {threads} thread(s), load {load:.1f}: "
                  + ", ".join(f"{label} {rows[label][f'{cell(batch, threads)} ms']:.2f} ms "
                              f"({rows[label][f'{cell(batch, threads)} x']:.2f}x, n={len(t)})"
                              for label, t in times.items()), flush=True)
        del sessions
    return list(rows.values())


# ---- the report


def fmt_ms(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def table(rows: Sequence[dict[str, Any]], a: argparse.Namespace) -> str:
    """The markdown table: latency and speed-up per cell, then load, bytes, fused nodes, error."""
    cells = [cell(b, t) for b in a.batches for t in a.threads]
    out = []
    for r in rows:
        line: dict[str, Any] = {"model": r["model"], "file": r["file"]}
        for c in cells:
            line[f"{c} ms"] = fmt_ms(r[f"{c} ms"])
            line[f"{c} speed-up"] = f"{r[f'{c} x']:.2f}x"
        line["load ms"] = f"{r['load_ms']:.1f}"
        line["bytes"] = f"{r['bytes']:,}"
        line["packed bytes"] = "-" if r.get("packed_bytes") is None else f"{r['packed_bytes']:,}"
        line["int Conv/Gemm"] = f"{r['integer']}/{r['convs']}"
        line["Q/DQ left"] = r["qdq_left"]
        line["rel err"] = f"{r['rel_err']:.2g}"
        for c in cells if a.predict else ():  # the latency table's speed-up against the measured one
            predicted = r.get(f"{c} predicted x")
            error = "" if predicted is None else f" ({predicted / r[f'{c} x'] - 1:+.0%})"
            line[f"{c} predicted"] = "-" if predicted is None else f"{predicted:.2f}x{error}"
        out.append(line)
    return markdown_table(out)


def write(rows: list[dict[str, Any]], a: argparse.Namespace, wall: float, loads: list[float]) -> Path:
    """bench_latency.md and .json in ``--out``."""
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = " ".join(["python -m benchmarks.bench_latency", *a.argv])
    setup = (
        f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider, default graph optimizations, one inter-op "
        f"thread), torch {torch.__version__}, onnx {onnx.__version__}, {platform.machine()} "
        f"({os.cpu_count()} cores, shared with other jobs; 1-minute load average {min(loads):.1f}-{max(loads):.1f} "
        f"during the run). Cells: batch b, t intra-op threads, median ms over the interleaved runs "
        f"(at least {a.min_repeats} each, {a.budget:g} s per file and cell), speed-up = the fp32 "
        f"torch.onnx.export file's median in the same cell / the row's. Calibration: {a.calib} random normal "
        f"inputs (seed 0) for both quantizers; frandi rows are compressed, not recovered."
    )
    notes = (
        "load ms: median session creation from the file's bytes, 1 thread. packed bytes: the packed safetensors "
        "file of the same student (`frandi export --format packed`, `frandi_core.pack`). int Conv/Gemm: Conv, Gemm "
        "and MatMul nodes on integer kernels (QLinearConv, QGemm, QLinearMatMul, MatMulInteger, ...) in onnxruntime's "
        "optimized graph / all of them (integer + Conv, FusedConv, Gemm, MatMul, ...). Q/DQ left: QuantizeLinear "
        "and DequantizeLinear nodes in that graph. rel err: relative L2 distance of the outputs from the fp32 "
        f"file's on the batch-{max(a.batches)} input (random weights: not an accuracy)."
    )
    md = "\n\n".join([
        "# Latency of the exported files in onnxruntime (CPU)", setup, table(rows, a), notes,
        f"Command: `{cmd}`. Wall time {wall / 60:.1f} min ({wall:.0f} s).",
    ])
    (out / "bench_latency.md").write_text(md + "\n")
    (out / "bench_latency.json").write_text(json.dumps(
        {"command": cmd, "wall_seconds": round(wall, 1), "load_average": loads, "onnxruntime": onnxruntime.__version__,
         "torch": torch.__version__, "setup": setup, "rows": rows}, indent=1) + "\n")
    return out / "bench_latency.md"


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(DEFAULT_MODELS))
    p.add_argument("--all", action="store_true", help="every model (resnet50 and the separable net too)")
    p.add_argument("--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op threads")
    p.add_argument("--budget", type=float, default=2.0, help="seconds per file and cell (default 2)")
    p.add_argument("--min-repeats", type=int, default=5)
    p.add_argument("--max-repeats", type=int, default=2000, help="runs per file and cell at most")
    p.add_argument("--loads", type=int, default=5, help="session loads timed per file")
    p.add_argument("--calib", type=int, default=8, help="random calibration inputs")
    p.add_argument("--torch-threads", type=int, default=2, help="torch threads for exporting and compressing")
    p.add_argument("--predict", action="store_true",
                   help="also the latency table's predicted speed-up of each fast-layout row (measure_latency)")
    p.add_argument("--channels", action="store_true",
                   help="also channel-pruned files: 1.5x and 2x fewer MACs (uniform channel fraction), fp32 and W8A8")
    p.add_argument("--channel-multiples", type=int, nargs="+", default=[1, 8],
                   help="with --channels: each pruned group keeps a multiple of this many channels, one set of rows "
                   "each (default 1 and 8)")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    a.argv = list(argv) if argv is not None else sys.argv[1:]
    if a.all:
        a.models = list(MODELS)
    torch.set_num_threads(a.torch_threads)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    loads = [os.getloadavg()[0]]
    for name in a.models:
        rows += bench_model(name, a)
        loads += [r[k] for r in rows[-1:] for k in r if k.endswith(" load")]
        path = write(rows, a, time.perf_counter() - t0, loads)  # after each model: a later failure keeps these
    print(table(rows, a))
    print(f"-> {path}")
    return rows


if __name__ == "__main__":
    main()
