"""The fast ONNX layout: the QDQ form onnxruntime's CPU provider runs on integer kernels.

Every activation quantizer of the student (each layer's input quantizer and each integer point, see
``_intpoints``) becomes QuantizeLinear -> [Clip to its grid] -> DequantizeLinear, exported where the student
rounds, so the file computes what the student computes. A layer whose input is quantized and whose weight is
quantized stores its int8 levels and per-output-channel scales (its BatchNorm folded into them) behind a
DequantizeLinear, its bias as int32 levels of (input step x weight scale): onnxruntime fuses such a layer, with
the QuantizeLinear after it, into QLinearConv / QGemm and keeps the tensors between fused layers in 8 bits.
Layers with fp32 inputs keep fp32 weights (``levels x scale``, bit for bit the student's), so they run as fast as
the user's own fp32 export; their quantized inputs are dequantized by Cast and Mul, which onnxruntime leaves
alone (behind a DequantizeLinear it would re-quantize their fp32 weights per tensor: another model).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ._actquant import ActQuantizer, grid
from ._errors import FrandiError
from ._intpoints import BiasRounding, integer_layers
from ._onnx import _strip, own_copy
from ._pack import _compressed, weight_key
from ._policy import Policy

OPSET = 21
STEP = "step"  # each quantizer's step is the initializer "<quantizer's module name>.step"
_INTEGER_OPS = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat", "ConvInteger", "MatMulInteger",
                "DynamicQuantizeMatMul"}
_FLOAT_OPS = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "NchwcConv"}


@torch.library.custom_op("frandi::qdq", mutates_args=())
def qdq(x: torch.Tensor, step: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """``fake_quantize_act`` without its gradient: round x / step half to even, clamp to [lo, hi], times step."""
    return torch.clamp(torch.round(x / step), lo, hi) * step


@qdq.register_fake
def _(x: torch.Tensor, step: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    return torch.empty_like(x)


def _qdq_onnx(x: Any, step: Any, lo: int, hi: int) -> Any:
    """The ONNX form of ``qdq``: QuantizeLinear to uint8 (zero point 0, or 128 for a signed grid: onnxruntime
    fuses layers whose tensors are all uint8) -> Clip to the grid's levels -> DequantizeLinear."""
    from onnxscript import ir, opset21

    op: Any = opset21  # onnxscript's stubs type these ops for its own script functions, not for tracing

    zp = 128 if lo < 0 else 0
    zero = op.Constant(value=ir.tensor(np.array(zp, np.uint8)))
    q = op.QuantizeLinear(x, step, zero)
    if (lo + zp, hi + zp) != (0, 255):
        q = op.Clip(q, op.Constant(value=ir.tensor(np.array(lo + zp, np.uint8))),
                    op.Constant(value=ir.tensor(np.array(hi + zp, np.uint8))))
    return op.DequantizeLinear(q, step, zero)


