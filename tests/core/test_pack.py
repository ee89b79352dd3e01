"""The packed file: bit packing, a bit-identical round trip, file bytes = size objective, refusing bad files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from frandi_core import (
    FrandiError,
    LayerSetting,
    Policy,
    activation_quantizers,
    activation_settings,
    compress,
    compressible_layers,
    load_packed,
    model_outputs,
    model_size,
    pack,
    pack_bits,
    save_packed,
    strip_,
    unpack_bits,
)
from frandi_core.models import resnet

from .conftest import assert_unchanged, snapshot

BITS = [2, 3, 4, 5, 6, 7, 8, None]
ACT_BITS = [None, None, 2, 3, 4, 8]  # None twice: about a third of the layers keep fp32 inputs
CALIBRATION = torch.randn(16, 3, 5, 13, generator=torch.Generator().manual_seed(2))  # odd_model's inputs


def odd_model() -> nn.Module:
    """Odd sizes everywhere: 1-D and 2-D convolutions, channels and features that fill no whole byte."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 5, 3),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.Conv2d(5, 7, (1, 3), bias=False),
        nn.Flatten(2),
        nn.Conv1d(7, 3, 5),
        nn.Flatten(),
        nn.Linear(3 * 23, 11),
    )
    with torch.no_grad():  # BN statistics that are not the defaults
        model.train()(torch.randn(8, 3, 5, 13))
    return model.eval()


