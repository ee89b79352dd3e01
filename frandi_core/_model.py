"""Load a user's trained model from an ``package.module:callable`` architecture and a weights file.

The architecture string is imported and called: it runs code, so name only code you trust.
Weights are read with ``torch.load(weights_only=True)``, which never unpickles arbitrary objects.
"""

from __future__ import annotations

import hashlib
import importlib
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
    """Where a model comes from: an architecture, its keyword arguments and a weights file."""

    architecture: str
    weights: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] = (1, 8, 8)


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
    except ImportError as e:
        raise FrandiError(
            f"architecture '{architecture}': cannot import module '{module_name}' ({e}); "
            "install it or fix the name"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise FrandiError(
            f"architecture '{architecture}': module '{module_name}' has no callable '{attr}'; fix the name"
        )
    try:
        model = factory(**dict(kwargs or {}))
    except TypeError as e:
        raise FrandiError(
            f"architecture '{architecture}' rejected its kwargs: {e}; fix [model] kwargs"
        ) from None
    if not isinstance(model, nn.Module):
        raise FrandiError(
            f"architecture '{architecture}' returned {type(model).__name__}, not a torch nn.Module"
        )
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict (or a dict holding one under 'state_dict') with weights_only=True."""
    p = Path(path)
    if not p.is_file():
        raise FrandiError(f"weights file '{p}' does not exist; check [model] weights")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user problem
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FrandiError(
            f"weights file '{p}' cannot be read as a weights-only PyTorch file ({first[:200]}); "
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
    return model.to(device).eval()


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state_dict (names, shapes, dtypes, values): a cache key for its data."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
