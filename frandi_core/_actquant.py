"""Activation quantization: per-tensor fake quantizers on the input of compressible layers, calibrated on data.

Each quantized layer gets a child module ``act_quant`` (an ``ActQuantizer``) and a forward pre-hook that passes
the layer's input through it. The grid is unsigned when the calibration inputs were all non-negative (after a
ReLU), symmetric signed otherwise. The clipping range comes from calibration inputs (the synthetic recovery
batch, never the held-out one) by one of ``CALIBRATIONS``; Feature Regression may then learn the step size
(LSQ-style) through the same straight-through estimator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ._errors import FrandiError
from ._hooks import capture
from ._policy import COMPRESSIBLE

ACT_QUANT = "act_quant"  # the child module holding a layer's input quantizer
PERCENTILE = 99.99  # the "percentile" calibration clips at this percentile of the input's magnitude
MSE_GRID = 100  # the "mse" calibration tries this many clipping values between 1/MSE_GRID and 1 of the maximum
SAMPLES = 1 << 18  # at most this many values per layer feed the percentile and MSE searches


def grid(bits: int, signed: bool, full: bool = False) -> tuple[int, int]:
    """The integer range of a grid: [0, 2**bits - 1] unsigned, [-(2**(bits-1) - 1), 2**(bits-1) - 1] signed
    (``full``: down to -2**(bits-1), every level of the integer type, as the integer points use)."""
    if signed:
        q = 2 ** (bits - 1) - 1
        return -q - int(full), q
    return 0, 2**bits - 1


def fake_quantize_act(
    x: torch.Tensor, scale: torch.Tensor, bits: int, signed: bool, full: bool = False
) -> torch.Tensor:
    """Round ``x / scale`` to the grid, clamp, rescale; straight-through estimator for the rounding.

    The gradient reaches ``x`` where it lies inside the clipping range (zero outside) and reaches ``scale`` as in
    LSQ (Esser et al. 2020): round(x/s) - x/s inside the range, the clamp bound outside.
    """
    lo, hi = grid(bits, signed, full)
    v = torch.clamp(x / scale, lo, hi)
    return (v + (torch.round(v) - v).detach()) * scale


class ActQuantizer(nn.Module):
    """Per-tensor fake quantizer of a layer's input; its step size is a parameter, learned only if FR asks.
    ``full``: the signed grid reaches -2**(bits-1) too (the integer points' grid)."""

    def __init__(self, bits: int, signed: bool, scale: float, full: bool = False) -> None:
        super().__init__()
        self.bits = bits
        self.signed = signed
        self.full = full
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)), requires_grad=False)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quantize_act(x, self.scale.to(x.dtype), self.bits, self.signed, self.full)

    def extra_repr(self) -> str:
        full = ", full" if self.full else ""
        return f"bits={self.bits}, signed={self.signed}{full}, scale={float(self.scale.detach()):.4g}"


