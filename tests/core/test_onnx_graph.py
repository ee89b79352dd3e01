"""The ONNX graph pieces on tiny inputs: in-graph unpacking, activation quantization bit for bit, folding at load,
the file's bytes against the size objective, and the parity check catching a wrong model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper
from torch import nn

from frandi_core import (
    LayerSetting,
    Policy,
    compress,
    compressible_layers,
    fake_quantize_act,
    integer_layers,
    model_size,
    onnx_parity,
    packed,
    run_onnx,
    set_activation_quantizers_,
    to_onnx,
)
from frandi_core.models import resnet

from .test_pack import CALIBRATION, odd_model, random_policies

FUNCTION_BYTES = 1_100  # most a model-local function (one per kind of stored weight, at most 5) takes
LAYER_BYTES = 600  # most a compressed layer adds: its call, its parts' names and framing, a few small constants
# most a quantizer adds: its step, the exporter's Q/Clip/DQ and constants, Cast/Sub/Mul before fp32 layers
# (300 before the export went through torch's exporter with QDQ ops)
ACT_LAYER_BYTES = 1000


def linear(n_in: int, n_out: int, identity: bool = False) -> nn.Module:
    """A bias-free Linear layer: fed the identity matrix, its output is its weight (transposed) exactly."""
    layer = nn.Linear(n_in, n_out, bias=False).eval()
    with torch.no_grad():
        if identity:
            layer.weight.copy_(torch.eye(n_out, n_in))
        else:
            layer.weight.normal_(generator=torch.Generator().manual_seed(n_in * 7 + n_out))
    return layer


@pytest.mark.parametrize(
    "shape, sparsity, bits",
    [
        ((8, 4), 0.0, 2), ((7, 5), 0.0, 3), ((16, 3), 0.0, 8),  # dense levels
        ((33, 9), 0.5, 4), ((11, 13), 0.37, 5), ((64, 10), 0.5, None),  # a bitmask
        ((1, 2), 0.5, 3), ((1, 1), 0.6, 4), ((100, 64), 0.95, 7),  # flat indices: 1 bit, none kept, 13 bits
        ((512, 256), 0.95, 6), ((300, 40), 0.9, None),  # 17-bit indices; fp32 values at 14-bit indices
    ],
)
def test_in_graph_unpacking_gives_the_student_s_weight_exactly(
    shape: tuple[int, int], sparsity: float, bits: int | None
) -> None:
    n_in, n_out = shape
    model = linear(n_in, n_out)
    policy = Policy.from_dict({"": LayerSetting(sparsity, bits)})
    student = compress(model, policy)
    eye = torch.eye(n_in)
    got = run_onnx(to_onnx(student, policy, eye, layout="packed"), eye)
    assert torch.equal(got, student.weight.detach().T)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("signed", [False, True])
def test_activation_quantization_is_fake_quantize_act_bit_for_bit(bits: int, signed: bool) -> None:
    """Random inputs, inputs at every rounding tie (x / step = k + 0.5) and one ulp either side, outside the grid,
    through an identity layer whose input is quantized."""
    gen = torch.Generator().manual_seed(bits * 2 + signed)
    model = linear(64, 64, identity=True)
    policy = Policy.from_dict({"": LayerSetting(act_bits=bits)})
    for step in torch.exp(torch.empty(2).uniform_(-6, 1, generator=gen)):
        k = torch.arange(-2.0**bits, 2.0**bits)
        ties = (k + 0.5) * step
        x = torch.cat([torch.randn(20_000, generator=gen) * step * 2**bits / 3, ties,
                       ties.nextafter(torch.tensor(np.inf)), ties.nextafter(torch.tensor(-np.inf))])
        x = torch.cat([x, torch.zeros(-len(x) % 64)]).view(-1, 64)
        student = compress(model, policy, calibration=x)
        set_activation_quantizers_(student, {"": {"bits": bits, "signed": signed, "step": float(step)}})
        got = run_onnx(to_onnx(student, policy, x, layout="packed"), x)
        assert torch.equal(got, fake_quantize_act(x, step, bits, signed))


def test_onnxruntime_folds_the_unpacking_when_it_loads(tmp_path: Path) -> None:
    model = odd_model()
    names = [layer.name for layer in compressible_layers(model)]
    policy = Policy.from_dict({names[0]: LayerSetting(0.5, 3, 4), names[1]: LayerSetting(0.0, 4),
                               names[2]: LayerSetting(0.95), names[3]: LayerSetting(0.9, 6, 8)})
    data = to_onnx(compress(model, policy, calibration=CALIBRATION), policy, CALIBRATION, layout="packed")
    stored = onnx.load_from_string(data)
    kinds = {f.name.rstrip("0123456789") for f in stored.functions}  # layers 0 and 3 share one: 3 kinds, not 4
    assert {f.domain for f in stored.functions} == {"frandi"} and len(stored.functions) == 3
    assert kinds == {"levels_mask", "levels_dense", "values_index"}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "loaded.onnx")
    ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(tmp_path / "loaded.onnx").graph.node}
    unpacking = {"BitShift", "BitwiseAnd", "ReduceSum", "CumSum", "Gather", "ScatterElements", "ConstantOfShape"}
    assert not ops & unpacking and not any(op.startswith(("levels_", "values_")) for op in ops), ops
    assert {"QuantizeLinear", "Clip", "Conv", "Gemm"} <= ops


@pytest.mark.parametrize("arch", ["odd", "resnet"])
def test_file_bytes_are_the_size_objective_plus_the_graph(arch: str) -> None:
    """Every packed tensor is an initializer of the same bytes; beyond them the file holds the architecture's
    graph (measured on its fp32 export) and a bounded graph cost per compressed or activation-quantized layer."""
    model = odd_model() if arch == "odd" else resnet(widths=(4, 8)).eval()
    x = CALIBRATION if arch == "odd" else torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    architecture = len(to_onnx(model, Policy(), x, layout="packed")) - model_size(model, Policy()).bytes
    for policy in random_policies(model, 8, seed=1):
        student = compress(model, policy, calibration=x)
        data = to_onnx(student, policy, x, layout="packed")
        stored = onnx.load_from_string(data)
        inits = {i.name: i for i in stored.graph.initializer}
        content = packed(student, policy)
        steps = {i.raw_data for n, i in inits.items() if n.endswith(".step")}  # "<quantizer module>.step"
        for name, t in content.tensors.items():
            if name.endswith(":step"):  # an activation step: under one of its quantizer's module names
                assert t.numpy().tobytes() in steps, name
            elif ":" in name:  # a packed weight's part: the packed file's bytes
                assert inits[name].raw_data == t.numpy().tobytes(), name
        assert not set(content.layouts) & set(inits)  # no dense copy of a compressed weight
        functions = [f.ByteSize() for f in stored.functions]
        assert all(f <= FUNCTION_BYTES for f in functions)
        graph = len(data) - model_size(model, policy).bytes - architecture
        # and the integer layers' bias offsets (an fp32 per channel: the student rounds their biases)
        offsets = sum(4 * dict(model.named_modules())[n].weight.shape[0] for n in integer_layers(student))
        quantizers = len(content.activations) + len(content.points)
        most = sum(functions) + LAYER_BYTES * len(content.layouts) + ACT_LAYER_BYTES * quantizers + offsets
        assert 0 < graph <= most, (policy, graph, most)


def test_parity_check_catches_a_wrong_step_and_a_wrong_weight() -> None:
    model = resnet(widths=(4, 8)).eval()
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    policy = Policy.uniform(model, 0.5, 4, 4)
    student = compress(model, policy, calibration=x)
    data = to_onnx(student, policy, x, layout="packed")
    assert onnx_parity(student, data, x).ok(1e-4)
    for name, change in (("layer1.0.conv2.act_quant.step", 1.01), ("head.2.weight:scale", 1.001)):
        wrong = onnx.load_from_string(data)
        (init,) = [i for i in wrong.graph.initializer if i.name == name]
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(change), name))
        parity = onnx_parity(student, wrong.SerializeToString(), x)
        assert not parity.ok(1e-4), name
        assert "no tie to explain it" in parity.describe() or parity.error > 1e-4, name


def test_a_model_without_compression_exports_as_fp32(tmp_path: Path) -> None:
    model = odd_model()
    data = to_onnx(model, Policy(), CALIBRATION, layout="packed")
    stored = onnx.load_from_string(data)
    assert not stored.functions and all(i.data_type != TensorProto.UINT8 for i in stored.graph.initializer)
    assert onnx_parity(model, data, CALIBRATION).ok(1e-4)


def test_linear_only_model_named_empty_gets_its_input_quantized() -> None:
    """The model itself is the one layer (named ""): its weight key is "weight", its step "act_quant.step"."""
    torch.manual_seed(0)
    model: nn.Module = nn.Linear(6, 3).eval()
    policy = Policy.from_dict({"": LayerSetting(0.5, 4, 3)})
    x = torch.randn(64, 6)
    student = compress(model, policy, calibration=x)
    data = to_onnx(student, policy, x, layout="packed")
    assert {"weight:levels", "act_quant.step"} <= {i.name for i in onnx.load_from_string(data).graph.initializer}
    assert onnx_parity(student, data, x).ok(1e-4)
