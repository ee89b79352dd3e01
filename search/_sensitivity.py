"""Per-layer sensitivity: OD when only one layer is compressed at each candidate setting, stored once per study;
and the probe: OD of a whole policy before recovery.

Forward passes on the held-out batch, no recovery: the table ranks layers for offsets and drives the
"sensitivity" allocation rule (a knapsack over it); the probe screens the candidate warm starts. Where the space
quantizes activations, the table also holds each layer's OD with only its input quantized (weights fp32), at each
activation bit width: the knapsack takes a layer's weight and activation costs as additive, as it takes layers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from frandi_core import (
    Compressor,
    LayerSetting,
    Policy,
    compressible_layers,
    magnitude_mask,
    model_outputs,
    model_size,
    od_from_outputs,
    quantize_activations_,
    recalibrate_,
    remove_activation_quantizers_,
)
from storage import Storage

from ._space import FP32, SearchSpace

LEVELS = 5  # candidate sparsities measured per layer: evenly over the space's grid, both ends included


@dataclass(frozen=True)
class Sensitivity:
    """od[i][j]: held-out OD with only layer ``layers[i]``'s weights compressed at ``settings[j]``; act_od[i][k]:
    with only its input quantized at ``act_bits[k]`` bits (empty when the space quantizes no activation);
    ``seconds`` it took."""

    layers: tuple[str, ...]
    settings: tuple[LayerSetting, ...]
    od: tuple[tuple[float, ...], ...]
    seconds: float
    act_bits: tuple[int, ...] = ()
    act_od: tuple[tuple[float, ...], ...] = ()

    def to_json(self) -> str:
        data = {
            "layers": list(self.layers),
            "settings": [[s.sparsity, s.bits] for s in self.settings],
            "od": [list(r) for r in self.od],
            "seconds": self.seconds,
        }
        if self.act_bits:  # a table without activations reads as it always did
            data |= {"act_bits": list(self.act_bits), "act_od": [list(r) for r in self.act_od]}
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Sensitivity:
        d = json.loads(text)
        settings = tuple(LayerSetting(float(s), b) for s, b in d["settings"])
        return cls(
            tuple(d["layers"]), settings, tuple(tuple(r) for r in d["od"]), float(d["seconds"]),
            tuple(d.get("act_bits", ())), tuple(tuple(r) for r in d.get("act_od", ())),
        )

    def act_cost(self, layer: int, bits: int | None) -> float:
        """OD of quantizing only layer ``layer``'s input at ``bits`` (None: fp32, no cost)."""
        return 0.0 if bits is None else self.act_od[layer][self.act_bits.index(bits)]

    def ranked(self) -> list[str]:
        """Layers, most sensitive first (mean OD over the candidate weight settings, plus the mean over the
        activation bit widths where the table has them)."""
        mean = {n: sum(r) / len(r) for n, r in zip(self.layers, self.od, strict=True)}
        for n, r in zip(self.layers, self.act_od, strict=False):  # no activation columns: no term
            mean[n] += sum(r) / len(r)
        return sorted(self.layers, key=lambda n: -mean[n])


def candidates(space: SearchSpace) -> list[LayerSetting]:
    """The settings measured per layer: LEVELS sparsities on the space's step grid times every bit choice."""
    grid = space.grid()
    levels = [grid[i] for i in sorted({round(k * (len(grid) - 1) / (LEVELS - 1)) for k in range(LEVELS)})]
    return [LayerSetting(s, None if b == FP32 else b) for s in levels for b in sorted(space.bits)]


def act_candidates(space: SearchSpace) -> list[int]:
    """The activation bit widths measured per layer: the space's, fp32 left out (it costs nothing)."""
    return sorted(b for b in set(space.act_bits) if b != FP32)


def _compressed(original: torch.Tensor, s: LayerSetting, weight_clip: str = "max") -> torch.Tensor:
    """A weight as compressed at a setting (magnitude mask, then fake quantization, each channel clipped as
    ``compress`` clips it by ``weight_clip``), computed from its original."""
    mask = magnitude_mask(original, s.sparsity) if s.sparsity > 0 else None
    return Compressor.of(original, mask, s.bits, weight_clip)(original)


