"""The paper's formulas (eq. 1 KL of BN statistics, eq. 2 feature loss, eq. 3 output discrepancy) against hand
computations."""

from __future__ import annotations

import math

import pytest
import torch

from frandi_core import batch_stats, bn_kl, feature_loss, normalized_distance, od_from_outputs, total_variation


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_bn_kl_is_exactly_zero_when_statistics_match() -> None:
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(16, generator=gen)
    var = torch.rand(16, generator=gen) + 0.1
    assert bn_kl(mean, var, mean.clone(), var.clone()).item() == 0.0


@pytest.mark.parametrize("mean, var", [((0.3, 0.0), (1.0, 2.0)), ((0.0, 0.0), (1.5, 2.0)), ((0.0, -1e-3), (1.0, 2.0))])
def test_bn_kl_is_positive_when_mean_or_variance_differs(mean: tuple, var: tuple) -> None:
    assert bn_kl(t(*mean), t(*var), t(0.0, 0.0), t(1.0, 2.0)).item() > 0.0


def test_bn_kl_matches_closed_form_for_one_channel() -> None:
    # KL(N(1, 2) || N(0, 1)) = 0.5 * (ln(1/2) + (2 + 1) / 1 - 1) = 1 - ln(2) / 2
    assert bn_kl(t(1.0), t(2.0), t(0.0), t(1.0)).item() == pytest.approx(1 - math.log(2) / 2, rel=1e-6)
    # KL(N(0, 1) || N(3, 4)) = 0.5 * (ln 4 + (1 + 9) / 4 - 1)
    assert bn_kl(t(0.0), t(1.0), t(3.0), t(4.0)).item() == pytest.approx(0.5 * (math.log(4) + 2.5 - 1), rel=1e-6)


def test_bn_kl_direction_is_batch_against_running_and_sums_channels() -> None:
    forward = 1 - math.log(2) / 2  # KL(N(1, 2) || N(0, 1))
    reverse = 0.5 * math.log(2)  # KL(N(0, 1) || N(1, 2)): a different number, so the order is tested
    assert bn_kl(t(1.0), t(2.0), t(0.0), t(1.0)).item() != pytest.approx(reverse)
    two = bn_kl(t(1.0, 0.0), t(2.0, 1.0), t(0.0, 1.0), t(1.0, 2.0)).item()
    assert two == pytest.approx(forward + reverse, rel=1e-6)


def test_batch_stats_reduce_over_n_h_w_with_biased_variance() -> None:
    # channel 0 holds 1, 3, 5, 7 (mean 4, biased var 5); channel 1 holds 0, 0, 2, -2 (mean 0, var 2)
    x = torch.tensor([[[[1.0, 3.0]], [[0.0, 0.0]]], [[[5.0, 7.0]], [[2.0, -2.0]]]])
    assert x.shape == (2, 2, 1, 2)
    mean, var = batch_stats(x)
    assert torch.allclose(mean, t(4.0, 0.0))
    assert torch.allclose(var, t(5.0, 2.0))


def test_batch_stats_reduce_over_n_only_for_2d_inputs() -> None:
    x = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    mean, var = batch_stats(x)
    assert torch.allclose(mean, t(2.0, 20.0))
    assert torch.allclose(var, t(2 / 3, 200 / 3))


def test_batch_stats_reduce_over_n_and_length_for_3d_inputs() -> None:
    x = torch.tensor([[[1.0, 3.0]], [[5.0, 7.0]]])  # (N=2, C=1, L=2)
    mean, var = batch_stats(x)
    assert torch.allclose(mean, t(4.0)) and torch.allclose(var, t(5.0))


