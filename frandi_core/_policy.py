"""Per-layer compression policies keyed by fully qualified module name, and the layers they can cover."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from ._errors import FrandiError

COMPRESSIBLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
SETTING_KEYS = ("sparsity", "bits", "act_bits", "channels")
SPARSITY_DIGITS = 6  # a sparsity's precision in a policy's digest (a grid step is never finer)


def _check_bits(value: object, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 8):
        raise FrandiError(f"{what} must be an integer in 2..8 or none (fp32), got {value!r}")


@dataclass(frozen=True)
class LayerSetting:
    """How one layer is compressed: fraction of weights pruned, weight bits, input-activation bits (None keeps
    fp32) and fraction of output channels removed (``_channels``: coupled layers lose the same channels)."""

    sparsity: float = 0.0
    bits: int | None = None
    act_bits: int | None = None
    channels: float = 0.0

    def __post_init__(self) -> None:
        s = self.sparsity
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
            raise FrandiError(f"sparsity must be in [0, 1), got {self.sparsity!r}")
        c = self.channels
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 <= c < 1.0:
            raise FrandiError(f"channels must be a fraction in [0, 1), got {self.channels!r}")
        _check_bits(self.bits, "bits")
        _check_bits(self.act_bits, "act_bits")

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON form; ``act_bits`` and ``channels`` only when set, so policies without them read as before."""
        d: dict[str, float | int | None] = {"sparsity": self.sparsity, "bits": self.bits}
        if self.act_bits is not None:
            d["act_bits"] = self.act_bits
        if self.channels:
            d["channels"] = self.channels
        return d


@dataclass(frozen=True)
class Policy:
    """Layer name -> LayerSetting, stored sorted so equal policies compare and hash equal."""

    layers: tuple[tuple[str, LayerSetting], ...] = ()

    @classmethod
    def from_dict(cls, mapping: Mapping[str, LayerSetting | Mapping[str, object]]) -> Policy:
        items = []
        for name, s in mapping.items():
            if not isinstance(s, LayerSetting):
                if not isinstance(s, Mapping):
                    raise FrandiError(
                        f"policy layer '{name}': expected {{sparsity, bits, act_bits, channels}}, got {s!r}"
                    )
                unknown = set(s) - set(SETTING_KEYS)
                if unknown:
                    raise FrandiError(
                        f"policy layer '{name}': unknown keys {sorted(unknown)}; use {', '.join(SETTING_KEYS)}"
                    )
                s = LayerSetting(**s)  # type: ignore[arg-type]
            items.append((name, s))
        return cls(tuple(sorted(items)))

    def as_dict(self) -> dict[str, LayerSetting]:
        return dict(self.layers)

    def act_bits(self) -> dict[str, int]:
        """Layer name -> input-activation bits, for the layers whose activations are quantized."""
        return {n: s.act_bits for n, s in self.layers if s.act_bits is not None}

    def channels(self) -> dict[str, float]:
        """Layer name -> fraction of output channels removed, for the layers that prune channels."""
        return {n: s.channels for n, s in self.layers if s.channels}

    def to_json(self) -> str:
        return json.dumps({n: s.as_dict() for n, s in self.layers}, sort_keys=True)

    def digest(self) -> str:
        """A content hash of what the policy does: sparsities to SPARSITY_DIGITS decimals, so float noise (0.85
        against 0.8500000000000001) does not make two policies of one; channel fractions likewise, where set."""
        canon = {n: [round(s.sparsity, SPARSITY_DIGITS), s.bits, s.act_bits]
                 + ([round(s.channels, SPARSITY_DIGITS)] if s.channels else []) for n, s in self.layers}
        return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:32]

    @classmethod
    def from_json(cls, text: str) -> Policy:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise FrandiError(f"policy is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise FrandiError("policy JSON must be an object: layer name -> {sparsity, bits, act_bits}")
        return cls.from_dict(data)

    @classmethod
    def uniform(
        cls, model: nn.Module, sparsity: float = 0.0, bits: int | None = None, act_bits: int | None = None
    ) -> Policy:
        """The same setting on every compressible layer: the baseline every front is compared with."""
        s = LayerSetting(sparsity, bits, act_bits)
        return cls.from_dict({layer.name: s for layer in compressible_layers(model)})


@dataclass(frozen=True)
class LayerInfo:
    """A compressible layer: its name, module type and weight count."""

    name: str
    kind: str
    numel: int
    out_channels: int


def compressible_layers(model: nn.Module) -> list[LayerInfo]:
    """The model's Conv and Linear layers, in module order, with their weight counts."""
    return [
        LayerInfo(n, type(m).__name__, m.weight.numel(), m.weight.shape[0])
        for n, m in model.named_modules()
        if isinstance(m, COMPRESSIBLE)
    ]