def recovered(model: nn.Module, policy: Policy, weight_clip: str = "max") -> nn.Module:
    """``compress`` then a few Adam steps on the underlying weights (and activation steps), as Feature Regression
    would take."""
    student = compress(model, policy, calibration=CALIBRATION, weight_clip=weight_clip)
    for q in activation_quantizers(student).values():
        q.log_scale.requires_grad_(True)
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    x = torch.randn(4, 3, 5, 13, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        opt.zero_grad()
        student(x).square().mean().backward()
        opt.step()
    return student.eval()


def raw(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_bit_identical(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)  # strip_ re-adds each weight after its bias
    differ = [k for k in sa if raw(sa[k]) != raw(sb[k]) or sa[k].dtype != sb[k].dtype]
    assert not differ, f"not bit-identical: {differ}"


@pytest.mark.parametrize("width", [1, 2, 3, 5, 7, 8, 11, 17])
@pytest.mark.parametrize("count", [0, 1, 7, 13, 1001])
def test_pack_bits_round_trip(width: int, count: int) -> None:
    values = np.random.default_rng(width * 1000 + count).integers(0, 2**width, count)
    data = pack_bits(values, width)
    assert data.dtype == np.uint8 and data.size == -(-count * width // 8)
    assert np.array_equal(unpack_bits(data, width, count), values)


def test_unpack_bits_refuses_a_wrong_length() -> None:
    data = pack_bits(np.arange(10), 4)
    with pytest.raises(FrandiError, match="cannot hold"):
        unpack_bits(data[:-1], 4, 10)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.95])
@pytest.mark.parametrize("weight_clip", ["max", "mse"])
def test_round_trip_is_bit_identical(tmp_path: Path, bits: int | None, sparsity: float, weight_clip: str) -> None:
    model = odd_model()
    before = snapshot(model)
    policy = Policy.uniform(model, sparsity, bits)
    student = recovered(model, policy, weight_clip)
    path = tmp_path / "m.safetensors"
    save_packed(path, student, policy, {"od": 0.5})
    loaded = load_packed(path, model)
    assert_unchanged(model, before)  # the instance passed in only gives the architecture
    assert_bit_identical(strip_(student), loaded)
    assert not loaded.training


def test_mixed_policy_with_dense_and_unnamed_layers_round_trips(tmp_path: Path) -> None:
    model = odd_model()
    names = [layer.name for layer in compressible_layers(model)]
    policy = Policy.from_dict({names[0]: LayerSetting(0.5, 3), names[1]: LayerSetting(0.0, 8),
                               names[2]: LayerSetting(0.9)})  # the last layer is not named: dense fp32
    student = recovered(model, policy)
    save_packed(tmp_path / "m.safetensors", student, policy)
    assert_bit_identical(strip_(student), load_packed(tmp_path / "m.safetensors", model))


def header_bytes(data: bytes) -> int:
    """safetensors: an 8-byte little-endian length, then that many bytes of JSON header."""
    return 8 + int.from_bytes(data[:8], "little")


def random_policies(model: nn.Module, count: int, seed: int = 0) -> list[Policy]:
    """Random per-layer sparsity (0..0.95), weight bits (2..8 or fp32) and activation bits; some layers unnamed."""
    names = [layer.name for layer in compressible_layers(model)]
    rng = random.Random(seed)
    return [
        Policy.from_dict({
            n: LayerSetting(round(rng.uniform(0, 0.95), 3), rng.choice(BITS), rng.choice(ACT_BITS))
            for n in names if rng.random() < 0.9
        })
        for _ in range(count)
    ]


def inputs_for(model: nn.Module) -> torch.Tensor:
    return CALIBRATION if isinstance(model, nn.Sequential) else torch.randn(16, 1, 8, 8)


@pytest.mark.parametrize("arch", ["odd", "resnet"])
def test_file_bytes_equal_the_size_objective_for_random_policies(arch: str) -> None:
    model = odd_model() if arch == "odd" else resnet(widths=(4, 8)).eval()
    policies = random_policies(model, 20)
    assert sum(len(p.act_bits()) for p in policies) > 20  # activation steps are counted too
    for policy in policies:
        data = pack(compress(model, policy, calibration=inputs_for(model)), policy, {"od": 0.1})
        size = model_size(model, policy)
        assert len(data) - header_bytes(data) == size.bytes, policy
        # the header: tensor names, shapes and offsets, the policy, metrics, layouts and the checksum
        meta_len = sum(len(v) for v in json.loads(data[8 : header_bytes(data)])["__metadata__"].values())
        assert header_bytes(data) < 8 + meta_len + 150 * len(model.state_dict()) * 3


def test_loader_refuses_another_architecture_in_one_line(tmp_path: Path) -> None:
    model = resnet(widths=(4, 8)).eval()
    policy = Policy.uniform(model, 0.5, 4)
    save_packed(tmp_path / "m.safetensors", compress(model, policy), policy)
    for other in (resnet(widths=(4, 16)), resnet(widths=(4, 8, 16)), odd_model()):
        with pytest.raises(FrandiError, match="does not fit this model") as e:
            load_packed(tmp_path / "m.safetensors", other)
        assert "\n" not in str(e.value) and "architecture" in str(e.value)


def test_truncated_or_tampered_file_is_refused_and_nothing_is_loaded(tmp_path: Path) -> None:
    model = resnet(widths=(4, 8)).eval()
    policy = Policy.uniform(model, 0.5, 4)
    good = pack(compress(model, policy), policy)
    before = snapshot(model)
    header = header_bytes(good)
    path = tmp_path / "m.safetensors"
    bad = {
        "truncated in the data": good[: len(good) - 3],
        "truncated in the header": good[: header - 10],
        "empty": b"",
        "a level flipped": good[:header + 40] + bytes([good[header + 40] ^ 0x10]) + good[header + 41 :],
        "last byte flipped": good[:-1] + bytes([good[-1] ^ 0x01]),
        "metadata edited": good.replace(b'\\"bits\\": 4', b'\\"bits\\": 5', 1),  # JSON inside JSON
    }
    assert bad["metadata edited"] != good
    for what, data in bad.items():
        path.write_bytes(data)
        with pytest.raises(FrandiError) as e:
            load_packed(path, model)
        assert str(path) in str(e.value) and "\n" not in str(e.value), what
        assert "export it again" in str(e.value), what
    assert_unchanged(model, before)
    path.write_bytes(good)
    assert_bit_identical(strip_(compress(model, policy)), load_packed(path, model))


def test_pack_refuses_a_student_that_the_policy_did_not_make() -> None:
    model = resnet(widths=(4, 8)).eval()
    student = compress(model, Policy.uniform(model, 0.5, 4))
    with pytest.raises(FrandiError, match="not compressed as the policy says"):
        pack(student, Policy.uniform(model, 0.5, 8))
    with pytest.raises(FrandiError, match="before strip_"):
        pack(strip_(student), Policy.uniform(model, 0.5, 4))


def test_activation_quantizers_round_trip_to_bit_identical_outputs(tmp_path: Path) -> None:
    model = odd_model()
    names = [layer.name for layer in compressible_layers(model)]
    policy = Policy.from_dict({names[0]: LayerSetting(0.5, 3, 8), names[1]: LayerSetting(0.0, 4, 2),
                               names[2]: LayerSetting(0.9, None, 4)})  # the last layer: fp32 in and out
    student = recovered(model, policy)
    settings = activation_settings(student)
    assert {s["signed"] for s in settings.values()} == {True, False}  # the input image is signed, a ReLU's not
    save_packed(tmp_path / "m.safetensors", student, policy)
    loaded = load_packed(tmp_path / "m.safetensors", model)
    assert activation_settings(loaded) == settings  # bits, sign and the learned fp32 step, exactly
    x = torch.randn(64, 3, 5, 13, generator=torch.Generator().manual_seed(3))
    assert torch.equal(model_outputs(loaded, x), model_outputs(student, x))
    assert not torch.equal(model_outputs(strip_(loaded), x), model_outputs(student, x))  # the quantizers matter
    assert_bit_identical(strip_(student), loaded)


def test_a_tampered_activation_step_or_sign_is_refused(tmp_path: Path) -> None:
    model = resnet(widths=(4, 8)).eval()
    policy = Policy.uniform(model, 0.5, 4, 4)
    good = pack(compress(model, policy, calibration=torch.randn(16, 1, 8, 8)), policy)
    header = json.loads(good[8 : header_bytes(good)])
    offsets = header["layer1.0.conv1.act_quant:step"]["data_offsets"]
    at = header_bytes(good) + offsets[0] + 3  # the step's most significant byte: a step 2x, 1/2x, or more off
    bad = {
        "step": good[:at] + bytes([good[at] ^ 0x01]) + good[at + 1 :],
        "sign": good.replace(b'\\"signed\\": false', b'\\"signed\\": true ', 1),  # same length
    }
    path = tmp_path / "m.safetensors"
    for what, data in bad.items():
        assert data != good, what
        path.write_bytes(data)
        with pytest.raises(FrandiError, match="changed or damaged"):
            load_packed(path, model)


def test_pack_refuses_a_student_without_the_policy_s_activation_quantizers() -> None:
    model = resnet(widths=(4, 8)).eval()
    policy = Policy.uniform(model, 0.5, 4, 4)
    weights_only = compress(model, Policy.uniform(model, 0.5, 4))  # the same weights, fp32 inputs
    with pytest.raises(FrandiError, match="activation quantizers .* are not the policy's"):
        pack(weights_only, policy)
    with pytest.raises(FrandiError, match="activation quantizers .* are not the policy's"):
        pack(compress(model, policy, calibration=torch.randn(16, 1, 8, 8)), Policy.uniform(model, 0.5, 4, 8))
