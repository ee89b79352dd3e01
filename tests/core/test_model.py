"""load_model: every kind of bad input is a FrandiError naming the problem; good input loads in eval mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from frandi_core import FrandiError, ModelSpec, build_architecture, load_model, read_state_dict, weights_digest

from .conftest import REFERENCE

ARCH = REFERENCE.architecture


def reference_state() -> dict[str, torch.Tensor]:
    return torch.load(REFERENCE.weights, weights_only=True)


def spec(weights: Path | str, architecture: str = ARCH, **kwargs: object) -> ModelSpec:
    return ModelSpec(architecture, str(weights), kwargs=kwargs)


class Payload:
    """Unpickling this would create a file: proof that the loader ran code from the weights file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_reference_model_loads_in_eval_mode() -> None:
    model = load_model(REFERENCE)
    assert not model.training and not any(m.training for m in model.modules())
    state = reference_state()
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_a_dict_holding_state_dict_loads(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": reference_state(), "epoch": 30}, path)
    model = load_model(spec(path))
    assert not model.training
    assert weights_digest(model) == weights_digest(load_model(REFERENCE))


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(FrandiError, match="nothing.pt.*does not exist"):
        load_model(spec(tmp_path / "nothing.pt"))


@pytest.mark.parametrize(
    "architecture, problem",
    [
        ("no_such_package_xyz.models:resnet", "cannot import module 'no_such_package_xyz.models'"),
        ("frandi_core.models:no_such_factory", "no callable 'no_such_factory'"),
        ("math:pi", "no callable 'pi'"),
        ("frandi_core.models.resnet", "not of the form package.module:callable"),
        ("frandi_core.models:", "not of the form"),
        (":resnet", "not of the form"),
        ("collections:OrderedDict", "returned OrderedDict, not a torch nn.Module"),
    ],
)
def test_architecture_that_cannot_be_built(architecture: str, problem: str) -> None:
    with pytest.raises(FrandiError, match=problem):
        load_model(spec(REFERENCE.weights, architecture))


def test_architecture_kwargs_rejected() -> None:
    with pytest.raises(FrandiError, match="rejected its kwargs.*depth"):
        build_architecture(ARCH, {"depth": 3})


def test_missing_key_is_named(tmp_path: Path) -> None:
    state = reference_state()
    first = next(iter(state))
    del state[first]
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(FrandiError, match=rf"missing keys \['{first}'\]"):
        load_model(spec(tmp_path / "w.pt"))


def test_unexpected_key_is_named(tmp_path: Path) -> None:
    state = reference_state()
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(FrandiError, match=r"unexpected keys \['extra.weight'\]"):
        load_model(spec(tmp_path / "w.pt"))


def test_renamed_keys_name_the_first_missing_and_unexpected(tmp_path: Path) -> None:
    state = {f"module.{k}": v for k, v in reference_state().items()}  # saved from DataParallel
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(FrandiError) as err:
        load_model(spec(tmp_path / "w.pt"))
    first = next(iter(reference_state()))
    assert f"missing keys ['{first}'" in str(err.value)
    assert f"unexpected keys ['module.{first}'" in str(err.value)


def test_shape_mismatch_names_the_key_and_both_shapes() -> None:
    with pytest.raises(FrandiError, match=r"'head.2.weight' has shape \(10, 64\).*expects \(5, 64\)"):
        load_model(spec(REFERENCE.weights, num_classes=5))


def test_model_without_batchnorm_is_refused(tmp_path: Path) -> None:
    torch.save(nn.Linear(4, 2).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(FrandiError, match="no BatchNorm"):
        load_model(spec(tmp_path / "linear.pt", "torch.nn:Linear", in_features=4, out_features=2))


def test_pickled_object_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": reference_state(), "payload": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(FrandiError, match="weights-only"):
        load_model(spec(tmp_path / "evil.pt"))
    assert not marker.exists()


def test_whole_pickled_model_is_refused(tmp_path: Path) -> None:
    torch.save(load_model(REFERENCE), tmp_path / "model.pt")  # a common mistake: save(model)
    with pytest.raises(FrandiError, match=r"state_dict\(\)"):
        load_model(spec(tmp_path / "model.pt"))


@pytest.mark.parametrize(
    "content", [torch.zeros(3), [torch.zeros(3)], {"a": torch.zeros(1), "b": 3}, {"state_dict": 5}]
)
def test_file_that_does_not_hold_a_state_dict(tmp_path: Path, content: object) -> None:
    torch.save(content, tmp_path / "w.pt")
    with pytest.raises(FrandiError, match="state_dict"):
        read_state_dict(tmp_path / "w.pt")


def test_garbage_file(tmp_path: Path) -> None:
    (tmp_path / "w.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(FrandiError, match="cannot be read"):
        load_model(spec(tmp_path / "w.pt"))


def test_weights_digest_tracks_values() -> None:
    a, b = load_model(REFERENCE), load_model(REFERENCE)
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        b.head[2].bias[0] += 1e-6
    assert weights_digest(a) != weights_digest(b)
