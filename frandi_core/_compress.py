"""Compression operators: exact magnitude pruning and per-channel symmetric weight quantization.

Each output channel's quantization step is its largest magnitude (times ``ratio``, its clipping fraction) over
the top level. ``weight_clip = "mse"`` chooses each channel's ratio once, at compression, as the one among
``CLIP_GRID`` fractions that minimizes the channel's squared rounding-and-clipping error; ``"max"`` keeps 1.

``compress`` returns a copy whose compressible weights are parametrized by a ``Compressor``: the mask
is applied and the weight fake-quantized on every forward, with a straight-through estimator so Feature
Regression can train the underlying weights while pruned entries stay exactly zero.
A policy that quantizes activations also needs calibration inputs: each such layer gets a calibrated input
quantizer (see ``_actquant``). ``strip_`` bakes the parametrizations in and drops the input quantizers, leaving a
plain model whose state_dict loads into the original architecture with ``strict=True``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._actquant import quantize_activations_, remove_activation_quantizers_
from ._channels import channel_plan, mark_, prune_channels_, pruned_channels
from ._errors import FrandiError
from ._intpoints import drop_integer_points_, with_integer_points
from ._policy import COMPRESSIBLE, Policy, compressible_layers


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A 0/1 mask with exactly round(sparsity * numel) zeros at the smallest |weight| entries."""
    k = round(sparsity * weight.numel())
    mask = torch.ones(weight.numel(), dtype=weight.dtype, device=weight.device)
    if k > 0:
        idx = torch.topk(weight.detach().abs().flatten(), k, largest=False, sorted=False).indices
        mask[idx] = 0
    return mask.view_as(weight)


WEIGHT_CLIPS = ("max", "mse")
CLIP_GRID = torch.linspace(0.25, 1.0, 61).tolist()  # clipping fractions of a channel's largest magnitude tried


def _per_channel(t: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (weight.dim() - 1)))


