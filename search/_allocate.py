"""Allocated policy space: one global (sparsity, bits) level spread over the searched layers by a rule.

A per-layer search draws every layer on its own, so most of its space is bad corners (one layer at 90%
sparsity and 3 bits ruins the model). Here a trial picks a level and a rule; the rule decides where the
pruning goes, and the whole search space is a handful of parameters a sampler learns fast:

- ``uniform``: every searched layer at the level;
- ``global``: one magnitude threshold over all searched weights;
- ``lamp``: one threshold over LAMP scores (Lee et al. 2021: w^2 over the sum of the larger w^2 in its layer);
- ``erk``: Erdos-Renyi-kernel densities (Evci et al. 2020: density proportional to sum over product of dims);
- ``sensitivity``: per-layer (sparsity, bits) from a knapsack over the measured sensitivities, within the
  bytes of the uniform level.

Every rule prunes the level's fraction of the searched weights (the rules that place it keep each layer in
the space's sparsity range); offsets then shift the few most sensitive layers by a step or a bit width.

Warm starts: no single rule wins everywhere (on the Fashion-MNIST ResNet the knapsack is best at 4-6 bits,
global magnitude and LAMP at 3 bits), so the study starts from the most promising policy of any rule at size
budgets spread over the whole front, chosen by a probe (OD before recovery, BN statistics re-estimated) that
costs a few trials in all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import torch
from torch import nn

from frandi_core import LayerSetting, Policy, channel_importance, weight_layout
from storage import Storage

from ._config import CHANNEL_RULES, RULES, SpaceSection
from ._errors import ConfigError
from ._knapsack import choose
from ._sensitivity import Probe, Sensitivity, cached_sensitivity
from ._space import FP32, SearchSpace

SHIFT_STEPS = 2  # an offset moves a layer's sparsity by up to this many grid steps, its bits by one choice


def _scaled(sizes: np.ndarray, weights: np.ndarray, total: float, lo: float, hi: float) -> np.ndarray:
    """Fractions clip(c * weights, lo, hi) whose size-weighted sum is ``total`` (c found by bisection)."""
    a, b = 0.0, 1.0
    while float(sizes @ np.clip(b * weights, lo, hi)) < total and b < 1e12:
        b *= 2
    for _ in range(100):
        c = (a + b) / 2
        a, b = (c, b) if float(sizes @ np.clip(c * weights, lo, hi)) < total else (a, c)
    return np.clip(b * weights, lo, hi)


def _thresholded(scores: list[np.ndarray], k: int, lo: float, hi: float) -> list[int]:
    """Entries pruned per layer by one threshold over sorted ``scores`` (each layer kept in [lo, hi]) so that
    about ``k`` are pruned in all."""
    floor = [int(np.ceil(lo * len(s))) for s in scores]
    cap = [int(np.floor(hi * len(s))) for s in scores]
    merged = np.sort(np.concatenate(scores))

    def counts(t: float) -> list[int]:
        return [min(max(int(np.searchsorted(s, t)), f), c) for s, f, c in zip(scores, floor, cap, strict=True)]

    a, b = 0, len(merged)  # the threshold is merged[i]: prune every score below it
    while a < b:
        m = (a + b) // 2
        if sum(counts(merged[m])) < k:
            a = m + 1
        else:
            b = m
    return counts(merged[a] if a < len(merged) else np.inf)


def _lamp(sorted_abs: np.ndarray) -> np.ndarray:
    """LAMP scores of a layer's weights sorted by magnitude (ascending), in the same order (ascending too)."""
    sq = sorted_abs.astype(np.float64) ** 2
    tail = np.cumsum(sq[::-1])[::-1]  # sum of the squares of this weight and every larger one
    return sq / np.maximum(tail, 1e-300)


def _erk(shape: tuple[int, ...]) -> float:
    return float(sum(shape) / np.prod(shape))


def check_offsets(section: SpaceSection, base: SearchSpace) -> None:
    """The allocated space gives offsets to at most every searched layer."""
    if section.mode == "allocated" and section.offsets > len(base.searched):
        raise ConfigError(
            f"space.offsets is {section.offsets}, but only {len(base.searched)} layers are searched; lower it"
        )


