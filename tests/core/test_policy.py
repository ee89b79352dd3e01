"""Policies: frozen, JSON round trip, order-independent hashing, validation; compressible layers."""

from __future__ import annotations

import dataclasses
import json

import pytest
from torch import nn

from frandi_core import FrandiError, LayerSetting, Policy, compressible_layers


def tiny() -> nn.Module:
    """Conv1d, Conv2d (nested) and Linear layers mixed with BatchNorm and parameter-free modules."""
    return nn.Sequential(
        nn.Conv1d(2, 3, 5),  # 30 weights
        nn.BatchNorm1d(3),
        nn.Sequential(nn.ReLU(), nn.Conv2d(3, 4, (3, 2), bias=False)),  # 72 weights
        nn.Flatten(),
        nn.Linear(7, 5),  # 35 weights
    )


def test_compressible_layers_lists_conv_and_linear_in_module_order() -> None:
    layers = compressible_layers(tiny())
    assert [(i.name, i.kind, i.numel, i.out_channels) for i in layers] == [
        ("0", "Conv1d", 30, 3),
        ("2.1", "Conv2d", 72, 4),
        ("4", "Linear", 35, 5),
    ]


def test_compressible_layers_of_the_reference_model_cover_all_conv_linear_weights(
    reference: nn.Module,
) -> None:
    layers = compressible_layers(reference)
    modules = dict(reference.named_modules())
    expected = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [i.name for i in layers] == expected
    assert all(i.numel == modules[i.name].weight.numel() for i in layers)
    assert layers[-1].name == "head.2" and layers[-1].out_channels == 10


def test_policy_json_round_trip() -> None:
    p = Policy.from_dict({"4": LayerSetting(0.25, 4), "0": {"sparsity": 0.5}, "2.1": {"bits": 8}, "x": LayerSetting()})
    q = Policy.from_json(p.to_json())
    assert q == p and hash(q) == hash(p)
    assert q.as_dict() == {
        "0": LayerSetting(0.5, None),
        "2.1": LayerSetting(0.0, 8),
        "4": LayerSetting(0.25, 4),
        "x": LayerSetting(0.0, None),
    }


def test_equal_policies_hash_equal_regardless_of_insertion_order() -> None:
    items = {"a": LayerSetting(0.1, 2), "b": LayerSetting(0.2), "c": LayerSetting(bits=3)}
    p = Policy.from_dict(items)
    q = Policy.from_dict(dict(reversed(list(items.items()))))
    assert p == q and hash(p) == hash(q) and p.to_json() == q.to_json()
    assert len({p, q}) == 1
    assert Policy.from_dict({**items, "c": LayerSetting(bits=4)}) != p


def test_policy_and_settings_are_frozen() -> None:
    p = Policy.from_dict({"a": LayerSetting(0.5)})
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.layers = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.layers[0][1].sparsity = 0.1  # type: ignore[misc]


@pytest.mark.parametrize("sparsity", [-0.1, -1e-9, 1.0, 1.5, float("nan"), "0.5", None])
def test_invalid_sparsity_raises(sparsity: object) -> None:
    with pytest.raises(FrandiError, match="sparsity"):
        LayerSetting(sparsity=sparsity)  # type: ignore[arg-type]
    with pytest.raises(FrandiError, match="sparsity"):
        Policy.from_dict({"a": {"sparsity": sparsity}})


@pytest.mark.parametrize("sparsity", [0, 0.0, 0.5, 0.999])
def test_valid_sparsity_is_accepted(sparsity: float) -> None:
    assert LayerSetting(sparsity=sparsity).sparsity == sparsity


@pytest.mark.parametrize("bits", [1, 9, 0, -4, 4.5, 8.0, True, "4"])
def test_invalid_bits_raise(bits: object) -> None:
    with pytest.raises(FrandiError, match="bits"):
        LayerSetting(bits=bits)  # type: ignore[arg-type]
    with pytest.raises(FrandiError, match="bits"):
        Policy.from_json(json.dumps({"a": {"sparsity": 0.0, "bits": bits}}))


@pytest.mark.parametrize("bits", [None, 2, 3, 4, 5, 6, 7, 8])
def test_valid_bits_are_accepted(bits: int | None) -> None:
    assert LayerSetting(bits=bits).bits == bits


def test_unknown_setting_key_is_named() -> None:
    with pytest.raises(FrandiError, match="bitz"):
        Policy.from_dict({"a": {"sparsity": 0.5, "bitz": 4}})


def test_uniform_policy_covers_every_compressible_layer() -> None:
    model = tiny()
    p = Policy.uniform(model, 0.5, 4)
    assert sorted(p.as_dict()) == sorted(i.name for i in compressible_layers(model))
    assert set(p.as_dict().values()) == {LayerSetting(0.5, 4)}


def test_activation_bits_round_trip_and_stay_out_of_old_json() -> None:
    p = Policy.from_dict({"a": LayerSetting(0.5, 4, 8), "b": LayerSetting(0.0, 8)})
    assert Policy.from_json(p.to_json()) == p
    assert json.loads(p.to_json()) == {
        "a": {"sparsity": 0.5, "bits": 4, "act_bits": 8},
        "b": {"sparsity": 0.0, "bits": 8},
    }
    assert p.act_bits() == {"a": 8}
    old = '{"a": {"bits": 4, "sparsity": 0.5}}'  # a policy stored before activation bits existed
    assert Policy.from_json(old).to_json() == old and Policy.from_json(old).act_bits() == {}


@pytest.mark.parametrize("act_bits", [1, 9, 16, 32, 4.0, True])
def test_invalid_activation_bits_raise(act_bits: object) -> None:
    with pytest.raises(FrandiError, match="act_bits must be an integer in 2..8"):
        LayerSetting(act_bits=act_bits)  # type: ignore[arg-type]
