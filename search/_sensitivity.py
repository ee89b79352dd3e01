"""Per-layer sensitivity: OD when only one layer is compressed at each candidate setting, stored once per study.

Forward passes on the held-out batch, no recovery: the table ranks layers for offsets, drives the
"sensitivity" allocation rule (a knapsack over it) and the warm starts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass

import torch
from torch import nn

from frandi_core import Compressor, LayerSetting, magnitude_mask, model_outputs, od_from_outputs
from storage import Storage

from ._space import FP32, SearchSpace

LEVELS = 5  # candidate sparsities measured per layer: evenly over the space's grid, both ends included


@dataclass(frozen=True)
class Sensitivity:
    """od[i][j]: held-out OD with only layer ``layers[i]`` compressed at ``settings[j]``; ``seconds`` it took."""

    layers: tuple[str, ...]
    settings: tuple[LayerSetting, ...]
    od: tuple[tuple[float, ...], ...]
    seconds: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "layers": list(self.layers),
                "settings": [[s.sparsity, s.bits] for s in self.settings],
                "od": [list(r) for r in self.od],
                "seconds": self.seconds,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Sensitivity:
        d = json.loads(text)
        settings = tuple(LayerSetting(float(s), b) for s, b in d["settings"])
        return cls(tuple(d["layers"]), settings, tuple(tuple(r) for r in d["od"]), float(d["seconds"]))

    def ranked(self) -> list[str]:
        """Layers, most sensitive first (mean OD over the candidate settings)."""
        mean = {n: sum(r) / len(r) for n, r in zip(self.layers, self.od, strict=True)}
        return sorted(self.layers, key=lambda n: -mean[n])


def candidates(space: SearchSpace) -> list[LayerSetting]:
    """The settings measured per layer: LEVELS sparsities on the space's step grid times every bit choice."""
    lo, hi = space.sparsity
    n = round((hi - lo) / space.step)
    idx = sorted({round(i * n / (LEVELS - 1)) for i in range(LEVELS)}) if n else [0]
    levels = [round(lo + i * space.step, 6) for i in idx]
    return [LayerSetting(s, None if b == FP32 else b) for s in levels for b in sorted(space.bits)]


@torch.no_grad()
def measure(
    teacher: nn.Module,
    layers: list[str],
    settings: list[LayerSetting],
    heldout: torch.Tensor,
    teacher_out: torch.Tensor,
) -> Sensitivity:
    """Compress one layer at a time (in a copy), at each setting, and measure OD; the teacher is not changed."""
    t0 = time.perf_counter()
    model = copy.deepcopy(teacher).eval()
    modules = dict(model.named_modules())
    table = []
    for name in layers:
        weight = modules[name].weight
        original = weight.detach().clone()
        row = []
        for s in settings:
            mask = magnitude_mask(original, s.sparsity) if s.sparsity > 0 else None
            weight.copy_(Compressor(mask, s.bits)(original))
            row.append(od_from_outputs(teacher_out, model_outputs(model, heldout)))
        weight.copy_(original)
        table.append(tuple(row))
    return Sensitivity(tuple(layers), tuple(settings), tuple(table), time.perf_counter() - t0)


def sensitivity_key(batch_key: str, layers: list[str], settings: list[LayerSetting]) -> str:
    """Content key of a study's table: its batches (model weights and synthetic config) and what is measured."""
    blob = json.dumps([batch_key, layers, [[s.sparsity, s.bits] for s in settings]])
    return "sens-" + hashlib.sha256(blob.encode()).hexdigest()[:32]


def cached_sensitivity(
    storage: Storage,
    batch_key: str,
    teacher: nn.Module,
    space: SearchSpace,
    heldout: torch.Tensor,
    teacher_out: torch.Tensor,
) -> Sensitivity:
    """The study's sensitivity table from the storage; exactly one worker measures a missing one."""
    layers, settings = list(space.searched), candidates(space)
    key = sensitivity_key(batch_key, layers, settings)

    def make() -> bytes:
        return measure(teacher, layers, settings, heldout, teacher_out).to_json().encode()

    raw = storage.get_or_create_blob(key, make, what="the sensitivity table", meta={"kind": "sensitivity"})
    return Sensitivity.from_json(raw.decode())
