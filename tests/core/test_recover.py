"""Feature Regression (eq. 2) and Output Discrepancy (eq. 3) on the reference model at 50% sparsity."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from frandi_core import (
    OUTPUT,
    FrandiError,
    NonFiniteError,
    Policy,
    RecoveryConfig,
    SyntheticData,
    TeacherTargets,
    compress,
    compressible_layers,
    default_feature_layers,
    feature_regression_,
    model_outputs,
    output_discrepancy,
    strip_,
    teacher_targets,
)
from frandi_core.data import accuracy, labeled_data

from .conftest import assert_unchanged, snapshot

SPARSITY = 0.5
FR = RecoveryConfig(steps=80, lr=1e-3, batch_size=64, seed=0)


def bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the BN running statistics (and batch counters)."""
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def zeros_per_layer(model: nn.Module) -> dict[str, int]:
    """Exact zeros in the weight of every compressible layer."""
    modules = dict(model.named_modules())
    return {i.name: int((modules[i.name].weight == 0).sum()) for i in compressible_layers(model)}


@dataclass
class Recovery:
    """One FR run on the reference model at 50% uniform sparsity, and what was measured around it."""

    student: nn.Module
    losses: list[float]
    od_before: float
    od_after: float
    acc_teacher: float
    acc_before: float
    acc_after: float
    teacher_calls: int
    bn_before: dict[str, torch.Tensor]
    teacher_state: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def targets(reference: nn.Module, synthetic: SyntheticData) -> TeacherTargets:
    return teacher_targets(reference, synthetic.recovery)


@pytest.fixture(scope="module")
def teacher_out(reference: nn.Module, synthetic: SyntheticData) -> torch.Tensor:
    return model_outputs(reference, synthetic.heldout)


@pytest.fixture(scope="module")
def recovery(
    reference: nn.Module, synthetic: SyntheticData, targets: TeacherTargets, teacher_out: torch.Tensor
) -> Recovery:
    digits = labeled_data("digits", "test")
    teacher_state = snapshot(reference)
    student = compress(reference, Policy.uniform(reference, SPARSITY))
    od_before = output_discrepancy(student, synthetic.heldout, teacher_out)
    acc_before = accuracy(student, digits)
    bn_before = bn_buffers(student)
    calls = 0

    def count(*_: object) -> None:
        nonlocal calls
        calls += 1

    handle = reference.register_forward_hook(count)
    try:
        losses = feature_regression_(student, targets, FR)
    finally:
        handle.remove()
    result = Recovery(
        student=student,
        losses=losses,
        od_before=od_before,
        od_after=output_discrepancy(student, synthetic.heldout, teacher_out),
        acc_teacher=accuracy(reference, digits),
        acc_before=acc_before,
        acc_after=accuracy(student, digits),
        teacher_calls=calls,
        bn_before=bn_before,
        teacher_state=teacher_state,
    )
    print(
        f"\n{SPARSITY:.0%} sparsity, FR {FR.steps} steps: OD {result.od_before:.4f} -> {result.od_after:.4f}; "
        f"digits accuracy {result.acc_before:.1f}% -> {result.acc_after:.1f}% (teacher {result.acc_teacher:.1f}%)"
    )
    return result


def test_default_feature_layers_are_the_main_blocks_and_the_output(reference: nn.Module) -> None:
    assert default_feature_layers(reference) == ["stem", "layer1", "layer2", "layer3", OUTPUT]


def test_teacher_targets_are_normalized_features_of_every_layer(
    reference: nn.Module, synthetic: SyntheticData, targets: TeacherTargets
) -> None:
    n = len(synthetic.recovery)
    assert targets.layers == tuple(default_feature_layers(reference))
    assert targets.inputs is synthetic.recovery
    for name, f in targets.features.items():
        assert f.shape[0] == n and f.dim() == 2, name
        assert torch.allclose(f.norm(dim=1), torch.ones(n), atol=1e-5), name
    with torch.no_grad():
        out = reference(synthetic.recovery)
    assert torch.allclose(targets.features[OUTPUT], out / out.norm(dim=1, keepdim=True), atol=1e-6)
    # chunked computation gives the same features
    chunked = teacher_targets(reference, synthetic.recovery, chunk=7)
    for name in targets.layers:
        assert torch.allclose(chunked.features[name], targets.features[name], atol=1e-5), name


def test_fr_lowers_od_at_least_twofold(recovery: Recovery) -> None:
    assert 0.0 < recovery.od_after * 2 <= recovery.od_before


def test_fr_raises_real_accuracy_on_held_out_digits(recovery: Recovery) -> None:
    assert recovery.acc_after > recovery.acc_before + 10.0
    assert recovery.acc_after > recovery.acc_teacher - 5.0


def test_fr_loss_decreases(recovery: Recovery) -> None:
    assert len(recovery.losses) == FR.steps
    assert sum(recovery.losses[-10:]) < 0.7 * sum(recovery.losses[:10])


def test_fr_never_runs_the_teacher(recovery: Recovery) -> None:
    assert recovery.teacher_calls == 0


def test_fr_leaves_bn_running_statistics_of_the_student_unchanged(recovery: Recovery) -> None:
    after = bn_buffers(recovery.student)
    assert list(after) == list(recovery.bn_before) and len(after) > 0
    assert all(torch.equal(after[k], v) for k, v in recovery.bn_before.items())


def test_fr_changes_the_student_weights_but_not_the_teacher(reference: nn.Module, recovery: Recovery) -> None:
    assert_unchanged(reference, recovery.teacher_state)
    assert all(p.grad is None for p in reference.parameters())
    s = recovery.student.layer2[0].conv1.parametrizations.weight.original
    t = reference.layer2[0].conv1.weight
    kept = s != 0
    assert not torch.equal(s[kept], t[kept]), "FR should have trained the kept weights"


