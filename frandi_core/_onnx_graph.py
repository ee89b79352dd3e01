"""ONNX graph pieces for a compressed student: packed weights unpacked inside the graph, and input-activation QDQ.

Each packed weight part (``_pack.packed``) becomes an initializer holding the packed file's bytes; standard ops
(BitShift, BitwiseAnd, Reshape, Slice, Mul, ReduceSum, CumSum, Gather, ScatterElements) rebuild the int8 levels
from them as ``_pack.unpack_bits`` does, and DequantizeLinear applies the per-output-channel scales. Every input
of those nodes is a constant, so onnxruntime folds them into plain tensors when it loads a session: the file
holds the packed bytes, the running graph the weights. Imported only once ``onnx`` is known to be installed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from onnx import FunctionProto, NodeProto, TensorProto, helper, numpy_helper

from ._errors import FrandiError
from ._size import index_bits

SHARED = "frandi."  # prefix of the small constants every layer shares
DOMAIN = "frandi"  # domain of the model-local functions that rebuild weights
OPSET = 21  # DequantizeLinear with a per-output-channel ``axis`` (since 13); onnxruntime runs 21


class Builder:
    """Nodes, initializers and model-local functions to add to a graph. Constants are shared by name; nodes are
    unnamed and intermediate outputs get short generated names: the graph's bytes are overhead over the
    packed tensors, so each weight's nodes become one call of a function that layers of its kind share."""

    def __init__(self, taken: set[str]) -> None:
        self.nodes: list[NodeProto] = []
        self.initializers: dict[str, TensorProto] = {}
        self.functions: dict[bytes, FunctionProto] = {}  # by body: layers whose nodes differ in names share one
        self._fixed: dict[str, np.ndarray] = {}
        self._taken = taken
        self._count = 0

    def const(self, name: str, value: Any, dtype: Any = None) -> str:
        """An initializer ``name`` holding ``value``; a second call with the same name reuses the first."""
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.asarray(value, dtype=dtype), name)
        return name

    def fixed(self, name: str, value: Any, dtype: Any) -> str:
        """A constant of the unpacking itself: a Constant node inside the function bodies that use it."""
        self._fixed[name] = np.asarray(value, dtype=dtype)
        return name

    def all_initializers(self) -> list[TensorProto]:
        """The initializers, and the fixed constants that nodes outside any function read."""
        used = {i for n in self.nodes for i in n.input}
        fixed = [numpy_helper.from_array(v, k) for k, v in self._fixed.items() if k in used]
        return [*self.initializers.values(), *fixed]

    def tensor(self, name: str, t: torch.Tensor, shape: tuple[int, ...] | None = None) -> str:
        """An initializer ``name`` holding the bytes of ``t`` (viewed as ``shape``)."""
        array = t.detach().cpu().numpy()
        return self.const(name, array if shape is None else array.reshape(shape))

    def name(self) -> str:
        """A fresh short tensor name that the graph does not use."""
        while True:
            self._count += 1
            name = f"_{self._count}"
            if name not in self._taken:
                return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        """Add a node; returns its output (``output``, or a generated name)."""
        out = output or self.name()
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def outline(self, start: int, kind: str) -> None:
        """Replace the nodes from ``start`` on (their last output is the result) by one call of a model-local
        function with their body: inputs are the initializers they read, fixed constants are Constant nodes."""
        body = self.nodes[start:]
        del self.nodes[start:]
        made = [n.output[0] for n in body]
        used = list(dict.fromkeys(i for n in body for i in n.input if i not in made))
        params = [i for i in used if i not in self._fixed]
        local = {name: f"x{k}" for k, name in enumerate(params)} | {name: f"t{k}" for k, name in enumerate(made)}
        local |= {i: f"c{k}" for k, i in enumerate(u for u in used if u in self._fixed)}
        nodes = [helper.make_node("Constant", [], [local[i]], value=numpy_helper.from_array(self._fixed[i]))
                 for i in used if i in self._fixed]
        for n in body:
            copy = NodeProto()
            copy.CopyFrom(n)
            copy.input[:] = [local[i] for i in n.input]
            copy.output[:] = [local[o] for o in n.output]
            nodes.append(copy)
        signature = b"".join(n.SerializeToString() for n in nodes)
        if signature not in self.functions:
            self.functions[signature] = helper.make_function(
                DOMAIN, f"{kind}{len(self.functions)}", [local[i] for i in params], [local[made[-1]]], nodes,
                [helper.make_opsetid("", OPSET)],
            )
        self.nodes.append(helper.make_node(self.functions[signature].name, params, [made[-1]], domain=DOMAIN))