def quantize(
    weight: torch.Tensor, bits: int, ratio: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer levels in [-qmax, qmax] (as floats) and per-output-channel scales (keepdim), qmax = 2**(bits-1) - 1;
    ``ratio`` (per output channel, in (0, 1]) clips each channel at that fraction of its largest magnitude.

    ``levels * scale`` is the quantized weight: the packed file stores exactly these two.
    """
    qmax = 2 ** (bits - 1) - 1
    dims = tuple(range(1, weight.dim()))
    with torch.no_grad():
        amax = weight.abs().amax(dim=dims, keepdim=True).clamp_min(1e-12)
        scale = (amax if ratio is None else amax * _per_channel(ratio, weight).to(amax)) / qmax
        return torch.clamp(torch.round(weight / scale), -qmax, qmax), scale


@torch.no_grad()
def clip_ratios(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per output channel, the fraction of its largest magnitude (from ``CLIP_GRID``) whose quantization has the
    least squared error; 1.0 wins ties, so a channel the grid cannot improve keeps its maximum."""
    qmax = 2 ** (bits - 1) - 1
    w = weight.detach().reshape(weight.shape[0], -1).float()
    amax = w.abs().amax(1).clamp_min(1e-12)
    ratios = torch.tensor(CLIP_GRID[::-1], dtype=w.dtype, device=w.device)  # 1.0 first: argmin keeps the first
    best = torch.ones_like(amax)
    least = torch.full_like(amax, float("inf"))
    for r in ratios:  # one fraction at a time: memory of one weight, not of the whole grid
        scale = (r * amax / qmax)[:, None]
        err = (torch.clamp(torch.round(w / scale), -qmax, qmax) * scale - w).pow(2).sum(1)
        better = err < least
        best = torch.where(better, r, best)
        least = torch.where(better, err, least)
    return best.to(weight.dtype)


def fake_quantize(weight: torch.Tensor, bits: int, ratio: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric per-output-channel quantization to at most 2**bits - 1 levels (each channel clipped at ``ratio``
    of its largest magnitude), straight-through gradient."""
    levels, scale = quantize(weight, bits, ratio)  # the rounding records no graph: its gradient is the identity
    with torch.no_grad():
        delta = levels.mul_(scale).sub_(weight)
    return weight + delta


class Compressor(nn.Module):
    """Parametrization of a weight: apply the pruning mask, then fake-quantize to ``bits`` (each output channel
    clipped at ``ratio`` of its largest magnitude, when given)."""

    mask: torch.Tensor | None
    ratio: torch.Tensor | None

    def __init__(self, mask: torch.Tensor | None, bits: int | None, ratio: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.register_buffer("ratio", ratio)
        self.bits = bits

    @classmethod
    def of(cls, weight: torch.Tensor, mask: torch.Tensor | None, bits: int | None, weight_clip: str) -> Compressor:
        """The compressor of ``weight`` (its pruned entries masked by ``mask``), each channel's clipping fraction
        chosen here by ``weight_clip``: what ``compress`` registers, and what screens apply to a weight alone."""
        ratio = None
        if bits is not None and weight_clip == "mse":
            ratio = clip_ratios(weight if mask is None else weight * mask, bits)
        return cls(mask, bits, ratio)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:
            weight = weight * self.mask
        if self.bits is not None:
            weight = fake_quantize(weight, self.bits, self.ratio)
        return weight


def _check_layers(model: nn.Module, policy: Policy) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    for name, _ in policy.layers:
        m = modules.get(name)
        if m is None or not isinstance(m, COMPRESSIBLE):
            known = [layer.name for layer in compressible_layers(model)]
            raise FrandiError(
                f"policy names layer '{name}', which is not a Conv/Linear layer of the model; "
                f"compressible layers are {known[:6]}{' ...' if len(known) > 6 else ''}"
            )
    return modules


def compress(
    model: nn.Module,
    policy: Policy,
    *,
    calibration: torch.Tensor | None = None,
    method: str = "mse",
    weight_clip: str = "max",
    channel_multiple: int = 1,
) -> nn.Module:
    """Return a compressed copy of ``model`` (eval mode); the model passed in is never modified.

    ``calibration``: inputs (a synthetic batch) that set the activation ranges, by ``method``; needed only when
    the policy quantizes activations or prunes channels (whose dependency graph is traced at its shape). Channels
    are pruned first (``_channels``; each group keeps a multiple of ``channel_multiple`` channels where it has
    more), then the smaller weights are masked and quantized. ``weight_clip``: how each quantized weight channel is
    clipped, "max" (its largest magnitude) or "mse" (the fraction of it with the least squared error, chosen once,
    here).
    """
    if weight_clip not in WEIGHT_CLIPS:
        raise FrandiError(f"weight_clip '{weight_clip}' is unknown; use one of {', '.join(WEIGHT_CLIPS)}")
    modules = _check_layers(model, policy)
    act_bits = policy.act_bits()
    if (act_bits or policy.channels()) and calibration is None:
        what = f"quantizes the activations of {len(act_bits)} layer(s)" if act_bits else "prunes channels"
        raise FrandiError(
            f"the policy {what}: pass calibration inputs (a synthetic batch) to set their ranges and shapes"
        )
    student = copy.deepcopy(model)
    if policy.channels() and calibration is not None:
        plan = channel_plan(student, policy, tuple(calibration.shape[1:]), multiple=channel_multiple)
        prune_channels_(student, plan)
    smods = dict(student.named_modules())
    del modules
    for name, s in policy.layers:
        if s.sparsity == 0 and s.bits is None:
            continue
        m = smods[name]
        mask = magnitude_mask(m.weight, s.sparsity) if s.sparsity > 0 else None
        if mask is not None:
            with torch.no_grad():  # +0.0, not -0.0 from negative weights: the packed file stores no sign of zero
                m.weight.masked_fill_(mask == 0, 0.0)
        parametrize.register_parametrization(m, "weight", Compressor.of(m.weight, mask, s.bits, weight_clip))
    if act_bits and calibration is not None:
        quantize_activations_(student, act_bits, calibration, method)
        student = mark_(with_integer_points(student, calibration, method), pruned_channels(student))
    return student.eval()


def strip_(model: nn.Module) -> nn.Module:
    """Bake the compression parametrizations into plain weights and drop input quantizers, in place."""
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return remove_activation_quantizers_(drop_integer_points_(model))
