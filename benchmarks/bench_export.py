"""Exported sizes and onnxruntime speed of compressed students of the quickstart's digits model, in one run.

    python -m benchmarks.bench_export [--study studies/quickstart.toml] [--threads 1] [--repeats 300]

Each policy is compressed and recovered as a trial of the study is (its synthetic batches, its FR settings),
then measured: the size objective, the packed file's bytes, the ONNX file's bytes and their overhead over the
size objective (the architecture's graph, measured on the fp32 export, and the rest per compressed or
activation-quantized layer), the fp32 model's ONNX bytes; the ONNX outputs against the student on the held-out
batch, real accuracy on the digits test split in PyTorch and onnxruntime; onnxruntime's session load time and
per-batch latency (one batch of the held-out size, ``--threads`` intra-op threads, medians), fp32 against
exported. The synthetic batches are made once in a temporary database (about 20 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime
import torch

from frandi_core import (
    LayerSetting,
    Policy,
    compressible_layers,
    model_size,
    onnx_parity,
    pack,
    run_onnx,
    to_onnx,
)
from frandi_core.data import accuracy, labeled_data
from search import TrialRunner, load_config, open_for


def policies(model: torch.nn.Module) -> dict[str, Policy]:
    """Uniform W8A8, W4A8, W4A4, and W4A8 at 70% sparsity; first and last layers dense W8A8 in each."""
    first, *_, last = [layer.name for layer in compressible_layers(model)]

    def uniform(sparsity: float, bits: int, act: int) -> Policy:
        edge = LayerSetting(0.0, 8, 8)
        return Policy.from_dict(dict(Policy.uniform(model, sparsity, bits, act).layers) | {first: edge, last: edge})

    return {"W8A8": uniform(0.0, 8, 8), "W4A8": uniform(0.0, 4, 8), "W4A4": uniform(0.0, 4, 4),
            "W4A8 70% sparse": uniform(0.7, 4, 8)}


def session(data: bytes, threads: int) -> onnxruntime.InferenceSession:
    """A CPU session with ``threads`` intra-op threads (and one inter-op thread)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def timings(data: bytes, x: torch.Tensor, threads: int, repeats: int) -> tuple[float, float]:
    """Median session load time and median latency of one run on ``x`` (ms), after a warm-up run."""
    loads = []
    for _ in range(max(5, repeats // 20)):
        t0 = time.perf_counter()
        s = session(data, threads)
        loads.append(time.perf_counter() - t0)
    feed = {s.get_inputs()[0].name: x.numpy()}
    s.run(None, feed)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        s.run(None, feed)
        runs.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(loads), 1e3 * statistics.median(runs)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default="studies/quickstart.toml")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=300)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    test = labeled_data("digits", "test")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(a.study)
        cfg = dataclasses.replace(cfg, study=dataclasses.replace(cfg.study, storage=f"sqlite:///{Path(tmp) / 'b.db'}"))
        with open_for(cfg) as st:
            runner = TrialRunner(cfg, st)
        teacher, x = runner.teacher, runner.heldout
        fp32 = to_onnx(teacher, Policy(), x)
        fp32_size = model_size(teacher, Policy()).bytes
        graph = len(fp32) - fp32_size
        fp32_load, fp32_run = timings(fp32, x, a.threads, a.repeats)
        print(f"{cfg.study.name}: {cfg.model.architecture}, onnxruntime {onnxruntime.__version__}, {a.threads} "
              f"thread(s), batch {len(x)}, load average {os.getloadavg()[0]:.1f}")
        print(f"fp32: state_dict {fp32_size:,} bytes, ONNX {len(fp32):,} bytes (graph {graph:,}), accuracy "
              f"{accuracy(teacher, test):.2f}%, session load {fp32_load:.1f} ms, run {fp32_run:.2f} ms")
        head = (f"{'policy':<16} {'size':>7} {'packed':>7} {'ONNX':>7} {'ONNX-size':>9} {'functions':>9} "
                f"{'per layer':>9} {'fp32/ONNX':>9} {'max err':>8} {'ties':>5} {'acc pt':>7} {'acc ort':>7} "
                f"{'load ms':>8} {'run ms':>7} {'run/fp32':>8}")
        print(head)
        for name, policy in policies(teacher).items():
            student, result = runner.student(policy)
            size = model_size(teacher, policy).bytes
            assert size * 8 == result.size_bits
            packed_bytes = len(pack(student, policy))
            data = to_onnx(student, policy, x)
            parity = onnx_parity(student, data, x)
            torch_acc = accuracy(student, test)
            onnx_acc = 100.0 * float((run_onnx(data, test.tensors[0]).argmax(1) == test.tensors[1]).float().mean())
            load, run = timings(data, x, a.threads, a.repeats)
            layers = len({n for n, s in policy.layers if s.sparsity or s.bits or s.act_bits})
            functions = sum(f.ByteSize() for f in onnx.load_from_string(data).functions)
            per_layer = (len(data) - size - graph - functions) / layers
            print(f"{name:<16} {size:>7,} {packed_bytes:>7,} {len(data):>7,} {len(data) - size:>9,} {functions:>9,} "
                  f"{per_layer:>9.0f} "
                  f"{len(fp32) / len(data):>9.2f} {parity.error:>8.1e} {parity.flipped:>5} {torch_acc:>7.2f} "
                  f"{onnx_acc:>7.2f} {load:>8.1f} {run:>7.2f} {run / fp32_run:>8.2f}")
    print("size: the size objective (bytes); packed: the packed file with its header; ONNX-size: the ONNX file's "
          "bytes over the size objective = the architecture's graph (as in the fp32 file) + the functions that "
          "unpack weights (one per kind) + per layer the rest; ties: held-out samples where onnxruntime rounded an "
          "activation at a rounding tie the other way (max err is over the others)")


if __name__ == "__main__":
    main()
