"""The fast ONNX layout: onnxruntime runs a ResNet's layers and residual adds on integer kernels, BatchNorm folds
exactly, a tensor read by several layers is rounded once, and a model torch.fx cannot trace falls back to fp32."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from frandi_core import ActQuantizer, Policy, compress, integer_layers, onnx_fusion, onnx_parity, to_onnx
from frandi_core._onnx import session
from frandi_core.models import resnet


def optimized_ops(data: bytes, tmp_path) -> list[str]:
    path = str(tmp_path / "optimized.onnx")
    session(data, threads=1, optimized=path)
    return [n.op_type for n in onnx.load(path).graph.node]


def test_a_resnet_runs_its_layers_and_residual_adds_on_integer_kernels(tmp_path) -> None:
    torch.manual_seed(0)
    model = resnet(widths=(4, 8)).eval()
    x = torch.randn(64, 1, 8, 8)
    policy = Policy.uniform(model, 0.0, 8, 8)
    student = compress(model, policy, calibration=x)
    data = to_onnx(student, policy, x[:1])
    ops = optimized_ops(data, tmp_path)
    adds = sum(1 for n in student.graph.nodes if n.op == "call_function" and "add" in str(n.target))
    assert adds == 2 and ops.count("QLinearAdd") == adds and "Add" not in ops  # both residual adds in integers
    fusion = onnx_fusion(data)
    assert fusion["integer"] == len(integer_layers(student)) - 1 == len(policy.layers) - 1  # the head: fp32 out
    # layer2.0.conv1 and its projection shortcut read one tensor: one quantizer, one QuantizeLinear for both
    conv1, shortcut = (dict(student.named_modules())[n].act_quant for n in ("layer2.0.conv1", "layer2.0.shortcut.0"))
    assert isinstance(conv1, ActQuantizer) and conv1 is shortcut
    parity = onnx_parity(student, data, x)
    assert parity.ok(1e-4) and parity.flipped <= len(x) // 10, parity.describe()


@pytest.mark.parametrize(("bits", "act"), [(8, 8), (4, 4), (2, 3)])
@pytest.mark.parametrize("weight_clip", ["max", "mse"])
def test_batchnorm_folds_exactly_also_with_negative_scales(bits: int, act: int, weight_clip: str) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).eval()
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.weight.uniform_(-1.5, 1.5)  # some channels flip sign: their int8 levels are negated in the file
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.3, 2.0)
    x = torch.randn(256, 3, 8, 8)
    policy = Policy.uniform(model, 0.3, bits, act)
    student = compress(model, policy, calibration=x, weight_clip=weight_clip)
    data = to_onnx(student, policy, x[:1])
    parity = onnx_parity(student, data, x)
    assert parity.error <= 1e-6 and parity.mismatched == 0 and parity.flipped <= 2, parity.describe()
    assert onnx_fusion(data)["integer"] == 2  # both convolutions; the Linear writes the fp32 output


class Untraceable(nn.Module):
    """Control flow on a shape: torch.fx cannot trace it, torch.export (which knows the shape) can."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        if y.shape[-1] > 4:
            y = y * 1.0
        return self.b(y).mean((2, 3))


def untraceable_student() -> tuple[nn.Module, Policy, torch.Tensor]:
    """``Untraceable`` at W8A8, its activation ranges from 32 random inputs: (student, policy, inputs)."""
    torch.manual_seed(0)
    model = Untraceable().eval()
    x = torch.randn(32, 1, 8, 8)
    policy = Policy.uniform(model, 0.0, 8, 8)
    return compress(model, policy, calibration=x), policy, x


def test_a_model_torch_fx_cannot_trace_runs_in_fp32_as_the_student_rounds() -> None:
    student, policy, x = untraceable_student()
    assert not integer_layers(student)  # no integer points, no bias rounding: per-layer input quantizers only
    data = to_onnx(student, policy, x[:1])
    assert onnx_fusion(data)["integer"] == 0 and onnx_parity(student, data, x).ok(1e-4)


class InvertedResidual(nn.Module):
    """A MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project (no ReLU), residual add; ReLU6 between."""

    def __init__(self, c: int, expand: int = 4) -> None:
        super().__init__()
        h = c * expand
        self.body = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def test_a_mobilenet_style_net_runs_depthwise_relu6_adds_and_pooling_on_integer_kernels(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        InvertedResidual(8), InvertedResidual(8),
        nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()
    x = torch.randn(64, 1, 8, 8)
    policy = Policy.uniform(model, 0.0, 8, 8)
    student = compress(model, policy, calibration=x)
    data = to_onnx(student, policy, x[:1])
    ops = optimized_ops(data, tmp_path)
    convs = sum(1 for m in model.modules() if isinstance(m, nn.Conv2d))
    assert ops.count("QLinearConv") == convs  # depthwise ones too, each ReLU6 folded into its quantization
    assert ops.count("QLinearAdd") == 2 and "Add" not in ops
    # the only Clips left are the integer ones of signed 8-bit grids (levels -127..127 of a uint8 with zero point
    # 128): every ReLU6 went into its layer's quantization
    quantizers = {id(m): m for m in student.modules() if isinstance(m, ActQuantizer)}.values()
    assert ops.count("Clip") == sum(1 for q in quantizers if q.signed and not q.full)
    assert onnx_fusion(data)["integer"] == convs  # the Linear writes the fp32 output
    parity = onnx_parity(student, data, x)
    assert parity.ok(1e-4) and parity.flipped <= len(x) // 10, parity.describe()
