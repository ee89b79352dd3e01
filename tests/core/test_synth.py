"""Synthetic data by BN-statistics inversion (eq. 1): the loss, its drop, determinism, BatchNorm1d, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from frandi_core import (
    FrandiError,
    SynthConfig,
    SyntheticData,
    batch_stats,
    bn_kl,
    bn_kl_loss,
    bn_names,
    synthesize,
)

from .conftest import REFERENCE, SYNTH, assert_unchanged, snapshot

TINY = SynthConfig(batch_size=8, heldout_size=6, iterations=4, seed=0)


def initial_noise(n: int, seed: int) -> torch.Tensor:
    """The random batch synthesis starts from (same generator and draw as ``invert``)."""
    return torch.randn((n, *REFERENCE.input_shape), generator=torch.Generator().manual_seed(seed))


def affine_bn(weight: float, bias: float, run_mean: float, run_var: float) -> nn.Sequential:
    """x -> BN(weight * x + bias) with the given running statistics (one feature)."""
    lin = nn.Linear(1, 1)
    bn = nn.BatchNorm1d(1, eps=1e-5)
    with torch.no_grad():
        lin.weight.fill_(weight)
        lin.bias.fill_(bias)
        bn.running_mean.fill_(run_mean)
        bn.running_var.fill_(run_var)
    return nn.Sequential(lin, bn).eval()


def test_bn_kl_loss_uses_the_bn_input_statistics() -> None:
    x = torch.tensor([[-1.0], [1.0]])  # mean 0, biased var 1 -> the BN input is 2x + 1: mean 1, var 4
    matched = affine_bn(2.0, 1.0, 1.0, 4.0)
    assert bn_kl_loss(matched, x).item() == pytest.approx(0.0, abs=1e-6)
    off = affine_bn(2.0, 1.0, 0.0, 1.0)
    eps = 1e-5
    expected = 0.5 * (math.log((1 + eps) / (4 + eps)) + (4 + eps + 1.0) / (1 + eps) - 1)
    assert bn_kl_loss(off, x).item() == pytest.approx(expected, rel=1e-5)


def test_bn_kl_loss_sums_every_bn_layer_against_its_own_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    gen = torch.Generator().manual_seed(0)
    for bn in (model[1], model[4]):
        assert isinstance(bn, nn.BatchNorm2d)
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
    model.eval()
    x = torch.randn(5, 2, 3, 3, generator=gen)
    expected = torch.zeros(())
    h = x
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.BatchNorm2d):
                mean, var = batch_stats(h)
                expected = expected + bn_kl(mean, var + m.eps, m.running_mean, m.running_var + m.eps)
            h = m(h)
    assert bn_names(model) == ["1", "4"]
    assert bn_kl_loss(model, x).item() == pytest.approx(expected.item(), rel=1e-5)


def test_bn_kl_loss_without_batchnorm_raises() -> None:
    with pytest.raises(FrandiError, match="BatchNorm"):
        bn_kl_loss(nn.Linear(3, 2).eval(), torch.randn(4, 3))


def test_synthesis_lowers_the_bn_kl_tenfold_on_both_batches(reference: nn.Module, synthetic: SyntheticData) -> None:
    with torch.no_grad():
        start_rec = bn_kl_loss(reference, initial_noise(SYNTH.batch_size, SYNTH.seed)).item()
        start_held = bn_kl_loss(reference, initial_noise(SYNTH.heldout_size, SYNTH.seed + 1)).item()
        end_rec = bn_kl_loss(reference, synthetic.recovery).item()
        end_held = bn_kl_loss(reference, synthetic.heldout).item()
    print(f"bn_kl: recovery {start_rec:.3f} -> {end_rec:.3f}, held-out {start_held:.3f} -> {end_held:.3f}")
    assert end_rec * 10 <= start_rec
    assert end_held * 10 <= start_held


def test_synthetic_batches_have_the_configured_shapes_and_differ(synthetic: SyntheticData) -> None:
    assert synthetic.recovery.shape == (SYNTH.batch_size, *REFERENCE.input_shape)
    assert synthetic.heldout.shape == (SYNTH.heldout_size, *REFERENCE.input_shape)
    assert bool(torch.isfinite(synthetic.recovery).all() and torch.isfinite(synthetic.heldout).all())
    assert not synthetic.recovery.requires_grad and synthetic.recovery.device.type == "cpu"
    assert (synthetic.recovery - synthetic.heldout).abs().mean() > 0.1


def test_synthesize_leaves_the_model_unchanged(reference: nn.Module) -> None:
    before = snapshot(reference)
    synthesize(reference, REFERENCE.input_shape, TINY)
    assert_unchanged(reference, before)
    assert not reference.training
    assert all(p.grad is None for p in reference.parameters())


def test_same_seed_gives_identical_batches_and_another_seed_different_ones(reference: nn.Module) -> None:
    a = synthesize(reference, REFERENCE.input_shape, TINY)
    b = synthesize(reference, REFERENCE.input_shape, TINY)
    c = synthesize(reference, REFERENCE.input_shape, SynthConfig(**{**TINY.__dict__, "seed": 7}))
    assert torch.equal(a.recovery, b.recovery) and torch.equal(a.heldout, b.heldout)
    assert not torch.equal(a.recovery, c.recovery[: len(a.recovery)])
    assert not torch.equal(a.heldout, c.heldout)


def test_model_in_train_mode_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    model.train()
    before = snapshot(model)
    with pytest.raises(FrandiError, match="eval"):
        synthesize(model, (1, 5, 5), TINY)
    assert_unchanged(model, before)  # no forward ran in training mode: running statistics untouched
    assert model.training


def _fit_statistics(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Set BN running statistics from "training data" far from N(0, 1) (2 * noise + 1), then eval."""
    gen = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(10):
            model(torch.randn((256, *shape), generator=gen) * 2 + 1)
    return model.eval()


