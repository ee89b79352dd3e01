"""The search space: which layers are searched, and how a trial's parameters become a Policy."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import optuna
from torch import nn

from frandi_core import FrandiError, LayerInfo, LayerSetting, Policy, channel_groups, compressible_layers

from ._config import SpaceSection
from ._errors import ConfigError

FP32 = 32  # a bit-width choice that keeps the layer's weights in fp32


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return pattern == name


def _bits(b: Any) -> int | None:
    return None if b == FP32 else b


def _setting(value: Any, key: str) -> LayerSetting:
    if not isinstance(value, dict) or set(value) - {"sparsity", "bits", "act_bits", "channels"}:
        raise ConfigError(
            f"'{key}' must be a table like {{sparsity = 0.5, bits = 8, act_bits = 8, channels = 0.25}}, got {value!r}"
        )
    try:
        return LayerSetting(
            float(value.get("sparsity", 0.0)), _bits(value.get("bits", FP32)), _bits(value.get("act_bits", FP32)),
            float(value.get("channels", 0.0)),
        )
    except (TypeError, ValueError, FrandiError) as e:
        raise ConfigError(f"'{key}': {e}") from None


@dataclass(frozen=True)
class SearchSpace:
    """Resolved per-layer roles: searched layers (in model order) and fixed settings."""

    searched: tuple[str, ...]
    fixed: tuple[tuple[str, LayerSetting], ...]
    sparsity: tuple[float, float]
    step: float
    bits: tuple[int, ...]
    act_bits: tuple[int, ...] = (FP32,)
    channels: tuple[float, float] = (0.0, 0.0)  # the searched fraction of output channels removed, per group
    channels_step: float = 0.125
    groups: tuple[tuple[str, ...], ...] = ()  # coupled groups (root first) holding a searched layer: one knob each

    @classmethod
    def of_model(cls, space: SpaceSection, model: nn.Module, input_shape: tuple[int, ...]) -> SearchSpace:
        """The space of ``model``: its layers and, when the space searches channels, its coupled groups."""
        groups = channel_groups(model, input_shape) if space.prunes_channels else []
        return cls.build(space, compressible_layers(model), groups)

    @classmethod
    def build(
        cls, space: SpaceSection, layers: list[LayerInfo], groups: list[tuple[str, ...]] | None = None
    ) -> SearchSpace:
        """``groups``: the model's coupled channel groups (``channel_groups``), needed when channels are searched."""
        if not layers:
            raise ConfigError("the model has no Conv or Linear layers to compress")
        names = [layer.name for layer in layers]
        for p in list(space.layers) + list(space.fixed):
            if p.startswith("re:"):
                try:
                    re.compile(p[3:])
                except re.error as e:
                    raise ConfigError(
                        f"space pattern '{p}' is not a valid regular expression ({e})"
                    ) from None
            if not any(_matches(p, n) for n in names):
                raise ConfigError(
                    f"space pattern '{p}' matches no compressible layer; layers are "
                    f"{names[:6]}{' ...' if len(names) > 6 else ''}"
                )
        fixed_settings = {p: _setting(v, f"space.fixed.{p}") for p, v in space.fixed.items()}
        fixed: dict[str, LayerSetting] = {}
        searched = []
        edge = {names[0], names[-1]} if space.keep_first_last else set()
        edge_act = 8 if any(b != FP32 for b in space.act_bits) else None  # W8A8 where activations are searched
        for n in names:
            if n in edge:
                fixed[n] = LayerSetting(0.0, 8, edge_act)
                continue
            exact = fixed_settings.get(n)
            pattern = next(
                (s for p, s in fixed_settings.items() if p.startswith("re:") and _matches(p, n)), None
            )
            if exact or pattern:
                fixed[n] = exact or pattern  # type: ignore[assignment]
            elif any(_matches(p, n) for p in space.layers):
                searched.append(n)
        if not searched:
            raise ConfigError("space.layers leaves no layer to search; widen space.layers or space.fixed")
        lo, hi = space.sparsity
        if space.prunes_channels and groups is None:
            raise ValueError("a space that searches channels is built with the model's channel groups")
        knobs = tuple(g for g in groups or () if any(n in searched for n in g))
        if space.prunes_channels and not knobs:
            raise ConfigError(
                "space.channels is set, but no searched layer's output channels can be pruned (each feeds the "
                "model's outputs, or Torch-Pruning found no group for it); remove space.channels or widen space.layers"
            )
        c_lo, c_hi = space.channels
        return cls(
            tuple(searched), tuple(sorted(fixed.items())), (lo, hi), space.sparsity_step, space.bits, space.act_bits,
            (c_lo, c_hi), space.channels_step, knobs,
        )

    def sample(self, trial: optuna.Trial) -> Policy:
        """Ask the trial for each searched layer's sparsity, bits and activation bits; return the whole policy.

        Activation bits are a trial parameter only when there is a choice: one value (fp32 by default) is set
        directly, so a space without activation choices samples exactly the parameters it always did.
        """
        settings = dict(self.fixed)
        for n in self.searched:
            s = trial.suggest_float(f"{n}:sparsity", self.sparsity[0], self.sparsity[1], step=self.step)
            b = trial.suggest_categorical(f"{n}:bits", list(self.bits))
            a = trial.suggest_categorical(f"{n}:act_bits", list(self.act_bits)) if len(self.act_bits) > 1 else None
            settings[n] = LayerSetting(round(s, 6), _bits(int(b)), _bits(self.act_bits[0] if a is None else int(a)))
        lo, hi = self.channels
        fractions = {g[0]: trial.suggest_float(f"{g[0]}:channels", lo, hi, step=self.channels_step)
                     for g in self.groups}
        return self.with_channels(Policy.from_dict(settings), fractions)

    def with_channels(self, policy: Policy, fractions: dict[str, float]) -> Policy:
        """``policy`` with each group's fraction (by its root layer) on the group's searched layers."""
        settings = policy.as_dict()
        for group in self.groups:
            c = round(fractions.get(group[0], 0.0), 6)
            for n in group:
                if n in self.searched and c:
                    settings[n] = replace(settings[n], channels=c)
        return Policy.from_dict(settings)

    def channel_grid(self) -> list[float]:
        """The channel fractions a trial can draw: low to high by the step."""
        lo, hi = self.channels
        return [round(lo + i * self.channels_step, 6) for i in range(round((hi - lo) / self.channels_step) + 1)]

    def grid(self) -> list[float]:
        """The sparsities a trial can draw: low to high by the step."""
        lo, hi = self.sparsity
        return [round(lo + i * self.step, 6) for i in range(round((hi - lo) / self.step) + 1)]

    def snap(self, sparsity: float) -> float:
        """The grid sparsity nearest to ``sparsity``."""
        return min(self.grid(), key=lambda s: abs(s - sparsity))

    def uniform_params(self, sparsity: float, bits: int, act_bits: int | None = None) -> dict[str, Any]:
        """Trial parameters of the uniform policy (same setting on every searched layer), to enqueue.

        ``act_bits``: the activation bits, when they are searched (default: the largest choice)."""
        s = self.snap(sparsity)
        params: dict[str, Any] = {}
        for n in self.searched:
            params[f"{n}:sparsity"] = round(s, 6)
            params[f"{n}:bits"] = bits
            if len(self.act_bits) > 1:
                params[f"{n}:act_bits"] = max(self.act_bits) if act_bits is None else act_bits
        for g in self.groups:  # the baselines prune the fewest channels the space allows
            params[f"{g[0]}:channels"] = self.channel_grid()[0]
        return params

    def smallest(self) -> Policy:
        """The smallest policy in the space: every searched layer at the top sparsity and the fewest bits."""
        b = min(self.bits)
        top = LayerSetting(self.sparsity[1], None if b == FP32 else b)
        smallest = Policy.from_dict(dict(self.fixed) | {n: top for n in self.searched})
        return self.with_channels(smallest, {g[0]: self.channel_grid()[-1] for g in self.groups})

    def cheapest(self) -> Policy:
        """The policy of the fewest bit operations in the space: every searched layer at the fewest weight and
        activation bits (pruning does not count)."""
        top = LayerSetting(0.0, _bits(min(self.bits)), _bits(min(self.act_bits)))
        return Policy.from_dict(dict(self.fixed) | {n: top for n in self.searched})

    def warm_starts(
        self,
        n: int,
        *,
        min_ratio: float | None = None,
        max_bops: float | None = None,
        max_latency_ms: float | None = None,
    ) -> list[dict[str, Any]]:
        """Parameters to enqueue after the baselines: none in a per-layer space (see AllocatedSpace)."""
        return []
