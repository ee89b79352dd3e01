"""Channel pruning: coupled shapes in residual and depthwise blocks, replay by load_packed, ONNX, size, BOPs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from frandi_core import (
    ChannelPlan,
    FrandiError,
    LatencyTable,
    Policy,
    RecoveryConfig,
    bops,
    channel_groups,
    compress,
    compressible_layers,
    feature_regression_,
    layer_macs,
    load_packed,
    model_outputs,
    model_size,
    output_discrepancy,
    pack,
    prune_channels_,
    pruned_channels,
    save_packed,
    teacher_targets,
    to_onnx,
)
from frandi_core._recover import pruned_targets
from frandi_core.models import resnet, separable

from .conftest import assert_unchanged, snapshot

SHAPE = (1, 8, 8)
X = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(3))


def trained_bn(model: nn.Module) -> nn.Module:
    """Random weights with BN statistics that are not the defaults, in eval mode."""
    with torch.no_grad():
        model.train()(torch.randn(32, *SHAPE, generator=torch.Generator().manual_seed(1)))
    return model.eval()


def family(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return trained_bn(resnet(widths=(8, 16, 32)) if arch == "resnet" else separable(widths=(8, 16, 32)))


def channel_policy(model: nn.Module, channels: float, bits: int | None = None, act_bits: int | None = None,
                   sparsity: float = 0.0) -> Policy:
    """``channels`` on every layer but the classifier; the same bits everywhere."""
    layers = compressible_layers(model)
    common = {"bits": bits, "act_bits": act_bits}
    return Policy.from_dict({layer.name: {"channels": channels, "sparsity": sparsity, **common}
                             for layer in layers[:-1]} | {layers[-1].name: common})


def convs(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear | nn.BatchNorm2d)}


@pytest.mark.parametrize("arch", ["resnet", "separable"])
def test_pruned_shapes_are_consistent_across_residual_and_depthwise_blocks(arch: str) -> None:
    model = family(arch)
    before = snapshot(model)
    student = compress(model, channel_policy(model, 0.5), calibration=X)
    assert_unchanged(model, before)
    m = convs(student)
    if arch == "resnet":
        assert m["stem.0"].out_channels == 4 and m["layer1.0.conv1"].out_channels == 4
        for block in ("layer1.0", "layer2.0", "layer3.0"):
            assert m[f"{block}.conv1"].out_channels == m[f"{block}.conv2"].in_channels
            assert m[f"{block}.bn2"].num_features == m[f"{block}.conv2"].out_channels
        for block, prev in (("layer2.0", "layer1.0.conv2"), ("layer3.0", "layer2.0.conv2")):
            # the shortcut and the block's last conv feed one add: coupled, the same channels kept
            assert m[f"{block}.shortcut.0"].out_channels == m[f"{block}.conv2"].out_channels
            assert m[f"{block}.shortcut.0"].in_channels == m[prev].out_channels == m[f"{block}.conv1"].in_channels
        # the identity shortcut of layer1 couples the stem with layer1's conv2
        assert m["layer1.0.conv2"].out_channels == m["stem.0"].out_channels
        plan = pruned_channels(student)
        assert plan is not None and plan.kept("stem.0") == plan.kept("layer1.0.conv2")
        assert m["head.2"].in_features == m["layer3.0.conv2"].out_channels == 16
    else:
        for block, prev in (("layer1", "stem.0"), ("layer2", "layer1.pw"), ("layer3", "layer2.pw")):
            dw = m[f"{block}.dw"]
            assert dw.in_channels == dw.out_channels == dw.groups == m[prev].out_channels  # still depthwise
            assert m[f"{block}.bn1"].num_features == dw.out_channels == m[f"{block}.pw"].in_channels
        assert m["head.2"].in_features == m["layer3.pw"].out_channels == 16
    assert m["head.2" if arch == "resnet" else "head.5"].out_features == 10  # the outputs are never pruned
    assert model_outputs(student, X).shape == (16, 10)
    total = sum(layer.numel for layer in compressible_layers(student))
    assert total < 0.4 * sum(layer.numel for layer in compressible_layers(model))


def test_a_coupled_group_loses_the_largest_fraction_its_layers_ask_for() -> None:
    model = family("resnet")
    groups = channel_groups(model, SHAPE)
    coupled = next(g for g in groups if "layer1.0.conv2" in g)
    assert set(coupled) == {"stem.0", "layer1.0.conv2"}
    policy = Policy.from_dict({"layer1.0.conv2": {"channels": 0.75}, "stem.0": {"channels": 0.25}})
    student = compress(model, policy, calibration=X)
    assert convs(student)["stem.0"].out_channels == 2  # 8 channels, 75% removed
    assert convs(student)["layer2.0.conv1"].out_channels == 16  # not named: untouched


def test_the_channels_kept_are_those_of_the_largest_group_norm() -> None:
    model = family("resnet")
    with torch.no_grad():
        w = dict(model.named_modules())["layer2.0.conv1"].weight
        w.mul_(0.01)
        w[[3, 5, 9, 12]] *= 1000
    student = compress(model, Policy.from_dict({"layer2.0.conv1": {"channels": 0.75}}), calibration=X)
    plan = pruned_channels(student)
    assert plan is not None and plan.kept("layer2.0.conv1") == (3, 5, 9, 12)


def test_kept_counts_round_to_the_multiple_where_the_group_is_larger() -> None:
    from frandi_core._channels import kept_count

    assert [kept_count(64, f) for f in (0.0, 0.19, 0.31, 0.99)] == [64, 52, 44, 1]
    assert [kept_count(64, f, 8) for f in (0.0, 0.19, 0.31, 0.99)] == [64, 48, 48, 8]
    assert kept_count(8, 0.5, 8) == 4 and kept_count(8, 0.5, 16) == 4  # not larger than the multiple: exact
    model = family("resnet")
    student = compress(model, channel_policy(model, 0.3), calibration=X, channel_multiple=4)
    assert {m.out_channels for m in student.modules() if isinstance(m, nn.Conv2d)} == {8, 12, 24}  # of 8, 16, 32


def test_channels_of_the_output_layer_or_no_calibration_are_refused_in_one_line() -> None:
    model = family("resnet")
    for policy, match in ((Policy.from_dict({"head.2": {"channels": 0.5}}), "model's outputs"),):
        with pytest.raises(FrandiError, match=match) as e:
            compress(model, policy, calibration=X)
        assert "\n" not in str(e.value)
    with pytest.raises(FrandiError, match="calibration inputs"):
        compress(model, channel_policy(model, 0.5))
    with pytest.raises(FrandiError, match="channels must be a fraction"):
        Policy.from_dict({"stem.0": {"channels": 1.0}})


def test_policy_json_carries_channels_only_when_set() -> None:
    model = family("resnet")
    plain = Policy.uniform(model, 0.5, 4)
    assert "channels" not in plain.to_json()
    policy = channel_policy(model, 0.25, 4)
    assert Policy.from_json(policy.to_json()) == policy
    assert json.loads(policy.to_json())["stem.0"]["channels"] == 0.25


@pytest.mark.parametrize("arch", ["resnet", "separable"])
@pytest.mark.parametrize("act_bits", [None, 8])
def test_load_packed_prunes_the_original_architecture_and_gives_the_students_outputs(
    tmp_path: Path, arch: str, act_bits: int | None
) -> None:
    model = family(arch)
    policy = channel_policy(model, 0.5, 4, act_bits, sparsity=0.3)
    student = compress(model, policy, calibration=X)
    feature_regression_(student, teacher_targets(model, X), RecoveryConfig(steps=3, lr=1e-2))
    path = tmp_path / "m.safetensors"
    save_packed(path, student, policy)
    fresh = resnet(widths=(8, 16, 32)) if arch == "resnet" else separable(widths=(8, 16, 32))
    before = snapshot(fresh)
    loaded = load_packed(path, fresh)
    assert_unchanged(fresh, before)
    assert torch.equal(model_outputs(loaded, X), model_outputs(student, X))
    assert pruned_channels(loaded) == pruned_channels(student)
    header = json.loads(path.read_bytes()[8 : 8 + int.from_bytes(path.read_bytes()[:8], "little")])
    assert ChannelPlan.from_json(header["__metadata__"]["channels"]) == pruned_channels(student)
    with pytest.raises(FrandiError, match="channel pruning does not fit this model") as e:
        load_packed(path, resnet(widths=(4, 8)) if arch == "resnet" else separable(widths=(4, 8)))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("arch", ["resnet", "separable"])
def test_size_objective_counts_the_smaller_layers_and_equals_the_packed_bytes(arch: str) -> None:
    model = family(arch)
    policy = channel_policy(model, 0.5, 4, 8, sparsity=0.3)
    student = compress(model, policy, calibration=X)
    size = model_size(student, policy, original=model)
    same_bits = model_size(model, channel_policy(model, 0.0, 4, 8, sparsity=0.3))
    assert size.bits < 0.5 * same_bits.bits and size.ratio > 2 * same_bits.ratio
    assert size.dense_bits == same_bits.dense_bits and size.density < 0.3
    data = pack(student, policy)
    assert len(data) - 8 - int.from_bytes(data[:8], "little") == size.bytes
    with pytest.raises(FrandiError, match="original=model"):
        model_size(model, policy)


def test_bops_and_latency_count_the_smaller_layers() -> None:
    model = family("resnet")
    policy = channel_policy(model, 0.5, 8, 8)
    student = compress(model, policy, calibration=X)
    full, pruned = layer_macs(model, SHAPE), layer_macs(student, SHAPE)
    assert pruned["layer2.0.conv2"] * 4 == full["layer2.0.conv2"]  # in and out channels halved
    assert pruned["head.2"] * 2 == full["head.2"]
    assert bops(pruned, policy) < 0.3 * bops(full, policy)
    table = LatencyTable("t", 10.0, {n: (2.0, 1.0) for n in full})
    scale = {n: pruned[n] / full[n] for n in full}
    assert table.predict(policy) == 10.0 - len(full)
    assert table.predict(policy, scale) == pytest.approx(10.0 + sum(r * 1.0 - 2.0 for r in scale.values()))
    assert table.predict(Policy(), scale) < 10.0


@pytest.mark.parametrize("arch", ["resnet", "separable"])
def test_fr_regresses_the_kept_channels_of_every_feature_layer(arch: str) -> None:
    model = family(arch)
    policy = channel_policy(model, 0.5, 8)
    student = compress(model, policy, calibration=X)
    targets = teacher_targets(model, X)
    kept = pruned_targets(student, targets)
    assert kept.layers == targets.layers  # no feature layer dropped: each one's kept channels are known
    assert kept.features["layer1"].shape[1] == targets.features["layer1"].shape[1] // 2
    reference = model_outputs(model, X)
    before = output_discrepancy(student, X, reference)
    feature_regression_(student, targets, RecoveryConfig(steps=30, lr=1e-2))
    assert output_discrepancy(student, X, reference) < 0.7 * before


def test_prune_channels_replays_a_plan_and_refuses_a_plan_that_does_not_fit() -> None:
    model = family("separable")
    student = compress(model, channel_policy(model, 0.5), calibration=X)
    plan = pruned_channels(student)
    assert plan is not None and ChannelPlan.from_json(plan.to_json()) == plan
    replayed = prune_channels_(separable(widths=(8, 16, 32)), plan)
    assert {n: tuple(m.weight.shape) for n, m in convs(replayed).items()} == {
        n: tuple(m.weight.shape) for n, m in convs(student).items()
    }
    bad = ChannelPlan(SHAPE, ((("layer1.pw",), (0, 99)),))
    with pytest.raises(FrandiError, match="keeps channels"):
        prune_channels_(separable(widths=(8, 16, 32)), bad)


@pytest.mark.parametrize("arch", ["resnet", "separable"])
def test_onnx_holds_the_smaller_convolutions_and_stays_integer(arch: str) -> None:
    pytest.importorskip("onnxruntime")
    import onnx

    from frandi_core import onnx_fusion, onnx_parity

    model = family(arch)
    policy = channel_policy(model, 0.5, 8, 8)
    student = compress(model, policy, calibration=X)
    data = to_onnx(student, policy, X[:1])
    parity = onnx_parity(student, data, X)
    assert parity.mismatched == 0 and parity.error < 1e-4
    graph = onnx.load_from_string(data).graph
    sizes = [int(torch.tensor(t.dims).prod()) for t in graph.initializer if len(t.dims) == 4]
    full = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    assert sorted(sizes) == sorted(m.weight.numel() for m in student.modules() if isinstance(m, nn.Conv2d))
    assert sum(sizes) < 0.4 * full
    fused = onnx_fusion(data)
    assert fused["integer"] >= len(compressible_layers(model)) - 2, fused