def unpack_bits(b: Builder, data: str, width: int, count: int) -> str:
    """Graph form of ``_pack.unpack_bits``: the ``count`` integers stored at ``width`` bits (least significant
    first) in the uint8 initializer ``data`` (shaped [bytes, 1]), as int32."""
    shifted = b.op("BitShift", [data, b.fixed(SHARED + "shifts", np.arange(8), np.uint8)], direction="RIGHT")
    bits = b.op("BitwiseAnd", [shifted, b.fixed(SHARED + "one", [1], np.uint8)])  # [bytes, 8], low bit first
    flat = b.op("Reshape", [bits, b.fixed(SHARED + "flat", [-1], np.int64)])
    used = b.op("Slice", [flat, b.fixed(SHARED + "start", [0], np.int64), b.const(b.name(), [count * width], np.int64)])
    if width == 1:
        return b.op("Cast", [used], to=TensorProto.INT32)
    rows = b.op("Reshape", [used, b.const(f"{SHARED}rows{width}", [-1, width], np.int64)])
    wide = b.op("Cast", [rows], to=TensorProto.INT32)
    weighted = b.op("Mul", [wide, b.const(f"{SHARED}powers{width}", 1 << np.arange(width), np.int32)])
    return b.op("ReduceSum", [weighted, b.fixed(SHARED + "axis1", [1], np.int64)], keepdims=0)


def _place(b: Builder, key: str, layout: dict[str, Any], values: str, dtype: np.dtype) -> str:
    """The flat dense weight (levels or values, of ``dtype``) with the kept ``values`` at their stored positions,
    zero elsewhere."""
    numel = int(np.prod(layout["shape"]))
    if layout["positions"] == "dense":
        return values
    if layout["positions"] == "mask":  # the k-th kept entry is the k-th value: a running count of the mask
        kept = unpack_bits(b, f"{key}:mask", 1, numel)
        count = b.op("CumSum", [kept, b.fixed(SHARED + "axis0", 0, np.int64)])
        where = b.op("Mul", [count, kept])  # 0 where pruned: the zero put in front of the values
        padded = b.op("Concat", [b.fixed(f"{SHARED}pad_{dtype.name}", [0], dtype), values], axis=0)
        return b.op("Gather", [padded, where], axis=0)
    if layout["positions"] == "index":
        index = unpack_bits(b, f"{key}:index", index_bits(numel), layout["nnz"])
        zeros = b.op("ConstantOfShape", [b.const(b.name(), [numel], np.int64)],
                     value=numpy_helper.from_array(np.zeros(1, dtype)))
        return b.op("ScatterElements", [zeros, index, values], axis=0)
    raise FrandiError(f"weight '{key}': unknown positions {layout['positions']!r}")


def add_weight(b: Builder, key: str, layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Nodes computing the tensor ``key`` (the weight) from its packed parts, each stored as an initializer
    with the packed file's bytes (bit-packed parts shaped [bytes, 1], as the unpacking wants them)."""
    for name, t in tensors.items():
        if name.startswith(f"{key}:"):
            b.tensor(name, t, (-1, 1) if t.dtype == torch.uint8 else None)
    start = len(b.nodes)
    shape = b.const(b.name(), layout["shape"], np.int64)
    bits = layout["bits"]
    if bits is None:
        b.op("Reshape", [_place(b, key, layout, f"{key}:values", np.dtype(np.float32)), shape], key)
        b.outline(start, f"values_{layout['positions']}")
        return
    unsigned = unpack_bits(b, f"{key}:levels", bits, layout["nnz"])
    offset = b.op("Sub", [unsigned, b.const(f"{SHARED}qmax{bits}", 2 ** (bits - 1) - 1, np.int32)])
    levels = b.op("Cast", [offset], to=TensorProto.INT8)
    shaped = b.op("Reshape", [_place(b, key, layout, levels, np.dtype(np.int8)), shape])
    b.op("DequantizeLinear", [shaped, f"{key}:scale"], key, axis=0)
    b.outline(start, f"levels_{layout['positions']}")
