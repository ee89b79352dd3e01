"""ONNX export of a compressed student: quantized weights as int8 initializers behind DequantizeLinear.

Needs the optional ``onnx``, ``onnxscript`` (torch's exporter) and ``onnxruntime`` packages (``frandi[onnx]``).
Activations stay fp32: QuantizeLinear/DequantizeLinear pairs on activations wait for activation quantization.
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
from ._pack import compressed_levels
from ._policy import Policy

OPSET = 21  # DequantizeLinear with a per-output-channel ``axis`` (since 13); onnxruntime runs 21


def _need(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise FrandiError(f"ONNX export needs the '{module}' package; pip install 'frandi[onnx]'") from None


def _stripped_copy(student: nn.Module) -> nn.Module:
    """A plain copy of a compressed student; the student keeps its parametrizations.

    A deep copy shares each parametrized module's generated class with the original, and ``strip_`` deletes
    the weight property from that class: each copied module gets a class of its own first.
    """
    plain = copy.deepcopy(student)
    for m in plain.modules():
        cls = type(m)
        if parametrize.is_parametrized(m):
            m.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    return strip_(plain)


def to_onnx(student: nn.Module, policy: Policy, example: torch.Tensor) -> bytes:
    """The ONNX model of ``student`` (as ``compress`` returned it) for inputs shaped like ``example`` (any batch):
    each quantized weight is an int8 initializer and its per-channel fp32 scales, dequantized in the graph."""
    onnx = _need("onnx")
    _need("onnxscript")
    levels = compressed_levels(student, policy)  # layer weight key -> (int8 levels, fp32 scales)
    plain = _stripped_copy(student).cpu().eval()
    batch = torch.export.Dim("batch", min=1)
    example = example.detach().cpu()
    try:
        program = torch.onnx.export(
            plain, (example,), dynamo=True, optimize=False, opset_version=OPSET, verbose=False,
            input_names=["input"], output_names=["output"], dynamic_shapes=({0: batch},),
        )
    except Exception as e:  # torch.export raises many kinds; one line naming the cause is what the user needs
        why = f"{type(e).__name__}: {e}".split("\n")[0]
        raise FrandiError(f"torch could not export the model to ONNX ({why})") from None
    assert program is not None  # the dynamo exporter always returns its program
    model = program.model_proto
    graph = model.graph
    weights = {init.name: i for i, init in enumerate(graph.initializer)}
    state = plain.state_dict()
    nodes = []
    for key, (q, scale) in levels.items():
        if key not in weights:
            raise FrandiError(f"the ONNX graph holds no initializer '{key}'; cannot store that weight as int8")
        init = graph.initializer[weights[key]]
        if not np.array_equal(onnx.numpy_helper.to_array(init), state[key].numpy()):
            raise FrandiError(f"the ONNX initializer '{key}' is not the student's weight (folded by the exporter?)")
        init.CopyFrom(onnx.numpy_helper.from_array(q.numpy().astype(np.int8), f"{key}_quantized"))
        graph.initializer.append(onnx.numpy_helper.from_array(scale.numpy().astype(np.float32), f"{key}_scale"))
        nodes.append(
            onnx.helper.make_node(
                "DequantizeLinear", [f"{key}_quantized", f"{key}_scale"], [key], name=f"{key}_dequantize", axis=0
            )
        )
    for node in graph.node:  # the exporter's per-node source paths and stack traces: bulk, and local paths
        del node.metadata_props[:]
    for i, node in enumerate(nodes):  # before every other node: a topological order
        graph.node.insert(i, node)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise FrandiError(f"the ONNX model is not valid: {str(e).splitlines()[0]}") from None
    return bytes(model.SerializeToString())


def run_onnx(data: bytes, x: torch.Tensor) -> torch.Tensor:
    """The (first) output of an ONNX model (bytes) on ``x``, run by onnxruntime on CPU."""
    ort = _need("onnxruntime")
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(np.asarray(session.run(None, {name: x.detach().cpu().numpy()})[0]))
