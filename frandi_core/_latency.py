"""Latency of a policy on a named target (onnxruntime on this CPU), predicted from a per-layer table.

The table is measured once per model and target: the whole fp32 model as exported (``base_ms``), each
Conv/Linear layer alone, at the input shape it sees, as an fp32 node and as the integer node the fast ONNX layout
gives it (QDQ around it: onnxruntime runs QLinearConv / QGemm), and the whole model with every layer at W8A8 in
the fast layout. A layer alone pays quantizing its input and dequantizing its output, which a chain of integer
layers does not: the integer-minus-fp32 differences are scaled by one factor so that they sum to what the
all-integer model measured. A policy's latency is ``base_ms`` plus the scaled difference of each layer it runs on
integer kernels (quantized weights and input). Sparsity changes nothing: dense kernels multiply the zeros.
``python -m benchmarks.bench_latency`` checks the prediction against whole exported graphs.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ._compress import compress
from ._errors import FrandiError
from ._hooks import capture
from ._policy import COMPRESSIBLE, Policy

LATENCY_RULE = "onnxruntime-cpu-table/1"  # how a latency is predicted: trials predicted otherwise are not comparable


@dataclass(frozen=True)
class LatencyTable:
    """Milliseconds per batch on ``target``: the fp32 model's, and each layer's as fp32 and as integer node."""

    target: str
    base_ms: float
    layers: dict[str, tuple[float, float]] = field(default_factory=dict)  # layer -> (fp32 ms, integer ms)

    def predict(self, policy: Policy, scale: Mapping[str, float] | None = None) -> float:
        """The policy's latency: the fp32 model's, with each integer layer's time swapped in. ``scale``: layer ->
        its MACs in the channel-pruned student over the original's (``layer_macs`` of both); a layer's times are
        taken to shrink with its MACs (the rest of the graph is not)."""
        scale = scale or {}
        ms = self.base_ms
        for name, s in policy.layers:
            if s.bits is not None and s.act_bits is not None and name in self.layers:
                fp32, integer = self.layers[name]
                ms += scale.get(name, 1.0) * (integer - fp32)
        for name, r in scale.items():
            if name in self.layers:
                ms += (r - 1.0) * self.layers[name][0]
        return ms

    def to_json(self) -> str:
        return json.dumps({"target": self.target, "base_ms": self.base_ms, "layers": self.layers}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LatencyTable:
        d = json.loads(text)
        return cls(d["target"], float(d["base_ms"]), {k: (float(a), float(b)) for k, (a, b) in d["layers"].items()})


def latency_target(threads: int, batch: int) -> str:
    """The named target a table is measured on: the runtime, its version, threads and batch size."""
    import onnxruntime

    return f"onnxruntime-cpu/{onnxruntime.__version__}/threads={threads}/batch={batch}"


def _attrs(m: Any) -> dict[str, Any]:
    """The ONNX attributes of a Linear (Gemm) or Conv layer."""
    if isinstance(m, nn.Linear):
        return {"transB": 1}
    if not isinstance(m.padding, tuple):
        raise FrandiError(f"latency table: layer padding {m.padding!r} is not supported; use explicit padding")
    return {"strides": list(m.stride), "pads": [*m.padding, *m.padding], "dilations": list(m.dilation),
            "group": m.groups}


def _layer_graphs(m: Any, shape: tuple[int, ...]) -> tuple[bytes, bytes]:
    """One layer as an fp32 ONNX model and as the fast layout's integer node (QDQ around it, uint8 in and out)."""
    from onnx import TensorProto, helper, numpy_helper

    op = "Gemm" if isinstance(m, nn.Linear) else "Conv"
    w = m.weight.detach().float().cpu().numpy()
    out = w.shape[0]
    rng = np.random.default_rng(0)
    levels = rng.integers(-127, 128, w.shape).astype(np.int8)
    one = lambda name, v, t: numpy_helper.from_array(np.asarray(v, t), name)  # noqa: E731
    inits_fp = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(out, np.float32), "b")]
    inits_q = [numpy_helper.from_array(levels, "wq"), one("ws", np.full(out, 0.01), np.float32),
               one("bq", np.zeros(out), np.int32), one("bs", np.full(out, 1e-4), np.float32),
               one("xs", 0.01, np.float32), one("zp", 0, np.uint8), one("ys", 0.02, np.float32)]
    attrs = _attrs(m)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)

    def model(nodes: list[Any], inits: list[Any]) -> bytes:
        g = helper.make_graph(nodes, "layer", [x], [y], inits)
        made = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
        made.ir_version = 10
        return bytes(made.SerializeToString())

    fp32 = model([helper.make_node(op, ["x", "w", "b"], ["y"], **attrs)], inits_fp)
    integer = model([
        helper.make_node("QuantizeLinear", ["x", "xs", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws"], ["wd"], axis=0),
        helper.make_node("DequantizeLinear", ["bq", "bs"], ["bd"], axis=0),
        helper.make_node(op, ["xd", "wd", "bd"], ["c"], **attrs),
        helper.make_node("QuantizeLinear", ["c", "ys", "zp"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "ys", "zp"], ["y"]),
    ], inits_q)
    return fp32, integer


def time_onnx(
    models: Mapping[str, bytes], inputs: Mapping[str, np.ndarray], threads: int, repeats: int
) -> dict[str, float]:
    """Median milliseconds per run of each ONNX model on its input, the models timed in turns (so a slow moment
    of the machine hits all alike), after one untimed run each."""
    from ._onnx import session

    sessions = {k: session(v, threads=threads) for k, v in models.items()}
    feeds = {k: {s.get_inputs()[0].name: inputs[k]} for k, s in sessions.items()}
    for k, s in sessions.items():
        s.run(None, feeds[k])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(repeats):
        for k, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds[k])
            times[k].append(1e3 * (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in times.items()}


@torch.no_grad()
def measure_latency(
    model: nn.Module, example: torch.Tensor, *, threads: int = 1, batch: int = 1, repeats: int = 30
) -> LatencyTable:
    """The latency table of ``model`` for inputs shaped like ``example`` (its batch size replaced by ``batch``)."""
    from ._onnx import to_onnx

    x = example[:1].detach().cpu().expand(batch, *example.shape[1:]).contiguous()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, COMPRESSIBLE)}
    plain = model.cpu().eval()
    with capture(plain, list(layers), inputs=True) as seen:
        plain(x)
    models, inputs = {"": to_onnx(plain, Policy(), x)}, {"": x.numpy()}
    for name, m in layers.items():
        shape = tuple(seen[name].shape)
        fp32, integer = _layer_graphs(m, shape)
        rng = np.random.default_rng(1)
        models[f"fp32:{name}"], models[f"int:{name}"] = fp32, integer
        inputs[f"fp32:{name}"] = inputs[f"int:{name}"] = np.abs(rng.standard_normal(shape)).astype(np.float32)
    everything = Policy.uniform(model, 0.0, 8, 8)
    calibration = torch.randn(8, *example.shape[1:], generator=torch.Generator().manual_seed(0))
    models["int"] = to_onnx(compress(model, everything, calibration=calibration), everything, x)
    inputs["int"] = inputs[""]
    ms = time_onnx(models, inputs, threads, repeats)
    alone = sum(ms[f"int:{n}"] - ms[f"fp32:{n}"] for n in layers)
    k = (ms["int"] - ms[""]) / alone if alone < 0 else 1.0  # in a chain the layers share their boundaries' cost
    return LatencyTable(latency_target(threads, batch), ms[""],
                        {n: (ms[f"fp32:{n}"], ms[f"fp32:{n}"] + k * (ms[f"int:{n}"] - ms[f"fp32:{n}"]))
                         for n in layers})
