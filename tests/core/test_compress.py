"""compress / strip_ / fake_quantize / model_size: exact pruning, per-channel quantization, STE, size rules."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from frandi_core import (
    FrandiError,
    LayerSetting,
    Policy,
    build_architecture,
    clip_ratios,
    compress,
    compressible_layers,
    fake_quantize,
    magnitude_mask,
    model_size,
    quantize,
    strip_,
)
from frandi_core._compress import CLIP_GRID

from .conftest import REFERENCE, assert_unchanged, snapshot

SPARSITIES = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.97]


def odd_model() -> nn.Module:
    """Layers with odd weight counts (27, 15, 35), so round(s * numel) meets odd values and halves."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3),  # 27 weights; input (1, 4, 4) -> (3, 2, 2)
        nn.BatchNorm2d(3),
        nn.Conv2d(3, 5, 1, bias=False),  # 15 weights
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 7),  # 35 weights
    ).eval()


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The (effective) weight of every compressible layer, detached."""
    modules = dict(model.named_modules())
    return {i.name: modules[i.name].weight.detach().clone() for i in compressible_layers(model)}


def test_half_to_even_rounding_of_the_pruned_count() -> None:
    # documented as round(sparsity * numel): Python rounds halves to even, 13.5 -> 14 and 7.5 -> 8, 17.5 -> 18
    w = torch.arange(1.0, 28.0)
    assert int((magnitude_mask(w, 0.5) == 0).sum()) == 14
    assert int((magnitude_mask(w[:15], 0.5) == 0).sum()) == 8
    assert int((magnitude_mask(torch.arange(1.0, 36.0), 0.5) == 0).sum()) == 18


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_exactly_round_s_numel_zeros_per_layer(sparsity: float) -> None:
    model = odd_model()
    before = snapshot(model)
    original = weights(model)
    student = strip_(compress(model, Policy.uniform(model, sparsity)))
    assert_unchanged(model, before)
    for name, w in weights(student).items():
        k = round(sparsity * w.numel())
        assert int((w == 0).sum()) == k, name
        kept = original[name][w != 0]
        pruned = original[name][w == 0]
        assert torch.equal(kept, w[w != 0]), "kept weights must not change"
        if 0 < k < w.numel():
            assert pruned.abs().max() <= kept.abs().min(), "the smallest magnitudes are the ones pruned"


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.8])
def test_reference_model_pruned_count_matches_model_size(reference: nn.Module, sparsity: float) -> None:
    policy = Policy.uniform(reference, sparsity)
    student = strip_(compress(reference, policy))
    ws = weights(student)
    for name, w in ws.items():
        assert int((w == 0).sum()) == round(sparsity * w.numel()), name
    report = model_size(reference, policy)
    assert report.nonzero == sum(int((w != 0).sum()) for w in ws.values())
    assert report.density == pytest.approx(report.nonzero / sum(w.numel() for w in ws.values()))


@pytest.mark.parametrize("bits", range(2, 9))
def test_at_most_2_pow_b_minus_1_values_per_output_channel(reference: nn.Module, bits: int) -> None:
    before = snapshot(reference)
    policy = Policy.uniform(reference, 0.3, bits)
    masked = weights(strip_(compress(reference, Policy.uniform(reference, 0.3))))
    quant = weights(strip_(compress(reference, policy)))
    assert_unchanged(reference, before)
    qmax = 2 ** (bits - 1) - 1
    most = 0
    for name, w in quant.items():
        m = masked[name]
        assert bool((w[m == 0] == 0).all()), f"{name}: pruned weights must stay exactly zero"
        for c in range(w.shape[0]):
            levels = w[c].unique().numel()
            most = max(most, levels)
            assert levels <= 2**bits - 1, (name, c, levels)
            # symmetric per-channel grid: integer multiples of max|w| / qmax, at most half a step away
            scale = m[c].abs().max() / qmax
            steps = w[c] / scale
            assert torch.allclose(steps, steps.round(), atol=1e-3), (name, c)
            assert steps.abs().max() <= qmax + 1e-3
            assert (w[c] - m[c]).abs().max() <= scale / 2 * (1 + 1e-4), (name, c)
    assert most == 2**bits - 1 if bits <= 4 else most > 2 ** (bits - 1), "quantization is too coarse"


def test_user_model_unchanged_and_not_parametrized_by_compress(reference: nn.Module) -> None:
    before = snapshot(reference)
    student = compress(reference, Policy.uniform(reference, 0.5, 4))
    assert_unchanged(reference, before)
    assert not any(parametrize.is_parametrized(m) for m in reference.modules())
    assert all(p.grad is None for p in reference.parameters())
    assert parametrize.is_parametrized(dict(student.named_modules())["layer1.0.conv1"], "weight")
    assert not student.training


def test_dense_policy_output_and_size_are_the_model_s(reference: nn.Module) -> None:
    x = torch.randn(4, *REFERENCE.input_shape, generator=torch.Generator().manual_seed(0))
    for policy in (Policy(), Policy.uniform(reference, 0.0)):
        student = compress(reference, policy)
        assert torch.equal(student(x), reference(x))
        report = model_size(reference, policy)
        assert report.ratio == 1.0 and report.density == 1.0 and report.bits == report.dense_bits


def test_ste_gradient_reaches_the_weight_through_fake_quantize() -> None:
    w = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    q = fake_quantize(w, 3)
    assert not torch.equal(q, w)  # it does quantize
    (q * torch.arange(q.numel()).view_as(q)).sum().backward()
    assert w.grad is not None
    assert torch.equal(w.grad, torch.arange(q.numel(), dtype=w.dtype).view_as(q))  # identity gradient


def test_ste_gradient_reaches_the_underlying_weight_of_a_compressed_layer() -> None:
    model = odd_model()
    student = compress(model, Policy.from_dict({"0": LayerSetting(0.5, 3)}))
    conv = student[0]
    original = conv.parametrizations.weight.original
    student(torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))).pow(2).sum().backward()
    mask = conv.parametrizations.weight[0].mask
    assert original.grad is not None
    assert bool((original.grad[mask == 1] != 0).any()), "kept weights get a gradient through the STE"
    assert bool((original.grad[mask == 0] == 0).all()), "pruned weights get none"


def test_stripped_state_dict_loads_strictly_into_a_fresh_architecture(reference: nn.Module) -> None:
    student = compress(reference, Policy.uniform(reference, 0.6, 5))
    x = torch.randn(8, *REFERENCE.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = student(x)
        strip_(student)
        assert not any(parametrize.is_parametrized(m) for m in student.modules())
        fresh = build_architecture(REFERENCE.architecture).eval()
        fresh.load_state_dict(student.state_dict(), strict=True)
        assert list(fresh.state_dict()) == list(reference.state_dict())
        assert torch.allclose(fresh(x), expected, atol=1e-6)


@pytest.mark.parametrize("name", ["nope", "layer1.0.bn1", "layer1", ""])
def test_policy_naming_a_non_compressible_layer_raises(reference: nn.Module, name: str) -> None:
    policy = Policy.from_dict({name: LayerSetting(0.5)})
    with pytest.raises(FrandiError, match=f"'{name}'"):
        compress(reference, policy)
    with pytest.raises(FrandiError, match=f"'{name}'"):
        model_size(reference, policy)


def test_model_size_follows_the_documented_rule_on_a_tiny_model() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3),  # weight 18 (2 out channels), bias 2
        nn.BatchNorm2d(2),  # weight 2, bias 2; running mean and var 2 each (fp32), batches tracked (int64)
        nn.Flatten(),
        nn.Linear(8, 3),  # weight 24, bias 3
    )
    other = 4 * (2 + 2 + 2 + 3) + 4 * (2 + 2) + 8  # bytes of everything but the compressible weights
    dense = other + 4 * (18 + 24)
    policy = Policy.from_dict({"0": LayerSetting(0.5, 4), "3": LayerSetting(0.25)})
    # conv: 9 kept * 4 bits (5 bytes) + 18-bit mask (3 bytes) + 2 fp32 scales; linear: 18 kept fp32 + 3-byte mask
    expected = other + (5 + 3 + 2 * 4) + (18 * 4 + 3)
    report = model_size(model, policy)
    assert (report.bits, report.dense_bits, report.nonzero, report.weights) == (8 * expected, 8 * dense, 27, 42)
    assert report.bytes == expected and report.ratio == pytest.approx(dense / expected)
    assert report.density == pytest.approx(27 / 42)
    # quantization only: no mask; pruning only a fraction that rounds to zero weights: no mask either
    quant = model_size(model, Policy.from_dict({"3": LayerSetting(bits=8)}))
    assert quant.bytes == other + 18 * 4 + (24 + 3 * 4)
    assert quant.nonzero == 42
    tiny_s = model_size(model, Policy.from_dict({"0": LayerSetting(0.01)}))
    assert tiny_s.bits == 8 * dense and tiny_s.ratio == 1.0
    # 2 of 24 kept: two 5-bit indices (2 bytes) are smaller than a 24-bit mask (3 bytes)
    sparse = model_size(model, Policy.from_dict({"3": LayerSetting(0.9, 3)}))
    assert sparse.bytes == other + 18 * 4 + (1 + 2 + 3 * 4)


def test_model_size_leaves_the_model_unchanged(reference: nn.Module) -> None:
    before = snapshot(reference)
    report = model_size(reference, Policy.uniform(reference, 0.5, 4))
    assert_unchanged(reference, before)
    assert report.ratio > 1.0


def test_model_size_of_a_compressed_model_is_the_same_or_refused(reference: nn.Module) -> None:
    policy = Policy.uniform(reference, 0.5, 4)
    student = compress(reference, policy)
    try:
        report = model_size(student, policy)
    except FrandiError:
        return
    assert report == model_size(reference, policy)


def test_mse_clipping_finds_the_least_error_fraction_of_a_hand_made_channel() -> None:
    """A channel of many small weights and one outlier: clipping the outlier costs less than rounding every small
    weight to zero, and the chosen fraction is the grid's least-error one (checked by brute force); a channel whose
    maximum already gives exact levels keeps it."""
    small = torch.linspace(-1.0, 1.0, 1023)
    on_grid = (torch.arange(1024) % 7 - 3).float() / 3  # every value a level of the unclipped 3-bit grid
    w = torch.stack([torch.cat([small, torch.tensor([8.0])]), on_grid])
    bits, qmax = 3, 3

    def error(row: torch.Tensor, r: float) -> float:
        scale = r * float(row.abs().max()) / qmax
        return float((torch.clamp(torch.round(row / scale), -qmax, qmax) * scale - row).pow(2).sum())

    ratios = clip_ratios(w, bits)
    for row, r in zip(w, ratios.tolist(), strict=True):
        assert error(row, r) == pytest.approx(min(error(row, g) for g in CLIP_GRID))
    assert ratios[0] < 0.5 and error(w[0], float(ratios[0])) < error(w[0], 1.0) / 2  # the outlier is clipped
    assert ratios[1] == 1.0  # a channel its maximum quantizes exactly keeps it
    levels, scale = quantize(w, bits, ratios)
    assert levels.abs().max() == qmax and torch.allclose(scale.flatten(), ratios * w.abs().amax(1) / qmax)


def test_weight_clip_mse_clips_in_the_student_and_max_is_the_old_quantizer(reference: nn.Module) -> None:
    policy = Policy.uniform(reference, 0.0, 2)
    x = torch.randn(8, *REFERENCE.input_shape)
    plain, clipped = compress(reference, policy), compress(reference, policy, weight_clip="mse")
    name = policy.layers[0][0]
    w = dict(reference.named_modules())[name].weight
    assert torch.equal(dict(plain.named_modules())[name].weight, fake_quantize(w, 2))
    assert not torch.equal(dict(clipped.named_modules())[name].weight, fake_quantize(w, 2))
    def error(m: nn.Module) -> float:
        return float((dict(m.named_modules())[name].weight.detach() - w.detach()).pow(2).sum())

    err = {"max": error(plain), "mse": error(clipped)}
    assert err["mse"] < err["max"]
    assert torch.isfinite(clipped(x)).all()
    with pytest.raises(FrandiError, match="weight_clip 'lsq' is unknown"):
        compress(reference, policy, weight_clip="lsq")
