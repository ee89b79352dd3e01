"""Model size under a policy, counted as the bytes the packed file stores (``save_packed``).

One home for the storage rules, so the size objective a study optimizes is the size a user ships: the packer
asks ``weight_layout`` how to store each weight, and ``model_size`` adds up the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._actquant import ACT_QUANT
from ._compress import _check_layers
from ._errors import FrandiError
from ._intpoints import POINTS, own_points
from ._policy import LayerSetting, Policy, compressible_layers

PARAMETRIZED = ".parametrizations."
# Names the rule model_size counts by. Change it whenever the count changes: a study remembers it (in its
# fingerprint), so trials sized one way are never ranked against trials sized another.
SIZE_RULE = "packed-bytes/1"
# The rule for policies that quantize activations: SIZE_RULE plus one fp32 step per such layer (the packed file
# stores them since packed-bytes/2). Only studies that may quantize activations fingerprint it, so the others
# keep their fingerprint.
ACT_SIZE_RULE = "packed-bytes/3"  # /3: also one fp32 step per integer point of its own (``_intpoints``)
ACT_STEP_BYTES = 4  # an activation-quantized layer's fp32 step


def _nbytes(nbits: int) -> int:
    return -(-nbits // 8)


def index_bits(numel: int) -> int:
    """Bits of one flat position in a tensor of ``numel`` entries."""
    return max(1, (numel - 1).bit_length())


@dataclass(frozen=True)
class WeightLayout:
    """How one compressed weight is stored: its kept entries (``nnz``) at ``bits`` each (None: fp32), their
    positions as a bitmask or as bit-packed flat indices (``positions``: "dense", "mask" or "index"), and one
    fp32 scale per output channel when quantized."""

    numel: int
    out_channels: int
    nnz: int
    bits: int | None
    positions: str
    itemsize: int = 4  # bytes of an unquantized kept entry: the weight's own dtype

    @property
    def nbytes(self) -> int:
        values = _nbytes(self.nnz * self.bits) if self.bits is not None else self.itemsize * self.nnz
        scales = 4 * self.out_channels if self.bits is not None else 0
        where = {"dense": 0, "mask": _nbytes(self.numel), "index": _nbytes(self.nnz * index_bits(self.numel))}
        return values + scales + where[self.positions]


def weight_layout(weight: torch.Tensor, setting: LayerSetting) -> WeightLayout | None:
    """The stored form of a weight under ``setting``; None when it stays a plain tensor."""
    if setting.sparsity == 0 and setting.bits is None:
        return None
    numel = weight.numel()
    nnz = numel - round(setting.sparsity * numel)
    if nnz == numel:
        positions = "dense"
    else:  # whichever is smaller: one bit per entry, or the kept entries' flat indices
        positions = "index" if nnz * index_bits(numel) < numel else "mask"
    return WeightLayout(numel, weight.shape[0], nnz, setting.bits, positions, weight.element_size())


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict under the original architecture's names: a compressed (parametrized) copy's
    ``X.parametrizations.weight.original`` is ``X.weight``; its pruning masks and input quantizers are not part
    of the model."""
    out = {}
    for key, t in model.state_dict().items():
        if f".{ACT_QUANT}." in f".{key}" or key.startswith(f"{POINTS}."):
            continue
        head, sep, tail = ("." + key).partition(PARAMETRIZED)
        if sep:
            name, _, rest = tail.partition(".")
            if rest != "original":
                continue
            key = f"{head}.{name}"[1:]
        out[key] = t
    return out


@dataclass(frozen=True)
class SizeReport:
    """Model size under a policy: the packed file's tensor bytes (its small header aside), in bits.

    A compressed weight stores its kept entries at their bits, bit-packed; a pruned one adds where they are
    (a 1-bit-per-entry mask, or bit-packed flat indices where smaller); a quantized one adds one fp32 scale
    per output channel; a layer whose input activations are quantized adds its fp32 step. Everything else in
    the state_dict (biases, BN affine and running statistics) counts at its dtype. ``dense_bits`` is the
    original state_dict's size; ``ratio`` is dense over this.
    """

    bits: int
    dense_bits: int
    nonzero: int
    weights: int

    @property
    def bytes(self) -> int:
        return self.bits // 8

    @property
    def ratio(self) -> float:
        return self.dense_bits / self.bits

    @property
    def density(self) -> float:
        return self.nonzero / self.weights if self.weights else 1.0


def model_size(model: nn.Module, policy: Policy, *, original: nn.Module | None = None) -> SizeReport:
    """Size of ``model`` (or a compressed copy of it) stored under ``policy`` (see SizeReport for the rules).

    A policy that prunes channels is sized on the student ``compress`` returned (its tensors are smaller), with
    ``original`` the model it was compressed from: the ratio's and the density's denominators are the original's.
    """
    _check_layers(model, policy)
    if policy.channels() and original is None:
        raise FrandiError(
            "the policy prunes channels: size the student compress() returned, "
            "model_size(student, policy, original=model)"
        )
    settings = policy.as_dict()
    state = plain_state(model)
    dense = sum(t.numel() * t.element_size() for t in state.values())
    size = dense
    if original is not None:
        dense = sum(t.numel() * t.element_size() for t in plain_state(original).values())
    nonzero = 0
    for layer in compressible_layers(model):
        key = f"{layer.name}.weight" if layer.name else "weight"
        w = state[key]
        layout = weight_layout(w, settings.get(layer.name, LayerSetting()))
        nnz = layout.nnz if layout else layer.numel
        if layout is not None:
            size += layout.nbytes - w.numel() * w.element_size()
        nonzero += nnz
    total = sum(layer.numel for layer in compressible_layers(model if original is None else original))
    size += ACT_STEP_BYTES * (len(policy.act_bits()) + own_points(model, policy))
    return SizeReport(bits=8 * size, dense_bits=8 * dense, nonzero=nonzero, weights=total)