class _ExportQuantizer(nn.Module):
    """An ActQuantizer's forward as one ``frandi::qdq`` call, its step a buffer (an initializer in the file)."""

    def __init__(self, q: ActQuantizer) -> None:
        super().__init__()
        self.lo, self.hi = grid(q.bits, q.signed, q.full)
        self.register_buffer(STEP, q.scale.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.frandi.qdq(x, self.step, self.lo, self.hi)


class _Offset(nn.Module):
    """A bias rounding's offset as a constant (the packed layout runs fp32 layers: it adds what the student adds)."""

    def __init__(self, offset: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("offset", offset.detach().float().clone())

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        offset = self.get_buffer("offset")
        return y + offset.view(1, -1, *([1] * (y.dim() - 2)))


def export_copy(student: nn.Module, *, integer_bias: bool = True) -> nn.Module:
    """A copy of the student with plain weights (its parametrizations baked in) and each activation quantizer
    (one object however many parents share it) replaced by its export form; each bias rounding dropped
    (``integer_bias``: the file rounds the bias itself, to int32 levels) or kept as a constant offset."""
    plain = own_copy(student).cpu().eval()
    for m in plain.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    made: dict[int, nn.Module] = {}
    for parent in list(plain.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ActQuantizer):
                setattr(parent, name, made.setdefault(id(child), _ExportQuantizer(child)))
            elif isinstance(child, BiasRounding):
                setattr(parent, name, nn.Identity() if integer_bias else _Offset(child.offset()))
    return plain


def export_graph(plain: nn.Module, example: torch.Tensor) -> Any:
    """torch's ONNX model of the export copy, batch dimension dynamic, each quantizer as QDQ nodes."""
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(
            plain, (example.detach().cpu(),), dynamo=True, optimize=False, opset_version=OPSET, verbose=False,
            input_names=["input"], output_names=["output"], dynamic_shapes=({0: batch},),
            custom_translation_table={torch.ops.frandi.qdq.default: _qdq_onnx},
        )
    except Exception as e:  # torch.export raises many kinds; one line naming the cause is what the user needs
        why = f"{type(e).__name__}: {e}".split("\n")[0]
        raise FrandiError(f"torch could not export the model to ONNX ({why})") from None
    assert program is not None
    return program.model_proto


class _Graph:
    """Index of an ONNX graph: producers, consumers and initializers by tensor name."""

    def __init__(self, graph: Any) -> None:

        self.graph = graph
        self.inits = {i.name: i for i in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.users: dict[str, list[Any]] = {}
        for n in graph.node:
            for i in n.input:
                self.users.setdefault(i, []).append(n)

    def value(self, name: str) -> np.ndarray:
        """A constant tensor: an initializer, or the output of a Constant node."""
        from onnx import numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is None or node.op_type != "Constant":
            raise FrandiError(f"the ONNX tensor '{name}' is not a constant")
        a = node.attribute[0]
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        kinds = {"value_float": (a.f, np.float32), "value_int": (a.i, np.int64),
                 "value_floats": (list(a.floats), np.float32), "value_ints": (list(a.ints), np.int64)}
        if a.name not in kinds:
            raise FrandiError(f"the ONNX constant '{name}' holds a {a.name}")
        return np.array(kinds[a.name][0], kinds[a.name][1])

    def set(self, name: str, array: np.ndarray) -> None:
        from onnx import numpy_helper

        if name in self.inits:
            self.graph.initializer.remove(self.inits[name])
        self.inits[name] = numpy_helper.from_array(array, name)
        self.graph.initializer.append(self.inits[name])

    def step_of(self, tensor: str) -> str | None:
        """The step initializer of the DequantizeLinear that produces ``tensor``, if one does."""
        node = self.producer.get(tensor)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[1].endswith(f".{STEP}"):
            return str(node.input[1])
        return None


def _fold_norm(g: _Graph, node: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """If the layer's output only feeds a BatchNormalization, remove it: returns its per-channel (multiplier,
    shift), output = multiplier * layer + shift."""
    users = g.users.get(node.output[0], [])
    if len(users) != 1 or users[0].op_type != "BatchNormalization" or node.output[0] in {
            o.name for o in g.graph.output}:
        return None
    bn = users[0]
    gamma, beta, mean, var = (g.value(i).astype(np.float64) for i in bn.input[1:5])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    mult = gamma / np.sqrt(var + eps)
    node.output[0] = bn.output[0]
    g.graph.node.remove(bn)
    return mult, beta - mean * mult


def _integer_layer(g: _Graph, node: Any, module: nn.Module, layer: str, setting: Any) -> None:
    """Store one layer as int8 levels x folded per-channel scales and an int32 bias behind DequantizeLinear."""
    from onnx import helper

    key = weight_key(layer)
    levels, _, scale = _compressed(module, layer, setting)
    levels_np = levels.numpy().astype(np.int8)
    out = levels_np.shape[0]
    scale64 = scale.numpy().astype(np.float64)  # type: ignore[union-attr]
    bias_param = getattr(module, "bias", None)
    bias = np.zeros(out) if bias_param is None else bias_param.detach().cpu().double().numpy()
    folded = _fold_norm(g, node)
    if folded is not None:
        mult, shift = folded
        scale64, bias = scale64 * mult, bias * mult + shift
    flip = scale64 < 0  # a negative BN scale: negate the channel's levels (the grid is symmetric)
    levels_np[flip] = -levels_np[flip]
    w_scale = np.abs(scale64).astype(np.float32)
    x_step = float(g.value(g.step_of(node.input[0])))  # type: ignore[arg-type]
    b_scale = (w_scale.astype(np.float64) * x_step).astype(np.float32)
    b_levels = np.round(bias / np.maximum(b_scale.astype(np.float64), 1e-30))
    if np.abs(b_levels).max(initial=0) >= 2**31:
        raise FrandiError(f"layer '{layer}': its bias does not fit int32 levels of its input step x weight scale")
    names = {part: f"{key}:{part}" for part in ("levels", "scale", "bias_levels", "bias_scale")}
    g.set(names["levels"], levels_np)
    g.set(names["scale"], w_scale)
    g.set(names["bias_levels"], b_levels.astype(np.int32))
    g.set(names["bias_scale"], b_scale)
    at = list(g.graph.node).index(node)
    weight, biased = f"{key}:int8", f"{key}:int32"
    g.graph.node.insert(at, helper.make_node("DequantizeLinear", [names["levels"], names["scale"]], [weight], axis=0))
    g.graph.node.insert(at, helper.make_node("DequantizeLinear", [names["bias_levels"], names["bias_scale"]],
                                             [biased], axis=0))
    if g.inits.get(key) is not None and not any(key in n.input for n in g.graph.node if n is not node):
        g.graph.initializer.remove(g.inits.pop(key))
    node.input[1] = weight
    if len(node.input) > 2:
        node.input[2] = biased
    else:
        node.input.append(biased)


def _fold_casts(g: _Graph) -> None:
    """Casts of constants (the exporter's Clip bounds of ReLU6, a CastLike to the fp32 activations) become
    constants: onnxruntime then sees the Clip before a QuantizeLinear as bounds and folds it into the layer."""
    from onnx import helper

    for node in list(g.graph.node):
        source = g.producer.get(node.input[0]) if node.input else None
        constant = node.input and (node.input[0] in g.inits or getattr(source, "op_type", None) == "Constant")
        if node.op_type == "Cast" and constant:
            to = helper.tensor_dtype_to_np_dtype(next(a.i for a in node.attribute if a.name == "to"))
        elif node.op_type == "CastLike" and constant and g.value(node.input[0]).dtype.kind == "f":
            to = np.dtype(np.float32)  # the exported graph computes in fp32
        else:
            continue
        g.set(node.output[0], g.value(node.input[0]).astype(to))
        g.graph.node.remove(node)


def _drop_dead(graph: Any) -> None:
    """Remove the nodes whose outputs nothing reads (what computed a replaced weight or bias)."""
    while True:
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in read for o in n.output)]
        if not dead:
            for init in [i for i in graph.initializer if i.name not in read]:
                graph.initializer.remove(init)
            return
        for n in dead:
            graph.node.remove(n)


def _layer_nodes(g: _Graph) -> dict[str, Any]:
    """Weight initializer name -> the Conv/Gemm node that reads it as its weight."""
    return {n.input[1]: n for n in g.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 1}


def _disguise(g: _Graph, node: Any) -> None:
    """A fp32 layer reading a dequantized input: Cast (- zero point) * step instead of DequantizeLinear there,
    the same values, which onnxruntime leaves alone."""
    from onnx import TensorProto, helper

    step = g.step_of(node.input[0])
    if step is None:
        return
    dq = g.producer[node.input[0]]
    at = list(g.graph.node).index(node)
    base = f"{node.input[0]}:fp32_{at}"
    nodes = [helper.make_node("Cast", [dq.input[0]], [f"{base}:level"], to=TensorProto.FLOAT)]
    zero = float(g.value(dq.input[2])) if len(dq.input) > 2 and dq.input[2] else 0.0
    if zero:
        g.set(f"{base}:zero", np.array(zero, np.float32))
        nodes.append(helper.make_node("Sub", [f"{base}:level", f"{base}:zero"], [f"{base}:centered"]))
    nodes.append(helper.make_node("Mul", [nodes[-1].output[0], step], [base]))
    for i, n in enumerate(nodes):
        g.graph.node.insert(at + i, n)
    node.input[0] = base


def to_fast_onnx(student: nn.Module, policy: Policy, example: torch.Tensor) -> bytes:
    """The fast (integer) ONNX model of ``student`` as ``compress`` returned it, for inputs like ``example``."""
    import onnx

    model = export_graph(export_copy(student), example)
    g = _Graph(model.graph)
    _fold_casts(g)
    modules = dict(student.named_modules())
    nodes = _layer_nodes(g)
    settings = policy.as_dict()
    for layer in sorted(integer_layers(student)):
        node = nodes.get(weight_key(layer))
        if node is None or g.step_of(node.input[0]) is None:
            raise FrandiError(f"the ONNX graph has no Conv/Gemm node reading a quantized input with '{layer}'")
        _integer_layer(g, node, modules[layer], layer, settings[layer])
    _drop_dead(model.graph)
    disguise_fp32_layers(model.graph)
    _strip(model.graph)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise FrandiError(f"the ONNX model is not valid: {str(e).splitlines()[0]}") from None
    return bytes(model.SerializeToString())


def disguise_fp32_layers(graph: Any) -> None:
    """Every Conv/Gemm whose weight is not dequantized from int8 reads its quantized input through Cast/Mul."""
    g = _Graph(graph)
    for node in list(graph.node):
        weight = g.producer.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type in ("Conv", "Gemm") and getattr(weight, "op_type", None) != "DequantizeLinear":
            _disguise(g, node)


def onnx_fusion(data: bytes) -> dict[str, int]:
    """How onnxruntime (CPU, default optimizations) runs an ONNX model's layers: ``integer`` Conv/Gemm/MatMul
    nodes on integer kernels and ``float`` ones in fp32 in its optimized graph, and ``total`` layers."""
    import tempfile
    from pathlib import Path

    import onnx

    from ._onnx import session

    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "optimized.onnx")
        session(data, threads=1, optimized=path)
        ops = [n.op_type for n in onnx.load(path).graph.node]
    integer = sum(op in _INTEGER_OPS for op in ops)
    floating = sum(op in _FLOAT_OPS for op in ops)
    return {"integer": integer, "float": floating, "total": integer + floating}

