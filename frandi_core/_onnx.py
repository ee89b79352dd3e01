"""ONNX export of a compressed student: the packed file's tensors, unpacked in the graph, and activation QDQ.

Each compressed weight is stored as the packed file stores it (bit-packed levels at their width, kept positions,
per-channel scales; see ``_onnx_graph``), and each quantized layer's input passes QuantizeLinear -> Clip ->
DequantizeLinear with its learned step. The file's bytes are the size objective plus the graph: the exported
architecture's nodes, and a few nodes and small constants per compressed layer.
Needs the optional ``onnx``, ``onnxscript`` (torch's exporter) and ``onnxruntime`` packages (``frandi[onnx]``).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ._compress import strip_
from ._errors import FrandiError
from ._pack import packed
from ._policy import Policy


def _need(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise FrandiError(f"ONNX export needs the '{module}' package; pip install 'frandi[onnx]'") from None


def own_copy(student: nn.Module) -> nn.Module:
    """A deep copy of a compressed student whose parametrizations can be removed without touching the student's.

    A deep copy shares each parametrized module's generated class with the original, and removing a
    parametrization deletes the weight property from that class: each copied module gets a class of its own.
    """
    plain = copy.deepcopy(student)
    for m in plain.modules():
        cls = type(m)
        if parametrize.is_parametrized(m):
            m.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    return plain


def _stripped_copy(student: nn.Module) -> nn.Module:
    """A plain copy of a compressed student; the student keeps its parametrizations."""
    return strip_(own_copy(student))


def _strip(graph: Any) -> None:
    """Drop what only documents the export (bulk, and local source paths): the exporter's per-node source paths
    and stack traces, its graph signature, and the intermediate shapes onnxruntime infers again anyway."""
    for node in graph.node:
        del node.metadata_props[:]
    for value in (*graph.input, *graph.output, *graph.initializer):
        del value.metadata_props[:]
    del graph.metadata_props[:]
    del graph.value_info[:]


LAYOUTS = ("fast", "packed")


def to_onnx(student: nn.Module, policy: Policy, example: torch.Tensor, *, layout: str = "fast") -> bytes:
    """The ONNX model of ``student`` (as ``compress`` returned it) for inputs shaped like ``example`` (any batch).

    ``layout="fast"``: the QDQ form onnxruntime runs on integer kernels wherever a layer's weights and input are
    quantized (``_onnx_fast``). ``layout="packed"``: the smallest file, each compressed weight stored as in the
    packed file and unpacked in the graph (fp32 convolutions), each quantized layer's input quantized."""
    onnx = _need("onnx")
    _need("onnxscript")
    if layout not in LAYOUTS:
        raise FrandiError(f"ONNX layout {layout!r} is unknown; use one of {', '.join(LAYOUTS)}")
    if layout == "fast":
        from ._onnx_fast import to_fast_onnx

        packed(student, policy)  # refuses a student the policy did not make
        return to_fast_onnx(student, policy, example)
    from ._onnx_fast import disguise_fp32_layers, export_copy, export_graph
    from ._onnx_graph import DOMAIN, Builder, add_weight

    content = packed(student, policy)  # refuses a student the policy did not make
    plain = export_copy(student, integer_bias=False)
    model = export_graph(plain, example)
    graph = model.graph
    state = plain.state_dict()
    exported = {init.name: init for init in graph.initializer}
    b = Builder({n for node in graph.node for n in (*node.input, *node.output)} | set(exported))
    for key, parts in content.layouts.items():
        init = exported.get(key)
        if init is None:
            raise FrandiError(f"the ONNX graph holds no initializer '{key}'; cannot store that weight packed")
        if not np.array_equal(onnx.numpy_helper.to_array(init), state[key].numpy()):
            raise FrandiError(f"the ONNX initializer '{key}' is not the student's weight (folded by the exporter?)")
        graph.initializer.remove(init)
        add_weight(b, key, parts, content.tensors)
    _strip(graph)
    for i, node in enumerate(b.nodes):  # constants only: before every other node is a topological order
        graph.node.insert(i, node)
    graph.initializer.extend(b.all_initializers())
    if b.functions:
        model.functions.extend(b.functions.values())
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    disguise_fp32_layers(graph)  # every layer runs in fp32 here: no DequantizeLinear before one
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise FrandiError(f"the ONNX model is not valid: {str(e).splitlines()[0]}") from None
    return bytes(model.SerializeToString())


def session(data: bytes, threads: int = 0, optimized: str | None = None) -> Any:
    """An onnxruntime CPU session of an ONNX model (bytes); ``threads`` intra-op threads (0: onnxruntime's);
    ``optimized``: a path where onnxruntime writes the graph it runs."""
    ort = _need("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if optimized:
        options.optimized_model_filepath = optimized
    options.log_severity_level = 3  # errors only: not its notes on initializers it drops
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def run_onnx(data: bytes, x: torch.Tensor) -> torch.Tensor:
    """The (first) output of an ONNX model (bytes) on ``x``, run by onnxruntime on CPU."""
    s = session(data)
    name = s.get_inputs()[0].name
    return torch.from_numpy(np.asarray(s.run(None, {name: x.detach().cpu().numpy()})[0]))
