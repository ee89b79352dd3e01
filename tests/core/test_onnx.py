"""ONNX export of the digits model, compressed and recovered: valid, int8 weights, same outputs and accuracy."""

from __future__ import annotations

import onnx
import pytest
from torch import nn

from frandi_core import (
    Policy,
    RecoveryConfig,
    SyntheticData,
    compress,
    compressible_layers,
    feature_regression_,
    model_outputs,
    run_onnx,
    teacher_targets,
    to_onnx,
)
from search import accuracy, labeled_data

TOLERANCE = 1e-4  # max |ONNX - PyTorch| relative to max |PyTorch|, as frandi export checks


@pytest.fixture(scope="module")
def student_and_onnx(reference: nn.Module, synthetic: SyntheticData) -> tuple[nn.Module, bytes]:
    """The digits ResNet at 50% sparsity and 4 bits (first and last layers 8-bit), recovered with 40 FR steps."""
    policy = Policy.uniform(reference, 0.5, 4)
    layers = dict(policy.layers)
    first, *_, last = layers
    policy = Policy.from_dict(layers | {first: {"sparsity": 0.0, "bits": 8}, last: {"sparsity": 0.0, "bits": 8}})
    student = compress(reference, policy)
    for p in student.parameters():
        p.requires_grad_(True)
    feature_regression_(student, teacher_targets(reference, synthetic.recovery), RecoveryConfig(steps=40))
    return student.eval(), to_onnx(student, policy, synthetic.heldout)


def test_onnx_is_valid_with_int8_weights_behind_dequantize(
    student_and_onnx: tuple[nn.Module, bytes], reference: nn.Module
) -> None:
    model = onnx.load_from_string(student_and_onnx[1])
    onnx.checker.check_model(model, full_check=True)
    int8 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(int8) == len(dq) == len(compressible_layers(reference))  # every layer is quantized
    assert all(dict((a.name, a.i) for a in n.attribute)["axis"] == 0 for n in dq)  # per output channel


def test_onnx_outputs_match_on_the_heldout_batch(
    student_and_onnx: tuple[nn.Module, bytes], synthetic: SyntheticData
) -> None:
    student, data = student_and_onnx
    ref = model_outputs(student, synthetic.heldout)
    err = float((run_onnx(data, synthetic.heldout) - ref).abs().max() / ref.abs().max())
    assert err <= TOLERANCE


def test_onnx_real_accuracy_matches_within_a_tenth_of_a_point(student_and_onnx: tuple[nn.Module, bytes]) -> None:
    student, data = student_and_onnx
    test = labeled_data("digits", "test")
    torch_acc = accuracy(student, test)
    x, y = test.tensors
    onnx_acc = 100.0 * float((run_onnx(data, x).argmax(1) == y).float().mean())
    assert torch_acc > 90 and abs(onnx_acc - torch_acc) <= 0.1, (torch_acc, onnx_acc)