@pytest.mark.parametrize(
    "layers, shape",
    [
        ((nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 8), nn.BatchNorm1d(8)), (6,)),
        ((nn.Conv1d(2, 8, 3), nn.BatchNorm1d(8), nn.ReLU(), nn.Flatten(), nn.Linear(40, 3)), (2, 7)),
    ],
    ids=["mlp", "conv1d"],
)
def test_batchnorm1d_models_are_synthesized(layers: tuple[nn.Module, ...], shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = _fit_statistics(nn.Sequential(*layers), shape)
    before = snapshot(model)
    config = SynthConfig(batch_size=64, heldout_size=32, iterations=60, seed=3)
    data = synthesize(model, shape, config)
    assert_unchanged(model, before)
    assert data.recovery.shape == (64, *shape) and data.heldout.shape == (32, *shape)
    with torch.no_grad():
        start = bn_kl_loss(model, torch.randn((64, *shape), generator=torch.Generator().manual_seed(3))).item()
        end = bn_kl_loss(model, data.recovery).item()
        held = bn_kl_loss(model, data.heldout).item()
    assert end * 10 <= start and held * 10 <= start, (start, end, held)


@pytest.mark.parametrize("field, value", [("batch_size", 0), ("heldout_size", 0), ("iterations", 0), ("lr", 0.0)])
def test_invalid_synth_config_raises(field: str, value: float) -> None:
    with pytest.raises(FrandiError, match=field):
        SynthConfig(**{field: value})


def test_bn_kl_loss_on_a_model_in_train_mode_is_refused_or_harmless() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    before = snapshot(model)
    try:
        bn_kl_loss(model, torch.randn(8, 3, generator=torch.Generator().manual_seed(0)) + 3)
    except FrandiError:
        return
    assert_unchanged(model, before)


def test_synthetic_inputs_stay_inside_the_input_range(reference: nn.Module) -> None:
    """Unbounded inversion drifts outside the values real inputs take; with input_range every value stays inside
    it, and the batch still lowers the BN loss."""
    config = SynthConfig(batch_size=32, heldout_size=8, iterations=40, seed=0)
    free = synthesize(reference, REFERENCE.input_shape, config)
    lo, hi = float(free.recovery.quantile(0.2)), float(free.recovery.quantile(0.8))
    bounded = synthesize(reference, REFERENCE.input_shape, SynthConfig(**{**config.__dict__, "input_range": (lo, hi)}))
    assert float(free.recovery.min()) < lo and float(free.recovery.max()) > hi  # the bound binds
    for x in (bounded.recovery, bounded.heldout):
        assert float(x.min()) >= lo and float(x.max()) <= hi
    start = bn_kl_loss(reference, initial_noise(32, 0).clamp(lo, hi)).item()
    assert bn_kl_loss(reference, bounded.recovery).item() < start


def test_a_per_channel_input_range_bounds_each_channel() -> None:
    torch.manual_seed(0)
    model = _fit_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), (3, 6, 6))
    low, high = (-1.0, 0.0, 0.5), (0.0, 2.0, 0.75)
    data = synthesize(model, (3, 6, 6), SynthConfig(batch_size=16, heldout_size=4, iterations=20,
                                                    input_range=(low, high)))  # fmt: skip
    for c in range(3):
        x = data.recovery[:, c]
        assert low[c] <= float(x.min()) and float(x.max()) <= high[c], c
        assert float(x.max()) - float(x.min()) > 0.5 * (high[c] - low[c])  # the channel uses its own range


@pytest.mark.parametrize(
    "bounds, shape, match",
    [
        ((1.0, 0.0), (1, 4, 4), "low < high"),
        ((0.0,), (1, 4, 4), r"\[low, high\]"),
        (((0.0, 0.0), (1.0, -1.0)), (2, 4, 4), "low < high"),
        (((0.0, 0.0), (1.0, 1.0, 1.0)), (2, 4, 4), "2 low and 3 high"),
        (((0.0, 0.0, 0.0), 1.0), (1, 4, 4), "1 channel"),
    ],
)
def test_a_bad_input_range_is_refused_with_what_to_write(bounds: tuple, shape: tuple[int, ...], match: str) -> None:
    model = nn.Sequential(nn.Conv2d(shape[0], 2, 3), nn.BatchNorm2d(2)).eval()
    with pytest.raises(FrandiError, match=match):
        synthesize(model, shape, SynthConfig(batch_size=2, heldout_size=2, iterations=1, input_range=bounds))
