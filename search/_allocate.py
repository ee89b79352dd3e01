"""Allocated policy space: one global (sparsity, weight bits, activation bits) level spread over the searched
layers by a rule.

A per-layer search draws every layer on its own, so most of its space is bad corners (one layer at 90%
sparsity and 3 bits ruins the model). Here a trial picks a level and a rule; the rule decides where the
pruning goes, and the whole search space is a handful of parameters a sampler learns fast:

- ``uniform``: every searched layer at the level;
- ``global``: one magnitude threshold over all searched weights;
- ``lamp``: one threshold over LAMP scores (Lee et al. 2021: w^2 over the sum of the larger w^2 in its layer);
- ``erk``: Erdos-Renyi-kernel densities (Evci et al. 2020: density proportional to sum over product of dims);
- ``sensitivity``: per-layer (sparsity, weight bits, activation bits) from a knapsack over the measured
  sensitivities, within the bytes of the uniform level and, where the space quantizes activations, within its
  bit operations (its predicted latency, in a study that predicts latency), as MCT and HAWQ-V3 allocate.

Every rule prunes the level's fraction of the searched weights (the rules that place it keep each layer in
the space's sparsity range) and gives every layer the level's weight and activation bits (the knapsack chooses
its own); offsets then shift the few most sensitive layers by a step or a bit width (weights, and activations
where the space has a choice of activation bits).

Warm starts: no single rule wins everywhere (on the Fashion-MNIST ResNet the knapsack is best at 4-6 bits,
global magnitude and LAMP at 3 bits), so the study starts from the most promising policy of any rule at
budgets spread over the whole front, chosen by a probe (OD before recovery, BN statistics re-estimated) that
costs a few trials in all. The budgets are those the study is constrained by: latency (``max_latency_ms``), else
bit operations (``max_bops``), else size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import torch
from torch import nn

from frandi_core import LatencyTable, LayerSetting, Policy, bops, channel_importance, layer_macs, weight_layout
from storage import Storage

from ._config import CHANNEL_RULES, RULES, SpaceSection
from ._errors import ConfigError
from ._knapsack import choose, choose_within
from ._sensitivity import Probe, Sensitivity, cached_sensitivity
from ._space import FP32, SearchSpace

SHIFT_STEPS = 2  # an offset moves a layer's sparsity by up to this many grid steps, its bits by one choice


def _bits(b: Any) -> int | None:
    """A space's bit choice as a LayerSetting's (32 is fp32: None)."""
    return None if b == FP32 else int(b)


def _shift(choices: list[int], b: int | None, by: int) -> int | None:
    """``b`` (None: fp32) moved ``by`` places among the sorted ``choices`` (clamped); one not among them counts as
    the first."""
    at = choices.index(b or FP32) if (b or FP32) in choices else 0
    return _bits(choices[min(max(at + by, 0), len(choices) - 1)])


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
    macs: dict[str, int] = field(default_factory=dict, repr=False)  # every compressible layer's, for BOPs
    latency: LatencyTable | None = field(default=None, repr=False)  # the study's table, if it predicts latency
    cap: float | None = None  # the study's budget on ``second`` for the whole policy (max_bops, max_latency_ms)

    @classmethod
    def build(
        cls,
        base: SearchSpace,
        section: SpaceSection,
        teacher: nn.Module,
        table: Sensitivity,
        probe: Probe,
        latency: LatencyTable | None = None,
        *,
        max_bops: float | None = None,
        max_latency_ms: float | None = None,
    ) -> AllocatedSpace:
        """``max_bops`` / ``max_latency_ms``: the study's budget, which the sensitivity rule then allocates within
        (see ``allocate``)."""
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
            layer_macs(teacher, tuple(probe.heldout.shape[1:])),
            latency,
            max_latency_ms if latency is not None else max_bops,
        )

    @property
    def searched(self) -> tuple[str, ...]:
        return self.base.searched

    @property
    def bits(self) -> tuple[int, ...]:
        return self.base.bits

    @property
    def acts(self) -> tuple[int, ...]:
        """The activation bit choices of the level (32: fp32)."""
        return self.base.act_bits

    @property
    def second(self) -> str | None:
        """What the sensitivity rule keeps besides bytes: "latency" in a study that predicts it, else "bops", where
        the space quantizes activations; None otherwise (weights alone: bytes, as before activations)."""
        if all(a == FP32 for a in self.acts):
            return None
        return "latency" if self.latency is not None else "bops"

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

    def layer_cost(self, name: str, setting: LayerSetting) -> float:
        """A layer's share of what ``second`` counts: its bit operations, or its predicted latency over fp32."""
        if self.second == "latency" and self.latency is not None:
            if setting.bits is None or setting.act_bits is None or name not in self.latency.layers:
                return 0.0
            fp32, integer = self.latency.layers[name]
            return integer - fp32
        return float(self.macs[name] * (setting.bits or FP32) * (setting.act_bits or FP32))

    def bops(self, policy: Policy) -> int:
        """The whole policy's bit operations (every compressible layer)."""
        return bops(self.macs, policy)

    def knapsack(self, budget: int, limit: float | None = None) -> dict[str, LayerSetting] | None:
        """Per-layer settings (sparsity, weight bits, activation bits) of the least summed sensitivity within
        ``budget`` bytes of searched weights and, with ``limit``, within that much of ``second`` (summed
        ``layer_cost``). A layer's weight and activation sensitivities add up."""
        t = self.sensitivity
        acts = [_bits(a) for a in sorted(set(self.acts))]
        options = [(j, LayerSetting(s.sparsity, s.bits, a)) for j, s in enumerate(t.settings) for a in acts]
        costs = [[self.layer_bytes(n, o) for _, o in options] for n in t.layers]
        values = [[t.od[i][j] + t.act_cost(i, o.act_bits) for j, o in options] for i in range(len(t.layers))]
        if limit is None:
            picks = choose(costs, values, budget)
        else:
            extra = [[self.layer_cost(n, o) for _, o in options] for n in t.layers]
            picks = choose_within(costs, values, budget, extra, limit)
        return None if picks is None else {n: options[j][1] for n, j in zip(t.layers, picks, strict=True)}

    def searched_cap(self) -> float | None:
        """What the study's budget (``cap``) leaves the searched layers of ``second``: the fixed layers' share (and
        the fp32 model's latency) taken off; None without a budget."""
        if self.cap is None or self.second is None:
            return None
        fixed = sum(self.layer_cost(n, s) for n, s in self.base.fixed)
        base = self.latency.base_ms if self.second == "latency" and self.latency is not None else 0.0
        return self.cap - fixed - base

    def allocate(
        self, rule: str, level: float, bits: int | None, act_bits: int | None = None
    ) -> dict[str, LayerSetting]:
        """The searched layers' settings of one rule at one global level (bits None: fp32). The sensitivity rule
        keeps the level's bytes and its BOPs (latency), or, in a study with that budget, the study's budget
        itself: the knapsack then spends the slack between two uniform levels that a level cannot."""
        if rule == "sensitivity":
            uniform = LayerSetting(level, bits, act_bits)
            budget = sum(self.layer_bytes(n, uniform) for n in self.searched)
            limit = self.searched_cap()
            if limit is None and self.second is not None:
                limit = sum(self.layer_cost(n, uniform) for n in self.searched)
            chosen = self.knapsack(budget, limit)
            if chosen is not None:
                return chosen
            rule = "uniform"  # no measured combination fits: the level itself does
        return {n: LayerSetting(s, bits, act_bits) for n, s in self.sparsities(rule, level).items()}

    def uniform(self, sparsity: float, bits: int, act_bits: int | None = None) -> Policy:
        """The uniform policy of a level (whichever rules are searched): what budgets are measured against.
        ``act_bits``: the level's activation bits (default: the largest choice)."""
        a = max(self.acts) if act_bits is None else act_bits
        setting = LayerSetting(sparsity, _bits(bits), _bits(a))
        return Policy.from_dict(dict(self.base.fixed) | {n: setting for n in self.searched})

    def policy(self, params: dict[str, Any]) -> Policy:
        """The policy of a trial's parameters (see ``sample``)."""
        act = _bits(params["act_bits"] if len(self.acts) > 1 else self.acts[0])
        settings = self.allocate(params["rule"], float(params["sparsity"]), _bits(params["bits"]), act)
        choices, act_choices = sorted(self.base.bits), sorted(self.acts)
        lo, hi = self.base.sparsity
        for i, name in enumerate(self.sensitivity.ranked()[: self.offsets]):
            s = settings[name]
            sparsity = min(max(s.sparsity + params[f"offset{i}:sparsity"] * self.base.step, lo), hi)
            b = _shift(choices, s.bits, params[f"offset{i}:bits"])
            a = _shift(act_choices, s.act_bits, params[f"offset{i}:act_bits"]) if len(self.acts) > 1 else s.act_bits
            settings[name] = LayerSetting(round(sparsity, 6), b, a)
        policy = Policy.from_dict(dict(self.base.fixed) | settings)
        if not self.base.groups:
            return policy
        fractions = self.channel_fractions(params["channel_rule"], float(params["channels"]))
        return self.base.with_channels(policy, fractions)

    def sample(self, trial: optuna.Trial) -> Policy:
        """Ask the trial for a level, a rule and the offsets; return the whole policy. Activation bits are a
        parameter (of the level and of each offset) only where the space has a choice of them."""
        lo, hi = self.base.sparsity
        params: dict[str, Any] = {
            "sparsity": round(trial.suggest_float("sparsity", lo, hi, step=self.base.step), 6),
            "bits": trial.suggest_categorical("bits", list(self.base.bits)),
            "rule": trial.suggest_categorical("rule", list(self.rules)),
        }
        if len(self.acts) > 1:
            params["act_bits"] = trial.suggest_categorical("act_bits", list(self.acts))
        for i in range(self.offsets):
            params[f"offset{i}:sparsity"] = trial.suggest_int(f"offset{i}:sparsity", -SHIFT_STEPS, SHIFT_STEPS)
            params[f"offset{i}:bits"] = trial.suggest_int(f"offset{i}:bits", -1, 1)
            if len(self.acts) > 1:
                params[f"offset{i}:act_bits"] = trial.suggest_int(f"offset{i}:act_bits", -1, 1)
        if self.base.groups:
            c_lo, c_hi = self.base.channels
            params["channels"] = trial.suggest_float("channels", c_lo, c_hi, step=self.base.channels_step)
            params["channel_rule"] = trial.suggest_categorical("channel_rule", list(self.channel_rules))
        return self.policy(params)

    def uniform_params(
        self, sparsity: float, bits: int, rule: str | None = None, act_bits: int | None = None
    ) -> dict[str, Any]:
        """Trial parameters of a level under a rule, no offsets, to enqueue. The baselines name no rule: they
        are uniform, or under the first searched rule when the study leaves "uniform" out of space.rules.
        ``act_bits``: the level's activation bits, where the space has a choice (default: the largest)."""
        if rule is None:
            rule = "uniform" if "uniform" in self.rules else self.rules[0]
        params: dict[str, Any] = {"sparsity": self.base.snap(sparsity), "bits": bits, "rule": rule}
        if len(self.acts) > 1:
            params["act_bits"] = max(self.acts) if act_bits is None else act_bits
        for i in range(self.offsets):
            params |= {f"offset{i}:sparsity": 0, f"offset{i}:bits": 0}
            if len(self.acts) > 1:
                params[f"offset{i}:act_bits"] = 0
        if self.base.groups:  # the fewest channels the space allows pruned
            params |= {"channels": self.base.channel_grid()[0], "channel_rule": self.channel_rules[0]}
        return params

    def _levels(self) -> list[tuple[int, int]]:
        """Every (weight bits, activation bits) pair of a level."""
        return [(b, a) for b in self.bits for a in self.acts]

    def warm_starts(
        self,
        n: int,
        *,
        min_ratio: float | None = None,
        max_bops: float | None = None,
        max_latency_ms: float | None = None,
    ) -> list[dict[str, Any]]:
        """Parameters of ``n`` promising policies, one per budget, the budgets spread over what the study is
        constrained by: predicted latency (``max_latency_ms``, in a study that predicts it), else bit operations
        (``max_bops``; see ``_warm_under``), else size.

        Size: budget i is ratio >= lo + (i + 1/2) w, w = (hi - lo) / n, over the part of the space that meets
        ``min_ratio``. Its candidates are, per (weight bits, activation bits), the least compressed level that
        meets it (if within w of it) under every rule; the probe's best one is kept. Evenly in ratio, not in log
        size: the front is steepest, and budgets are tightest, at the small end.
        """
        if n == 0:
            return []
        if max_latency_ms is not None and self.latency is not None:
            return self._warm_under(n, self.latency.predict, max_latency_ms, min_ratio)
        if max_bops is not None:
            return self._warm_under(n, self.bops, max_bops, min_ratio)
        levels = [(s, b, a) for b, a in self._levels() for s in self.base.grid()]
        ratio = {lv: self.probe.ratio(self.uniform(*lv)) for lv in levels}
        lo, hi = max(min(ratio.values()), min_ratio or 0.0), max(ratio.values())
        width = (hi - lo) / n
        out: list[dict[str, Any]] = []
        seen: set[Policy] = set()
        for budget in lo + width * (np.arange(n) + 0.5):
            candidates = []
            for b, a in self._levels():
                fits = [lv for lv in levels if lv[1:] == (b, a) and budget <= ratio[lv] <= budget + width]
                if fits:  # else this pair has no level just above the budget
                    s = min(fits, key=lambda lv: ratio[lv])[0]
                    candidates += [self.uniform_params(s, b, rule, a) for rule in self.rules]
            best = self._best(candidates, seen)
            if best is not None:
                out.append(best)
        return out

    def _best(
        self, candidates: list[dict[str, Any]], seen: set[Policy], fits: Callable[[Policy], bool] | None = None
    ) -> dict[str, Any] | None:
        """The candidate whose policy the probe ranks best, among policies not in ``seen`` (it is added there)
        and, with ``fits``, only those it accepts."""
        scored: dict[Policy, tuple[float, dict[str, Any]]] = {}
        for params in candidates:
            policy = self.policy(params)
            if policy not in scored and policy not in seen and (fits is None or fits(policy)):
                scored[policy] = (self.probe.od(policy), params)
        if not scored:
            return None
        best = min(scored, key=lambda q: scored[q][0])
        seen.add(best)
        return scored[best][1]

    def _warm_under(
        self, n: int, cost: Callable[[Policy], float], limit: float, min_ratio: float | None
    ) -> list[dict[str, Any]]:
        """Warm starts under a budget on ``cost`` (BOPs, latency), which pruning does not change: each (weight
        bits, activation bits) pair at its least sparsity that meets ``min_ratio`` (the space's lowest without
        one), under every rule. Budget i is cost <= lo + (i + 1) w, w = (limit - lo) / n, lo the cheapest pair's
        cost; its candidates are the pairs whose uniform cost is within w below it, and only policies that meet
        ``limit`` (the knapsack's may cost less than its level, never more)."""
        least: dict[tuple[int, int], float] = {}
        for pair in self._levels():
            s = next((s for s in self.base.grid() if min_ratio is None
                      or self.probe.ratio(self.uniform(s, *pair)) >= min_ratio), None)
            if s is not None:
                least[pair] = s
        spend = {pair: cost(self.uniform(s, *pair)) for pair, s in least.items()}
        spend = {pair: c for pair, c in spend.items() if c <= limit}
        if not spend:
            return []
        lo = min(spend.values())
        width = (limit - lo) / n
        out: list[dict[str, Any]] = []
        seen: set[Policy] = set()
        for i in range(n):
            top = lo + (i + 1) * width
            pairs = [p for p, c in spend.items() if top - width <= c <= top]
            candidates = [self.uniform_params(least[(b, a)], b, rule, a) for b, a in pairs for rule in self.rules]
            if i == n - 1 and "sensitivity" in self.rules and self.searched_cap() is not None:
                # the knapsack within the study's budget itself, from every level's bytes
                candidates += [self.uniform_params(s, b, "sensitivity", a) for (b, a), s in least.items()]
            best = self._best(candidates, seen, lambda p: cost(p) <= limit)
            if best is not None:
                out.append(best)
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
    *,
    method: str = "mse",
    latency: LatencyTable | None = None,
    weight_clip: str = "max",
    max_bops: float | None = None,
    max_latency_ms: float | None = None,
) -> SearchSpace | AllocatedSpace:
    """The space a study samples from: ``base`` itself in layerwise mode; in allocated mode, ``base`` through
    rules, with the study's sensitivity table (measured once, by whichever process needs it first), a probe
    on the study's batches (activation ranges calibrated by ``method``, weights clipped by ``weight_clip``, as
    trials are), the study's latency table, if any, and its budget (``max_bops``, ``max_latency_ms``), which the
    sensitivity rule allocates within."""
    if section.mode != "allocated":
        return base
    table = cached_sensitivity(storage, batch_key, teacher, base, heldout, teacher_out, recovery, method, weight_clip)
    probe = Probe(teacher, heldout, teacher_out, recovery, method, weight_clip)
    return AllocatedSpace.build(
        base, section, teacher, table, probe, latency, max_bops=max_bops, max_latency_ms=max_latency_ms
    )
