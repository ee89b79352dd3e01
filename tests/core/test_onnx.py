"""ONNX export of the digits model, compressed and recovered, with and without quantized activations, in both
layouts: valid, the packed file's bytes in the graph (packed) or every integer layer on integer kernels (fast), the
student's outputs on the held-out batch and its accuracy on real data."""

from __future__ import annotations

import onnx
import pytest
from torch import nn

from frandi_core import (
    LAYOUTS,
    ActQuantizer,
    LayerSetting,
    Policy,
    RecoveryConfig,
    SyntheticData,
    activation_quantizers,
    compress,
    compressible_layers,
    feature_regression_,
    integer_layers,
    onnx_fusion,
    onnx_parity,
    packed,
    run_onnx,
    teacher_targets,
    to_onnx,
)
from frandi_core.data import accuracy, labeled_data

TOLERANCE = 1e-4  # max |ONNX - PyTorch| relative to max |PyTorch|, as frandi export checks
POLICIES = {  # weight bits, activation bits; 50% sparsity, first and last layers dense W8 (A8 where A is set)
    "W4": (4, None),
    "W4A8": (4, 8),
    "W4A4": (4, 4),
}


@pytest.fixture(scope="module", params=[(p, layout) for p in POLICIES for layout in LAYOUTS])
def student_and_onnx(
    request: pytest.FixtureRequest, reference: nn.Module, synthetic: SyntheticData
) -> tuple[nn.Module, Policy, bytes, str]:
    """The digits ResNet at 50% sparsity, W4 (A4/A8), first and last layers W8 (A8), recovered with 40 FR steps
    (learning the activation steps too), exported in a layout."""
    name, layout = request.param
    bits, act = POLICIES[name]
    policy = Policy.uniform(reference, 0.5, bits, act)
    first, *_, last = dict(policy.layers)
    edge = LayerSetting(0.0, 8, None if act is None else 8)
    policy = Policy.from_dict(dict(policy.layers) | {first: edge, last: edge})
    student = compress(reference, policy, calibration=synthetic.recovery)
    for p in student.parameters():
        p.requires_grad_(True)
    feature_regression_(student, teacher_targets(reference, synthetic.recovery), RecoveryConfig(steps=40))
    assert len(activation_quantizers(student)) == (0 if act is None else len(compressible_layers(reference)))
    return student.eval(), policy, to_onnx(student, policy, synthetic.heldout, layout=layout), layout


def test_onnx_is_valid_and_holds_the_packed_bytes(student_and_onnx: tuple[nn.Module, Policy, bytes, str]) -> None:
    student, policy, data, layout = student_and_onnx
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    if layout == "fast":  # every layer with quantized weights and input runs on integer kernels, the rest in fp32
        fusion = onnx_fusion(data)
        assert fusion["total"] == len(compressible_layers(student))
        # all but head.2, which writes the fp32 logits: onnxruntime fuses no Gemm without a quantized output
        assert fusion["integer"] == max(len(integer_layers(student)) - 1, 0), fusion
        assert (fusion["integer"] > 0) == bool(policy.act_bits())
        return
    content = packed(student, policy)
    stored = {i.name: i.raw_data for i in model.graph.initializer}
    parts = {k: v for k, v in content.tensors.items() if ":" in k and not k.endswith(":step")}
    assert parts and all(stored[k] == v.numpy().tobytes() for k, v in parts.items())
    steps = {v for k, v in stored.items() if k.endswith(".step")}  # each under one of its quantizer's names
    assert all(v.numpy().tobytes() in steps for k, v in content.tensors.items() if k.endswith(":step"))
    assert not set(content.layouts) & set(stored)  # no dense copy of any compressed weight
    dq = [n for f in model.functions for n in f.node if n.op_type == "DequantizeLinear"]
    assert dq and all(dict((a.name, a.i) for a in n.attribute)["axis"] == 0 for n in dq)  # per output channel
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    quantizers = {id(m) for m in student.modules() if isinstance(m, ActQuantizer)}  # layer inputs, integer points
    assert len(quantize) == len(quantizers) >= len(content.activations)


def test_onnx_outputs_match_on_the_heldout_batch(
    student_and_onnx: tuple[nn.Module, Policy, bytes, str], synthetic: SyntheticData
) -> None:
    student, _, data, _ = student_and_onnx
    parity = onnx_parity(student, data, synthetic.heldout)
    assert parity.error <= TOLERANCE and parity.mismatched == 0, parity.describe()
    assert parity.flipped <= parity.samples // 10, parity.describe()  # ties are rare (0-2 of 64 measured)


def test_onnx_real_accuracy_matches_within_a_tenth_of_a_point(
    student_and_onnx: tuple[nn.Module, Policy, bytes, str],
) -> None:
    student, _, data, _ = student_and_onnx
    test = labeled_data("digits", "test")
    torch_acc = accuracy(student, test)
    x, y = test.tensors
    onnx_acc = 100.0 * float((run_onnx(data, x).argmax(1) == y).float().mean())
    assert torch_acc > 90 and abs(onnx_acc - torch_acc) <= 0.1, (torch_acc, onnx_acc)