def _quantize_input(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: the layer's input through its quantizer (a no-op once the quantizer is removed)."""
    q = getattr(module, ACT_QUANT, None)
    return None if q is None else (q(args[0]), *args[1:])


def clip_minmax(x: torch.Tensor, bits: int, signed: bool) -> float:
    """The largest magnitude seen: nothing is clipped, the grid is as coarse as the outliers make it."""
    return float(x.abs().max())


def clip_percentile(x: torch.Tensor, bits: int, signed: bool) -> float:
    """The PERCENTILE-th percentile of |x|: the rarest outliers are clipped."""
    flat = x.abs().flatten()
    k = max(1, math.ceil(PERCENTILE / 100 * flat.numel()))
    return float(flat.kthvalue(k).values)


@torch.no_grad()
def clip_mse(x: torch.Tensor, bits: int, signed: bool) -> float:
    """The clipping value minimizing the mean squared quantization error of ``x`` (ACIQ's criterion, by search)."""
    top = float(x.abs().max())
    lo, hi = grid(bits, signed)
    clips = [top * i / MSE_GRID for i in range(1, MSE_GRID + 1)]
    errors: list[float] = []
    for start in range(0, MSE_GRID, 10):  # ten candidates at a time: one pass over x each, not one per candidate
        scales = torch.tensor([max(c, 1e-12) / hi for c in clips[start : start + 10]], dtype=x.dtype)[:, None]
        q = torch.round(torch.clamp(x[None] / scales, lo, hi)) * scales
        errors += (q - x[None]).square().mean(dim=1).tolist()
    return clips[min(range(MSE_GRID), key=lambda i: (errors[i], i))]


CALIBRATIONS: dict[str, Callable[[torch.Tensor, int, bool], float]] = {
    "minmax": clip_minmax,
    "percentile": clip_percentile,
    "mse": clip_mse,
}


def check_calibration(name: str) -> None:
    """Refuse an unknown calibration method with the names of the known ones."""
    if name not in CALIBRATIONS:
        raise FrandiError(f"calibration {name!r} is unknown; use one of {', '.join(CALIBRATIONS)}")


@torch.no_grad()
def _layer_inputs(
    model: nn.Module, names: list[str], inputs: torch.Tensor, chunk: int
) -> dict[str, tuple[torch.Tensor, bool]]:
    """Each named layer's input over the calibration batch: values evenly thinned to about SAMPLES, and
    whether any (of all, not only the kept ones) was negative."""
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    was_training = model.training
    model.eval()
    try:
        with capture(model, names, inputs=True) as found:
            for i in range(0, len(inputs), chunk):
                model(inputs[i : i + chunk])
                for n in names:
                    parts[n].append(found[n].detach().flatten().float())
    finally:
        model.train(was_training)
    out = {}
    for n, p in parts.items():
        x = torch.cat(p)
        out[n] = (x[:: max(1, x.numel() // SAMPLES)], bool((x < 0).any()))
    return out


def quantize_activations_(
    model: nn.Module,
    bits: Mapping[str, int],
    inputs: torch.Tensor,
    method: str = "mse",
    *,
    chunk: int = 256,
) -> nn.Module:
    """Attach a calibrated input quantizer to each named layer, in place; returns the model.

    ``bits``: layer name -> activation bits (2..8). ``inputs``: the calibration batch. A layer whose inputs were
    all non-negative gets an unsigned grid. Quantizers already on the model are dropped first, so calibration
    sees unquantized inputs.
    """
    check_calibration(method)
    names = list(bits)
    if not names:
        return model
    remove_activation_quantizers_(model)
    found = _layer_inputs(model, names, inputs, chunk)
    modules = dict(model.named_modules())
    for n in names:
        (x, signed), b = found[n], bits[n]
        clip = CALIBRATIONS[method](x, b, signed)
        _attach(modules[n], ActQuantizer(b, signed, max(clip, 1e-8) / grid(b, signed)[1]).to(x.device))
    return model


def _attach(module: nn.Module, quantizer: ActQuantizer) -> None:
    """Make ``quantizer`` the layer's input quantizer (one pre-hook per layer, whatever was there before)."""
    module.add_module(ACT_QUANT, quantizer)
    if _quantize_input not in module._forward_pre_hooks.values():  # torch keeps a layer's pre-hooks in this dict
        module.register_forward_pre_hook(_quantize_input)


def detach_input_hook_(module: nn.Module) -> None:
    """Stop the layer's pre-hook from applying its input quantizer (the quantizer stays its child): for a layer
    whose input the traced graph already rounds with that quantizer (``_intpoints``)."""
    for key, hook in list(module._forward_pre_hooks.items()):
        if hook is _quantize_input:
            del module._forward_pre_hooks[key]


def exact_log(step: float) -> torch.Tensor:
    """The fp32 log of ``step`` whose exp is ``step`` exactly: a quantizer restored from a stored step rounds
    as the one that was stored (math.log rounded to fp32 can miss by an ulp)."""
    target = torch.tensor(step, dtype=torch.float32)
    if not (math.isfinite(step) and step > 0 and float(target) == step):
        raise FrandiError(f"activation step {step!r} is not a positive fp32 number")
    guess = torch.tensor(math.log(step), dtype=torch.float32)
    up, down = guess, guess
    for _ in range(8):  # the step was the exp of an fp32 number: it lies within an ulp or two of the guess
        for c in (up, down):
            if torch.equal(c.exp(), target):
                return c
        up, down = up.nextafter(torch.tensor(math.inf)), down.nextafter(torch.tensor(-math.inf))
    raise FrandiError(f"activation step {step!r} is the exp of no fp32 number near its log; frandi did not store it")


def activation_settings(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Layer name -> {"bits", "signed", "step"} of each input quantizer: the plain data exported files store
    (``step`` is the fp32 step as a float, exactly)."""
    return {
        n: {"bits": q.bits, "signed": q.signed, "step": float(q.scale.detach().float().cpu())}
        for n, q in activation_quantizers(model).items()
    }


def set_activation_quantizers_(model: nn.Module, settings: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """Put an input quantizer with exactly these bits, sign and step on each named layer, in place; returns the
    model. ``settings`` is what ``activation_settings`` returned (or an exported file stored)."""
    modules = dict(model.named_modules())
    for name, s in settings.items():
        if not isinstance(modules.get(name), COMPRESSIBLE):
            raise FrandiError(f"activation quantizer for '{name}', which is not a Conv/Linear layer of the model")
        bits = s["bits"]
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise FrandiError(f"activation bits of layer '{name}' must be an integer in 2..8, got {bits!r}")
        q = ActQuantizer(bits, bool(s["signed"]), 1.0)
        with torch.no_grad():
            q.log_scale.copy_(exact_log(float(s["step"])))
        _attach(modules[name], q.to(modules[name].weight.device))
    return model


def activation_quantizers(model: nn.Module) -> dict[str, ActQuantizer]:
    """Layer name -> its input quantizer, for every layer that has one (exporters read bits, sign and scale)."""
    return {
        n: q for n, m in model.named_modules() if isinstance(q := getattr(m, ACT_QUANT, None), ActQuantizer)
    }


def remove_activation_quantizers_(model: nn.Module) -> nn.Module:
    """Drop every input quantizer, in place, so the state_dict loads into the original architecture."""
    for m in model.modules():
        if isinstance(getattr(m, ACT_QUANT, None), ActQuantizer):
            delattr(m, ACT_QUANT)
    return model


def learn_steps_(model: nn.Module, learn: bool) -> list[nn.Parameter]:
    """Let (or stop) gradient descent change the activation step sizes, in place; returns them."""
    steps = [q.log_scale for q in activation_quantizers(model).values()]
    for p in steps:
        p.requires_grad_(learn)
    return steps