@torch.no_grad()
def measure(
    teacher: nn.Module,
    layers: list[str],
    settings: list[LayerSetting],
    heldout: torch.Tensor,
    teacher_out: torch.Tensor,
    *,
    act_bits: list[int] | None = None,
    calibration: torch.Tensor | None = None,
    method: str = "mse",
    weight_clip: str = "max",
) -> Sensitivity:
    """Compress one layer at a time (in a copy), at each setting (weights clipped by ``weight_clip``), and measure
    OD; the teacher is not changed.
    ``act_bits``: also quantize one layer's input at a time at each of these widths, its range calibrated on
    ``calibration`` (the recovery batch) by ``method``."""
    t0 = time.perf_counter()
    model = copy.deepcopy(teacher).eval()
    modules = dict(model.named_modules())
    table, act_table = [], []
    for name in layers:
        weight = modules[name].weight
        original = weight.detach().clone()
        row = []
        for s in settings:
            weight.copy_(_compressed(original, s, weight_clip))
            row.append(od_from_outputs(teacher_out, model_outputs(model, heldout)))
        weight.copy_(original)
        table.append(tuple(row))
        if act_bits:
            assert calibration is not None, "activation sensitivities need calibration inputs"
            act_row = []
            for b in act_bits:
                quantize_activations_(model, {name: b}, calibration, method)
                act_row.append(od_from_outputs(teacher_out, model_outputs(model, heldout)))
                remove_activation_quantizers_(model)
            act_table.append(tuple(act_row))
    return Sensitivity(
        tuple(layers), tuple(settings), tuple(table), time.perf_counter() - t0, tuple(act_bits or ()), tuple(act_table)
    )


PROBE_SAMPLES = 64  # recovery images the probe re-estimates BN statistics on (32 to 256 ranked alike, measured)


class Probe:
    """A whole policy's OD before recovery and its compression ratio: a screen that costs a fraction of a trial,
    to choose which policies are worth a trial first.

    The compressed weights' BN statistics are re-estimated on the synthetic recovery batch first (EagleEye's
    adaptive BN, Li et al. 2020): measured on the three bench models, that ranks policies as their OD after
    FR does far better than their raw OD (Spearman 0.986 / 0.986 / 0.877 against 0.972 / 0.960 / 0.756 on
    the Fashion-MNIST ResNet, digits and the separable net). Weights written into one working copy of the teacher
    (a copy per policy costs more than its forwards); a policy's activation quantizers are calibrated on the same
    images by ``method``, after the BN statistics, and dropped again.
    """

    def __init__(
        self,
        teacher: nn.Module,
        heldout: torch.Tensor,
        teacher_out: torch.Tensor,
        recovery: torch.Tensor,
        method: str = "mse",
        weight_clip: str = "max",
    ) -> None:
        self.teacher, self.heldout, self.teacher_out, self.method = teacher, heldout, teacher_out, method
        self.weight_clip = weight_clip
        self.recovery = recovery[:PROBE_SAMPLES]
        self._model = copy.deepcopy(teacher).eval()
        modules = dict(self._model.named_modules())
        self._weights = {layer.name: modules[layer.name].weight for layer in compressible_layers(self._model)}
        self._originals = {n: w.detach().clone() for n, w in self._weights.items()}

    @torch.no_grad()
    def od(self, policy: Policy) -> float:
        for name, s in policy.layers:
            original = self._originals[name]
            dense = s.sparsity == 0 and s.bits is None
            self._weights[name].copy_(original if dense else _compressed(original, s, self.weight_clip))
        recalibrate_(self._model, self.recovery)
        acts = policy.act_bits()
        try:
            if acts:
                quantize_activations_(self._model, acts, self.recovery, self.method)
            od = od_from_outputs(self.teacher_out, model_outputs(self._model, self.heldout))
        finally:
            remove_activation_quantizers_(self._model)
        return od if math.isfinite(od) else math.inf

    def ratio(self, policy: Policy) -> float:
        return model_size(self.teacher, policy).ratio


def sensitivity_key(
    batch_key: str,
    layers: list[str],
    settings: list[LayerSetting],
    act_bits: list[int],
    method: str,
    weight_clip: str = "max",
) -> str:
    """Content key of a study's table: its batches (model weights and synthetic config) and what is measured
    (activation widths and their calibration only when measured, the weight clipping only when not "max": so
    older tables keep their key)."""
    what: list = [batch_key, layers, [[s.sparsity, s.bits] for s in settings]]
    what += [act_bits, method] if act_bits else []
    blob = json.dumps(what + ([weight_clip] if weight_clip != "max" else []))
    return "sens-" + hashlib.sha256(blob.encode()).hexdigest()[:32]


def cached_sensitivity(
    storage: Storage,
    batch_key: str,
    teacher: nn.Module,
    space: SearchSpace,
    heldout: torch.Tensor,
    teacher_out: torch.Tensor,
    calibration: torch.Tensor | None = None,
    method: str = "mse",
    weight_clip: str = "max",
) -> Sensitivity:
    """The study's sensitivity table from the storage; exactly one worker measures a missing one.
    ``calibration``: the recovery batch, for a space that quantizes activations."""
    layers, settings, acts = list(space.searched), candidates(space), act_candidates(space)
    key = sensitivity_key(batch_key, layers, settings, acts, method, weight_clip)

    def make() -> bytes:
        return measure(
            teacher, layers, settings, heldout, teacher_out, act_bits=acts, calibration=calibration, method=method,
            weight_clip=weight_clip,
        ).to_json().encode()

    raw = storage.get_or_create_blob(key, make, what="the sensitivity table", meta={"kind": "sensitivity"})
    return Sensitivity.from_json(raw.decode())
