"""Activation quantization: fake-quant numerics, calibration, the quantizers compress attaches, FR with them."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from frandi_core import (
    CALIBRATIONS,
    FrandiError,
    Policy,
    RecoveryConfig,
    SyntheticData,
    activation_quantizers,
    activation_settings,
    capture,
    compress,
    fake_quantize_act,
    feature_regression_,
    model_outputs,
    output_discrepancy,
    point_settings,
    set_activation_quantizers_,
    strip_,
    teacher_targets,
)
from frandi_core._intpoints import set_integer_points
from frandi_core._onnx import _stripped_copy

from .conftest import assert_unchanged, snapshot


def test_unsigned_grid_values_and_clipping() -> None:
    x = torch.tensor([-1.0, 0.0, 0.2, 0.26, 0.74, 1.4, 1.5, 9.0])
    q = fake_quantize_act(x, torch.tensor(0.5), bits=2, signed=False)  # levels 0, 0.5, 1, 1.5
    assert q.tolist() == [0.0, 0.0, 0.0, 0.5, 0.5, 1.5, 1.5, 1.5]


def test_signed_grid_is_symmetric() -> None:
    x = torch.linspace(-5, 5, 101)
    q = fake_quantize_act(x, torch.tensor(1.0), bits=3, signed=True)  # levels -3..3
    assert sorted(set(q.tolist())) == [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
    assert torch.equal(q, -fake_quantize_act(-x, torch.tensor(1.0), bits=3, signed=True))


def test_straight_through_gradient_inside_the_range_only() -> None:
    x = torch.tensor([-0.7, 0.3, 1.2, 2.9, 3.6], requires_grad=True)
    fake_quantize_act(x, torch.tensor(1.0), bits=2, signed=False).sum().backward()  # range [0, 3]
    assert x.grad is not None
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_step_size_gradient_is_lsq() -> None:
    # d q / d s = round(x/s) - x/s inside the range, the clamp bound outside (Esser et al. 2020, eq. 3)
    x = torch.tensor([0.3, 1.2, 5.0, -1.0])
    s = torch.tensor(1.0, requires_grad=True)
    fake_quantize_act(x, s, bits=2, signed=False).sum().backward()
    expected = (0 - 0.3) + (1 - 1.2) + 3 + 0
    assert s.grad is not None and abs(float(s.grad) - expected) < 1e-6


def test_mse_clips_tighter_than_minmax_on_a_heavy_tailed_input() -> None:
    torch.manual_seed(0)
    x = torch.distributions.StudentT(2.0).sample((200_000,)).abs()  # heavy tails: a few huge values
    top = CALIBRATIONS["minmax"](x, 4, False)
    mse = CALIBRATIONS["mse"](x, 4, False)
    assert mse < 0.5 * top

    def err(clip: float) -> float:
        return float((fake_quantize_act(x, torch.tensor(clip / 15), 4, False) - x).square().mean())

    assert err(mse) < err(top)
    assert CALIBRATIONS["percentile"](x, 4, False) < top


def test_compress_attaches_calibrated_quantizers(reference: nn.Module, synthetic: SyntheticData) -> None:
    before = snapshot(reference)
    policy = Policy.uniform(reference, 0.0, 8, 4)
    student = compress(reference, policy, calibration=synthetic.recovery)
    assert_unchanged(reference, before)
    quantizers = activation_quantizers(student)
    assert set(quantizers) == set(policy.act_bits())
    assert quantizers["stem.0"].signed  # the normalized image: negative values
    assert not quantizers["layer1.0.conv1"].signed and not quantizers["head.2"].signed  # after a ReLU
    with torch.no_grad(), capture(student, ["layer1.0.conv1"], inputs=True) as seen:
        student(synthetic.heldout)
    x, q = seen["layer1.0.conv1"], quantizers["layer1.0.conv1"]
    on_grid = x / q.scale.detach()
    assert torch.allclose(on_grid, torch.round(on_grid), atol=1e-4)  # the layer sees grid values
    levels = torch.unique(torch.round(on_grid))
    assert len(levels) <= 16 and float(levels.min()) >= 0


@pytest.mark.parametrize("method", sorted(CALIBRATIONS))
def test_every_calibration_gives_a_usable_model(
    method: str, reference: nn.Module, synthetic: SyntheticData
) -> None:
    teacher_out = model_outputs(reference, synthetic.heldout)
    od8 = output_discrepancy(
        compress(reference, Policy.uniform(reference, 0.0, 8, 8), calibration=synthetic.recovery, method=method),
        synthetic.heldout,
        teacher_out,
    )
    od3 = output_discrepancy(
        compress(reference, Policy.uniform(reference, 0.0, 8, 3), calibration=synthetic.recovery, method=method),
        synthetic.heldout,
        teacher_out,
    )
    assert od8 < 0.05 < od3  # 8-bit activations barely move the outputs, 3-bit ones do


def test_activation_policy_without_calibration_is_refused(reference: nn.Module) -> None:
    with pytest.raises(FrandiError, match="pass calibration inputs"):
        compress(reference, Policy.uniform(reference, 0.0, 8, 8))


def test_unknown_calibration_is_refused() -> None:
    with pytest.raises(FrandiError, match="calibration 'kl' is unknown; use one of minmax, percentile, mse"):
        RecoveryConfig(calibration="kl")


def test_strip_drops_quantizers_and_loads_strictly(reference: nn.Module, synthetic: SyntheticData) -> None:
    student = strip_(compress(reference, Policy.uniform(reference, 0.3, 4, 4), calibration=synthetic.recovery))
    assert not activation_quantizers(student)
    fresh = type(reference)()
    fresh.load_state_dict(student.state_dict(), strict=True)
    assert torch.equal(model_outputs(fresh, synthetic.heldout), model_outputs(student, synthetic.heldout))


@pytest.mark.parametrize("learn", [False, True])
def test_fr_under_quantized_activations(learn: bool, reference: nn.Module, synthetic: SyntheticData) -> None:
    targets = teacher_targets(reference, synthetic.recovery)
    teacher_out = model_outputs(reference, synthetic.heldout)
    student = compress(reference, Policy.uniform(reference, 0.0, 4, 4), calibration=synthetic.recovery)
    for p in student.parameters():
        p.requires_grad_(True)
    steps = {n: float(q.scale.detach()) for n, q in activation_quantizers(student).items()}
    od_before = output_discrepancy(student, synthetic.heldout, teacher_out)
    feature_regression_(student, targets, RecoveryConfig(steps=40, batch_size=32, learn_act_steps=learn))
    assert output_discrepancy(student, synthetic.heldout, teacher_out) < od_before  # 0.206 -> 0.19 when written
    after = {n: float(q.scale.detach()) for n, q in activation_quantizers(student).items()}
    moved = sum(abs(after[n] - steps[n]) > 1e-6 * steps[n] for n in steps)
    assert moved == (len(steps) if learn else 0)


def test_a_stored_step_comes_back_bit_for_bit() -> None:
    """A stored step (the exp of a learned fp32 log) becomes a quantizer whose step is that number exactly."""
    logs = torch.cat([torch.empty(5_000).uniform_(-20, 5, generator=torch.Generator().manual_seed(0)),
                      torch.tensor([0.0, -1e-30, 1e-7, -87.0, 88.0])])
    layer = nn.Linear(2, 2)
    misses = 0
    for log in logs:
        step = float(log.exp())
        set_activation_quantizers_(layer, {"": {"bits": 4, "signed": True, "step": step}})
        misses += activation_settings(layer)[""]["step"] != step
    assert misses == 0
    for bad in (0.0, -1.0, float("inf"), float("nan"), 0.1):  # 0.1 is no fp32 number
        with pytest.raises(FrandiError, match="activation step"):
            set_activation_quantizers_(layer, {"": {"bits": 4, "signed": True, "step": bad}})


def test_settings_round_trip_to_the_same_outputs(reference: nn.Module, synthetic: SyntheticData) -> None:
    policy = Policy.uniform(reference, 0.3, 4, 4)
    student = compress(reference, policy, calibration=synthetic.recovery)
    with torch.no_grad():  # a learned step is any fp32 number: move each off its calibrated value
        for q in activation_quantizers(student).values():
            q.log_scale.add_(0.01234)
    settings = activation_settings(student)
    assert set(settings) == set(policy.act_bits()) and all(s["bits"] == 4 for s in settings.values())
    plain = copy.deepcopy(reference)  # the same weights, no quantizers
    plain.load_state_dict(_stripped_copy(student).state_dict())
    set_activation_quantizers_(plain, settings)
    assert activation_settings(plain) == settings
    bits = {n: s.bits for n, s in policy.layers}
    restored = set_integer_points(plain, point_settings(student), bits)  # and the rounding between layers
    assert torch.equal(model_outputs(restored, synthetic.heldout), model_outputs(student, synthetic.heldout))
    set_activation_quantizers_(plain, settings)  # again: still one quantizer and one hook per layer
    restored = set_integer_points(plain, point_settings(student), bits)
    assert torch.equal(model_outputs(restored, synthetic.heldout), model_outputs(student, synthetic.heldout))
    for bad, match in (({"nope": settings["stem.0"]}, "not a Conv/Linear layer"),
                       ({"stem.0": settings["stem.0"] | {"bits": 9}}, "integer in 2..8")):
        with pytest.raises(FrandiError, match=match):
            set_activation_quantizers_(plain, bad)