@pytest.mark.parametrize("shape", [(6, 3), (4, 2, 5), (3, 2, 4, 3)])
def test_batch_stats_gradients_match_finite_differences(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(shape[1], generator=gen, dtype=torch.float64)
    w = torch.randn(2, shape[1], generator=gen, dtype=torch.float64)

    def weighted(x: torch.Tensor) -> torch.Tensor:
        mean, var = batch_stats(x, shift)
        return (w[0] * mean + w[1] * var).sum()

    assert torch.autograd.gradcheck(weighted, (x,))
    assert torch.autograd.gradcheck(lambda x: batch_stats(x)[1].sum(), (x,))  # only the variance used


def test_batch_stats_stay_accurate_far_from_zero_with_a_shift() -> None:
    # mean 1e4, std 1: E[x^2] - E[x]^2 in float32 would lose every digit; around the running mean it does not
    x = 1e4 + torch.randn(64, 4, 3, 3, generator=torch.Generator().manual_seed(3))
    mean, var = batch_stats(x, torch.full((4,), 1e4))
    ref_var, ref_mean = torch.var_mean(x.double(), dim=[0, 2, 3], unbiased=False)
    assert torch.allclose(var.double(), ref_var, rtol=1e-3) and torch.allclose(mean.double(), ref_mean, rtol=1e-6)


def test_batch_stats_agree_with_batchnorm_in_training_mode() -> None:
    x = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    bn = torch.nn.BatchNorm2d(3, momentum=1.0).train()
    bn(x)  # momentum 1: running stats become this batch's (running_var is the unbiased one)
    mean, var = batch_stats(x)
    n = 8 * 5 * 5
    assert torch.allclose(mean, bn.running_mean, atol=1e-6)
    assert torch.allclose(var * n / (n - 1), bn.running_var, atol=1e-5)


def test_od_is_zero_for_identical_outputs() -> None:
    out = torch.randn(5, 10, generator=torch.Generator().manual_seed(2))
    assert od_from_outputs(out, out.clone()) == pytest.approx(0.0, abs=1e-6)


def test_od_is_invariant_to_a_positive_scale_per_sample() -> None:
    gen = torch.Generator().manual_seed(3)
    teacher, student = torch.randn(6, 10, generator=gen), torch.randn(6, 10, generator=gen)
    scale = torch.tensor([0.01, 0.5, 1.0, 2.0, 7.0, 1e3]).unsqueeze(1)
    assert od_from_outputs(teacher, scale * teacher) == pytest.approx(0.0, abs=1e-6)
    assert od_from_outputs(teacher, scale * student) == pytest.approx(od_from_outputs(teacher, student), rel=1e-5)
    assert od_from_outputs(scale * teacher, student) == pytest.approx(od_from_outputs(teacher, student), rel=1e-5)


def test_od_is_at_most_two_and_two_for_opposite_outputs() -> None:
    gen = torch.Generator().manual_seed(4)
    teacher = torch.randn(200, 10, generator=gen)
    assert od_from_outputs(teacher, -3.0 * teacher) == pytest.approx(2.0, rel=1e-6)
    per_sample = normalized_distance(teacher, torch.randn(200, 10, generator=gen))
    assert per_sample.max().item() <= 2.0 + 1e-6
    assert per_sample.min().item() >= 0.0


def test_od_matches_hand_computation_for_two_samples() -> None:
    teacher = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    student = torch.tensor([[4.0, 3.0], [0.0, 2.0]])
    # sample 1: (0.6, 0.8) vs (0.8, 0.6) -> sqrt(0.08); sample 2: (1, 0) vs (0, 1) -> sqrt(2)
    per_sample = normalized_distance(teacher, student)
    assert torch.allclose(per_sample, t(math.sqrt(0.08), math.sqrt(2.0)))
    assert od_from_outputs(teacher, student) == pytest.approx((math.sqrt(0.08) + math.sqrt(2)) / 2, rel=1e-6)


def test_normalized_distance_flattens_feature_maps_per_sample() -> None:
    a = torch.zeros(2, 2, 1, 1)
    a[0, 0], a[1, 1] = 1.0, 5.0
    b = torch.zeros(2, 2, 1, 1)
    b[0, 0], b[1, 0] = 2.0, 1.0
    assert torch.allclose(normalized_distance(a, b), t(0.0, math.sqrt(2)))


def test_feature_loss_on_unit_teacher_rows_equals_the_normalized_distance() -> None:
    # FR compares student features with cached unit-norm teacher rows: same value as eq. 2 on raw features
    gen = torch.Generator().manual_seed(5)
    student, teacher = torch.randn(4, 3, 2, 2, generator=gen), 3 * torch.randn(4, 12, generator=gen)
    unit = teacher / teacher.norm(dim=1, keepdim=True)
    one = normalized_distance(student, teacher).mean()
    assert torch.allclose(feature_loss([student], [unit]), one, atol=1e-6)
    assert torch.allclose(feature_loss([student, 2 * student], [unit, unit]), 2 * one, atol=1e-6)  # summed layers
    assert feature_loss([t(3.0, 4.0).view(1, 2)], [t(0.8, 0.6).view(1, 2)]).item() == pytest.approx(math.sqrt(0.08))


def _composed_distance(a: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    a = a.flatten(1)
    return (a / a.norm(dim=1, keepdim=True).clamp_min(1e-12) - unit).norm(dim=1)


def test_feature_loss_gradient_matches_autograd_of_the_formula() -> None:
    # the hand-written backward against finite differences and against autograd of the composed formula
    gen = torch.Generator().manual_seed(6)
    a = torch.randn(5, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    unit = torch.nn.functional.normalize(torch.randn(5, 18, generator=gen, dtype=torch.float64), dim=1)
    unit[0] = a[0].detach().flatten() / a[0].detach().norm()  # a row at distance 0: gradient 0, not NaN
    assert torch.autograd.gradcheck(lambda x: feature_loss([x], [unit]), (a,))
    (mine,) = torch.autograd.grad(feature_loss([a], [unit]), a)
    (ref,) = torch.autograd.grad(_composed_distance(a, unit).mean(), a)
    assert torch.allclose(mine, ref, atol=1e-6)
    assert torch.isfinite(mine).all() and mine[0].abs().max() < 1e-6


def test_feature_loss_of_bf16_features_is_fp32_with_a_bf16_gradient() -> None:
    a = torch.randn(4, 8).bfloat16().requires_grad_()
    unit = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    d = feature_loss([a], [unit])
    assert d.dtype == torch.float32
    d.backward()
    assert a.grad is not None and a.grad.dtype == torch.bfloat16 and torch.isfinite(a.grad.float()).all()


def test_total_variation_matches_hand_computation() -> None:
    x = torch.tensor([[[[0.0, 1.0], [3.0, 5.0]]]])
    # vertical |3-0|, |5-1| -> mean 3.5; horizontal |1-0|, |5-3| -> mean 1.5
    assert total_variation(x).item() == pytest.approx(5.0)
    assert total_variation(torch.ones(4, 3)).item() == 0.0
