"""Bit operations: MACs from one forward, times weight bits times activation bits."""

from __future__ import annotations

from torch import nn

from frandi_core import LayerSetting, Policy, bops, layer_macs


def net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),  # 16x16 -> 8x8
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=4),  # grouped: 2 input channels per output
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )


def test_macs_of_known_layers_by_hand() -> None:
    macs = layer_macs(net(), (3, 16, 16))
    assert macs == {
        "0": 8 * 8 * 8 * 3 * 3 * 3,  # outputs (8 channels x 8 x 8) x (3 input channels x 3 x 3) = 13,824
        "2": 8 * 8 * 8 * 2 * 3 * 3,  # 9,216
        "4": 512 * 10,
    }


def test_bops_multiply_weight_and_activation_bits() -> None:
    model = net()
    macs = layer_macs(model, (3, 16, 16))
    policy = Policy.from_dict({"0": LayerSetting(0.0, 4, 8), "2": LayerSetting(0.0, 8), "4": LayerSetting()})
    assert bops(macs, policy) == 13_824 * 4 * 8 + 9_216 * 8 * 32 + 5_120 * 32 * 32
    assert bops(macs, Policy()) == (13_824 + 9_216 + 5_120) * 32 * 32  # a layer the policy omits is fp32


def test_pruning_does_not_reduce_bops() -> None:
    macs = layer_macs(net(), (3, 16, 16))
    dense = Policy.from_dict({"0": LayerSetting(0.0, 4, 4)})
    assert bops(macs, Policy.from_dict({"0": LayerSetting(0.9, 4, 4)})) == bops(macs, dense)


def test_macs_leave_the_model_as_it_was() -> None:
    model = net().train()
    layer_macs(model, (3, 16, 16))
    assert model.training and not model[0]._forward_hooks
