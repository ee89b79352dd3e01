"""Load a user's trained model from an ``package.module:callable`` architecture and a weights file.

The architecture string is imported and called: it runs code, so name only code you trust.
Weights are read with ``torch.load(weights_only=True)``, which never unpickles arbitrary objects.
Every problem is a FrandiError in one line that says what is wrong with which input.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._errors import FrandiError

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from: an architecture, its keyword arguments and a weights file.

    ``input_shape`` (one sample, without the batch), when given, is checked by one forward pass at load.
    """

    architecture: str
    weights: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None


def build_architecture(architecture: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Import ``package.module:callable`` and call it with ``kwargs`` (trusted code only)."""
    module_name, sep, attr = architecture.partition(":")
    if not sep or not module_name or not attr:
        raise FrandiError(
            f"architecture '{architecture}' is not of the form package.module:callable; "
            "write e.g. 'torchvision.models:resnet18'"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - missing, or failing on import: the user's module either way
        raise FrandiError(
            f"architecture '{architecture}': cannot import module '{module_name}' ({_first_line(e)}); "
            "install it or fix the name"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise FrandiError(
            f"architecture '{architecture}': module '{module_name}' has no callable '{attr}'; fix the name"
        )
    try:
        model = factory(**dict(kwargs or {}))
    except Exception as e:  # noqa: BLE001 - whatever the user's factory raises, it is about these kwargs
        raise FrandiError(
            f"architecture '{architecture}' rejected its kwargs {dict(kwargs or {})}: {_first_line(e)}; "
            "fix [model] kwargs"
        ) from None
    if not isinstance(model, nn.Module):
        raise FrandiError(
            f"architecture '{architecture}' returned {type(model).__name__}, not a torch nn.Module"
        )
    return model


def _first_line(e: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def _why_unreadable(p: Path, error: Exception) -> str:
    """What is wrong with a weights file torch.load(weights_only=True) refused, in our words: torch's own
    message advises weights_only=False, which runs any code in the file."""
    if p.stat().st_size == 0:
        return "is empty"
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            if any(name.endswith("/constants.pkl") for name in z.namelist()):
                return "is a TorchScript archive, not a state_dict"
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f"a pickled '{found.group(1)}' object" if found else "pickled Python objects"
        return f"holds {what}, which a weights-only load refuses to run (a whole model, not its state_dict?)"
    with p.open("rb") as f:
        if f.read(2) == b"PK":
            return "is truncated or corrupted (an incomplete zip archive)"
    return "is not a PyTorch weights file (a plain pickle, another format, or a truncated file)"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict (or a dict holding one under 'state_dict') with weights_only=True."""
    p = Path(path)
    if p.is_dir():
        raise FrandiError(f"weights file '{p}' is a folder; set [model] weights to the file torch.save wrote")
    if not p.is_file():
        raise FrandiError(f"weights file '{p}' does not exist; check [model] weights")
    try:
        with warnings.catch_warnings():  # torch warns about some formats on stderr; our one line says it all
            warnings.simplefilter("ignore")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except OSError as e:
        raise FrandiError(f"cannot read weights file '{p}' ({e.strerror or e}); check [model] weights") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user problem
        raise FrandiError(
            f"weights file '{p}' cannot be read: it {_why_unreadable(p, e)}; "
            "save it with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FrandiError(f"weights file '{p}' does not hold a state_dict; save model.state_dict()")
    return dict(obj)


def load_model(spec: ModelSpec, *, device: str | torch.device = "cpu") -> nn.Module:
    """Build the architecture, load its weights strictly, and return it in eval mode."""
    model = build_architecture(spec.architecture, spec.kwargs)
    state = read_state_dict(spec.weights)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        raise FrandiError(
            f"weights '{spec.weights}' do not fit architecture '{spec.architecture}': {'; '.join(parts)}; "
            "check the architecture and its kwargs"
        )
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise FrandiError(
                f"weights '{spec.weights}' do not fit architecture '{spec.architecture}': '{k}' has shape "
                f"{tuple(state[k].shape)}, the model expects {tuple(v.shape)}; check the kwargs"
            )
    model.load_state_dict(state, strict=True)
    if not any(isinstance(m, BN_TYPES) for m in model.modules()):
        raise FrandiError(
            f"model '{spec.architecture}' has no BatchNorm layers: synthetic data needs BN statistics to "
            "match, so this model cannot be compressed data-free; frandi needs a model with BatchNorm layers"
        )
    model = model.to(device).eval()
    if spec.input_shape is not None:
        check_input_shape(model, spec.input_shape, name=spec.architecture)
    return model


@torch.no_grad()
def check_input_shape(model: nn.Module, input_shape: tuple[int, ...], *, name: str = "model") -> None:
    """Run one eval-mode forward pass on two zero samples of ``input_shape`` (no batch dimension), so a model
    that rejects the shape, or does not return one tensor row per sample, fails before any work or storage."""
    device = next(iter(model.state_dict().values())).device
    was_training = model.training
    model.eval()
    try:
        out = model(torch.zeros(2, *input_shape, device=device))
    except Exception as e:  # noqa: BLE001 - whatever the forward raises, the shape is what the user can fix
        raise FrandiError(
            f"model '{name}' cannot run on input_shape {list(input_shape)} ({_first_line(e)}); set [model] "
            "input_shape to one sample's shape as the model takes it, without the batch"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() < 1 or out.shape[0] != 2:
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise FrandiError(
            f"model '{name}' returns {got} for a batch of 2 inputs; frandi needs a forward that returns one "
            "tensor with the batch first"
        )


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state_dict (names, shapes, dtypes, values): a cache key for its data."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