@dataclass(frozen=True, eq=False)
class AllocatedSpace:
    """A SearchSpace searched through a level, a rule and offsets; see the module docstring."""

    base: SearchSpace
    rules: tuple[str, ...]
    sensitivity: Sensitivity
    numel: dict[str, int]
    shapes: dict[str, tuple[int, ...]]
    magnitudes: dict[str, np.ndarray] = field(repr=False)  # |w| sorted ascending, per searched layer
    weights: dict[str, torch.Tensor] = field(repr=False)  # for the sizes (shape, dtype) of each setting
    probe: Probe = field(repr=False)  # screens the warm starts
    offsets: int = 0
    channel_rules: tuple[str, ...] = ("uniform",)  # when channels are searched: how a level spreads over groups
    channel_scores: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # root -> sorted importance

    @classmethod
    def build(
        cls, base: SearchSpace, section: SpaceSection, teacher: nn.Module, table: Sensitivity, probe: Probe
    ) -> AllocatedSpace:
        check_offsets(section, base)
        modules = dict(teacher.named_modules())
        weights = {n: modules[n].weight.detach().cpu() for n in base.searched}
        mags = {n: np.sort(w.abs().flatten().numpy()) for n, w in weights.items()}
        scores = {}
        if base.groups:
            found = channel_importance(teacher, tuple(probe.heldout.shape[1:]))
            scores = {g[0]: np.sort(found[g[0]].numpy()) for g in base.groups}
        return cls(
            base,
            tuple(r for r in RULES if r in section.rules),
            table,
            {n: w.numel() for n, w in weights.items()},
            {n: tuple(w.shape) for n, w in weights.items()},
            mags,
            weights,
            probe,
            section.offsets,
            tuple(r for r in CHANNEL_RULES if r in section.channel_rules),
            scores,
        )

    @property
    def searched(self) -> tuple[str, ...]:
        return self.base.searched

    @property
    def bits(self) -> tuple[int, ...]:
        return self.base.bits

    def sparsities(self, rule: str, level: float) -> dict[str, float]:
        """Per-layer sparsity of a rule at a global level: the level's fraction of all searched weights."""
        names = list(self.searched)
        lo, hi = self.base.sparsity
        sizes = np.array([self.numel[n] for n in names], dtype=np.float64)
        k = round(level * sizes.sum())
        if rule == "uniform":
            return {n: level for n in names}
        if rule in ("global", "lamp"):
            scores = [self.magnitudes[n] if rule == "global" else _lamp(self.magnitudes[n]) for n in names]
            pruned = _thresholded(scores, k, lo, hi)
            return {n: c / self.numel[n] for n, c in zip(names, pruned, strict=True)}
        if rule == "erk":
            erk = np.array([_erk(self.shapes[n]) for n in names])
            density = _scaled(sizes, erk, sizes.sum() - k, 1 - hi, 1 - lo)
            return {n: float(1 - d) for n, d in zip(names, density, strict=True)}
        raise ValueError(f"no sparsity rule '{rule}'")

    def channel_fractions(self, rule: str, level: float) -> dict[str, float]:
        """Per-group fraction of output channels removed (by root layer) at a global level: every group at it
        (``uniform``), or one threshold over the groups' channel importances removing the level's fraction of all
        their channels (``importance``), each group kept in the space's channel range."""
        roots = [g[0] for g in self.base.groups]
        if rule == "uniform":
            return {r: level for r in roots}
        lo, hi = self.base.channels
        scores = [self.channel_scores[r] for r in roots]
        pruned = _thresholded(scores, round(level * sum(len(x) for x in scores)), lo, hi)
        return {r: c / len(x) for r, c, x in zip(roots, pruned, scores, strict=True)}

    def layer_bytes(self, name: str, setting: LayerSetting) -> int:
        w = self.weights[name]
        layout = weight_layout(w, setting)
        return layout.nbytes if layout else w.numel() * w.element_size()

    def knapsack(self, budget: int) -> dict[str, LayerSetting] | None:
        """Per-layer settings of the least summed sensitivity within ``budget`` bytes of searched weights."""
        t = self.sensitivity
        costs = [[self.layer_bytes(n, s) for s in t.settings] for n in t.layers]
        picks = choose(costs, t.od, budget)
        return None if picks is None else {n: t.settings[j] for n, j in zip(t.layers, picks, strict=True)}

    def allocate(self, rule: str, level: float, bits: int | None) -> dict[str, LayerSetting]:
        """The searched layers' settings of one rule at one global level."""
        if rule == "sensitivity":
            budget = sum(self.layer_bytes(n, LayerSetting(level, bits)) for n in self.searched)
            chosen = self.knapsack(budget)
            if chosen is not None:
                return chosen
            rule = "uniform"  # no measured combination fits: the level itself does
        return {n: LayerSetting(s, bits) for n, s in self.sparsities(rule, level).items()}

    def uniform(self, sparsity: float, bits: int) -> Policy:
        """The uniform policy of a level (whichever rules are searched): what sizes are measured against."""
        b = None if bits == FP32 else bits
        return Policy.from_dict(dict(self.base.fixed) | {n: LayerSetting(sparsity, b) for n in self.searched})

    def policy(self, params: dict[str, Any]) -> Policy:
        """The policy of a trial's parameters (see ``sample``)."""
        bits = None if params["bits"] == FP32 else int(params["bits"])
        settings = self.allocate(params["rule"], float(params["sparsity"]), bits)
        choices = sorted(self.base.bits)
        lo, hi = self.base.sparsity
        for i, name in enumerate(self.sensitivity.ranked()[: self.offsets]):
            s = settings[name]
            sparsity = min(max(s.sparsity + params[f"offset{i}:sparsity"] * self.base.step, lo), hi)
            b = FP32 if s.bits is None else s.bits
            at = choices.index(b) if b in choices else 0
            b = choices[min(max(at + params[f"offset{i}:bits"], 0), len(choices) - 1)]
            settings[name] = LayerSetting(round(sparsity, 6), None if b == FP32 else b)
        policy = Policy.from_dict(dict(self.base.fixed) | settings)
        if not self.base.groups:
            return policy
        fractions = self.channel_fractions(params["channel_rule"], float(params["channels"]))
        return self.base.with_channels(policy, fractions)

    def sample(self, trial: optuna.Trial) -> Policy:
        """Ask the trial for a level, a rule and the offsets; return the whole policy."""
        lo, hi = self.base.sparsity
        params: dict[str, Any] = {
            "sparsity": round(trial.suggest_float("sparsity", lo, hi, step=self.base.step), 6),
            "bits": trial.suggest_categorical("bits", list(self.base.bits)),
            "rule": trial.suggest_categorical("rule", list(self.rules)),
        }
        for i in range(self.offsets):
            params[f"offset{i}:sparsity"] = trial.suggest_int(f"offset{i}:sparsity", -SHIFT_STEPS, SHIFT_STEPS)
            params[f"offset{i}:bits"] = trial.suggest_int(f"offset{i}:bits", -1, 1)
        if self.base.groups:
            c_lo, c_hi = self.base.channels
            params["channels"] = trial.suggest_float("channels", c_lo, c_hi, step=self.base.channels_step)
            params["channel_rule"] = trial.suggest_categorical("channel_rule", list(self.channel_rules))
        return self.policy(params)

    def uniform_params(self, sparsity: float, bits: int, rule: str | None = None) -> dict[str, Any]:
        """Trial parameters of a level under a rule, no offsets, to enqueue. The baselines name no rule: they
        are uniform, or under the first searched rule when the study leaves "uniform" out of space.rules."""
        if rule is None:
            rule = "uniform" if "uniform" in self.rules else self.rules[0]
        params: dict[str, Any] = {"sparsity": self.base.snap(sparsity), "bits": bits, "rule": rule}
        for i in range(self.offsets):
            params |= {f"offset{i}:sparsity": 0, f"offset{i}:bits": 0}
        if self.base.groups:  # the fewest channels the space allows pruned
            params |= {"channels": self.base.channel_grid()[0], "channel_rule": self.channel_rules[0]}
        return params

    def warm_starts(self, n: int, *, min_ratio: float | None = None) -> list[dict[str, Any]]:
        """Parameters of ``n`` promising policies, one per size budget, the budgets spread evenly in compression
        ratio over the space (over the part that meets ``min_ratio``, when the study has that constraint).

        Budget i is ratio >= lo + (i + 1/2) w, w = (hi - lo) / n. Its candidates are, per bit width, the least
        compressed level that meets it (if within w of it) under every rule; the probe's best one is kept. Evenly
        in ratio, not in log size: the front is steepest, and budgets are tightest, at the small end.
        """
        if n == 0:
            return []
        levels = [(s, b) for b in self.bits for s in self.base.grid()]
        ratio = {lv: self.probe.ratio(self.uniform(*lv)) for lv in levels}
        lo, hi = max(min(ratio.values()), min_ratio or 0.0), max(ratio.values())
        width = (hi - lo) / n
        out: list[dict[str, Any]] = []
        seen: set[Policy] = set()
        for budget in lo + width * (np.arange(n) + 0.5):
            scored: dict[Policy, tuple[float, dict[str, Any]]] = {}
            for b in self.bits:
                fits = [lv for lv in levels if lv[1] == b and budget <= ratio[lv] <= budget + width]
                if not fits:
                    continue  # this bit width has no level just above the budget
                s, _ = min(fits, key=lambda lv: ratio[lv])
                for rule in self.rules:
                    params = self.uniform_params(s, b, rule)
                    policy = self.policy(params)
                    if policy not in scored and policy not in seen:
                        scored[policy] = (self.probe.od(policy), params)
            if scored:
                best = min(scored, key=lambda q: scored[q][0])
                seen.add(best)
                out.append(scored[best][1])
        return out


def study_space(
    section: SpaceSection,
    storage: Storage,
    batch_key: str,
    teacher: nn.Module,
    base: SearchSpace,
    heldout: torch.Tensor,
    teacher_out: torch.Tensor,
    recovery: torch.Tensor,
) -> SearchSpace | AllocatedSpace:
    """The space a study samples from: ``base`` itself in layerwise mode; in allocated mode, ``base`` through
    rules, with the study's sensitivity table (measured once, by whichever process needs it first) and a probe
    on the study's batches."""
    if section.mode != "allocated":
        return base
    table = cached_sensitivity(storage, batch_key, teacher, base, heldout, teacher_out)
    return AllocatedSpace.build(base, section, teacher, table, Probe(teacher, heldout, teacher_out, recovery))