def test_zeros_are_preserved_by_fr(reference: nn.Module, recovery: Recovery) -> None:
    stripped = strip_(copy.deepcopy(recovery.student))
    expected = {i.name: round(SPARSITY * i.numel) for i in compressible_layers(reference)}
    assert zeros_per_layer(stripped) == expected


def test_teacher_targets_and_od_leave_the_teacher_unchanged(reference: nn.Module, synthetic: SyntheticData) -> None:
    before = snapshot(reference)
    teacher_targets(reference, synthetic.recovery[:16])
    out = model_outputs(reference, synthetic.heldout[:16])
    assert output_discrepancy(reference, synthetic.heldout[:16], out) == pytest.approx(0.0, abs=1e-6)
    assert_unchanged(reference, before)


def test_od_of_the_dense_copy_is_zero(
    reference: nn.Module, synthetic: SyntheticData, teacher_out: torch.Tensor
) -> None:
    od = output_discrepancy(compress(reference, Policy()), synthetic.heldout, teacher_out)
    assert od == pytest.approx(0.0, abs=1e-6)


def test_fr_with_quantization_keeps_zeros_and_levels(reference: nn.Module, targets: TeacherTargets) -> None:
    student = compress(reference, Policy.uniform(reference, 0.4, 3))
    feature_regression_(student, targets, RecoveryConfig(steps=10, lr=1e-3))
    strip_(student)
    for name, m in student.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.detach()
            assert int((w == 0).sum()) >= round(0.4 * w.numel()), name
            assert max(w[c].unique().numel() for c in range(w.shape[0])) <= 7, name


def test_fr_is_deterministic_for_a_seed(
    reference: nn.Module, synthetic: SyntheticData, targets: TeacherTargets, teacher_out: torch.Tensor
) -> None:
    config = RecoveryConfig(steps=8, lr=1e-3, batch_size=32, seed=4)
    runs = []
    for seed in (4, 4, 5):
        student = compress(reference, Policy.uniform(reference, SPARSITY))
        losses = feature_regression_(student, targets, RecoveryConfig(**{**config.__dict__, "seed": seed}))
        od = output_discrepancy(student, synthetic.heldout, teacher_out)
        runs.append((losses, od, strip_(student).state_dict()))
    (l1, od1, s1), (l2, od2, s2), (l3, od3, s3) = runs
    assert l1 == l2 and od1 == od2
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert l1 != l3 and not all(torch.equal(s1[k], s3[k]) for k in s1), "the seed must choose the mini-batches"


def test_bf16_recovery_runs_forwards_in_bf16_and_still_halves_od(
    reference: nn.Module, synthetic: SyntheticData, targets: TeacherTargets, teacher_out: torch.Tensor
) -> None:
    student = compress(reference, Policy.uniform(reference, SPARSITY))
    od_before = output_discrepancy(student, synthetic.heldout, teacher_out)
    dtypes = []
    handle = student.stem.register_forward_hook(lambda _m, _a, out: dtypes.append(out.dtype))
    try:
        losses = feature_regression_(student, targets, RecoveryConfig(**{**FR.__dict__, "precision": "bf16"}))
        od_after = output_discrepancy(student, synthetic.heldout, teacher_out)  # measured in fp32
    finally:
        handle.remove()
    assert dtypes[0] == torch.bfloat16 and dtypes[-1] == torch.float32  # FR steps in bf16, OD in fp32
    assert all(p.dtype == torch.float32 for p in student.parameters())
    assert losses[-1] < losses[0] and od_after < od_before / 2


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(FrandiError, match="precision must be 'fp32' or 'bf16'"):
        RecoveryConfig(precision="fp16")


def test_compiled_loss_gives_the_same_recovery(reference: nn.Module, targets: TeacherTargets) -> None:
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    runs = []
    for compiled in (False, True):
        student = compress(reference, Policy.uniform(reference, SPARSITY))
        losses = feature_regression_(student, targets, RecoveryConfig(steps=4, batch_size=32), compile_loss=compiled)
        runs.append((losses, strip_(student).state_dict()))
    (plain, s1), (compiled_losses, s2) = runs
    assert counters["stats"]["unique_graphs"] > graphs  # the loss really went through torch.compile
    assert compiled_losses == pytest.approx(plain, rel=1e-4)
    assert all(torch.allclose(s1[k], s2[k], atol=1e-5) for k in s1)


def test_zero_steps_leave_the_student_as_compressed(reference: nn.Module, targets: TeacherTargets) -> None:
    student = compress(reference, Policy.uniform(reference, SPARSITY))
    before = snapshot(student)
    assert feature_regression_(student, targets, RecoveryConfig(steps=0)) == []
    assert_unchanged(student, before)


def test_non_finite_outputs_raise() -> None:
    model = nn.Sequential(nn.Linear(3, 2)).eval()
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    teacher_out = model_outputs(model, x)
    broken = compress(model, Policy())
    with torch.no_grad():
        broken[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN or inf"):
        output_discrepancy(broken, x, teacher_out)
    bad = TeacherTargets(torch.full((4, 3), float("nan")), (OUTPUT,), {OUTPUT: torch.ones(4, 2)})
    with pytest.raises(NonFiniteError, match="lr"):
        feature_regression_(compress(model, Policy()), bad, RecoveryConfig(steps=2))


def test_model_outputs_keeps_the_training_flag() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    model_outputs(model, torch.randn(4, 3))
    assert model.training
