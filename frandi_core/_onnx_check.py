"""Does an exported ONNX model compute what the student computes? Outputs compared sample by sample, with
activation rounding ties told apart from real mismatches.

onnxruntime and PyTorch sum a convolution in different orders, so a layer input can come out a few ulps apart;
where it lies at a rounding tie of its activation grid (x / step = k + 0.5), one rounds to k and the other to
k + 1, and that sample's later layers and outputs differ by a step's worth. Both are correct float results. So
each sample whose activation levels all agree must match within the tolerance, and a sample where some level
differs is excused only if, at the first layer (in execution order) where it differs, every difference is one
level at a tie (within ``TIE`` of k + 0.5): anything else is a real mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._actquant import ActQuantizer
from ._errors import FrandiError
from ._hooks import capture
from ._onnx import _need, session

# An input within this many steps of a rounding tie may round either way. Measured on the digits ResNet (W8A8,
# W4A8, W4A4, 1,920 random samples each): every first flip lay within 1e-4 of a tie, some beyond 1e-5.
TIE = 1e-3


@dataclass(frozen=True)
class OnnxParity:
    """The ONNX model against the student on one batch: ``error`` is max |ONNX - PyTorch| / max |PyTorch| over the
    samples whose activation levels all agree; ``flipped`` samples had a level rounded the other way at a tie;
    ``mismatched`` samples had a level differ where no tie explains it (a wrong model: should be 0)."""

    samples: int
    error: float
    flipped: int
    mismatched: int

    def ok(self, tolerance: float) -> bool:
        return self.error <= tolerance and self.mismatched == 0

    def describe(self) -> str:
        text = f"max |ONNX - PyTorch| / max |PyTorch| = {self.error:.2g}"
        if self.flipped:
            text += (f" on {self.samples - self.flipped} of {self.samples} samples; {self.flipped} had an activation "
                     "at a rounding tie rounded the other way")
        if self.mismatched:
            text += f"; {self.mismatched} had activation levels that differ with no tie to explain it"
        return text


def _quantized_tensors(model: Any, modules: list[str], quantizers: dict[str, ActQuantizer]) -> dict[str, str]:
    """Quantizer module name -> the ONNX tensor holding its dequantized output: that of the DequantizeLinear (or
    Cast/Mul before an fp32 layer) reading the step ``<module>.step``, under any of the quantizer's names."""
    from ._onnx_fast import STEP

    by_step: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in ("DequantizeLinear", "Mul") and len(node.input) > 1 and node.input[1].endswith(f".{STEP}"):
            by_step.setdefault(node.input[1].removesuffix(f".{STEP}"), node.output[0])
    out: dict[str, str] = {}
    for name in modules:  # each quantizer's steps go by one of its module names (it may have several)
        found = [by_step[p] for p, q in quantizers.items() if q is quantizers[name] and p in by_step]
        if not found:
            raise FrandiError(f"the ONNX graph does not quantize with '{name}' (no '{name}.{STEP}'); export it again")
        out[name] = found[0]
    return out


def onnx_parity(student: nn.Module, data: bytes, x: torch.Tensor) -> OnnxParity:
    """Compare the ONNX model ``data`` (run by onnxruntime on CPU) with ``student`` on the batch ``x``."""
    onnx = _need("onnx")
    quantizers = {n: m for n, m in student.named_modules(remove_duplicate=False) if isinstance(m, ActQuantizer)}
    owner = {id(q): n for n, q in reversed(list(quantizers.items()))}
    modules = sorted(set(owner.values()), key=list(quantizers).index)  # one name per quantizer
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad(), capture(student, modules, inputs=True) as raw, \
                capture(student, modules) as quantized:
            ref = student(x).detach().cpu()
    finally:
        student.train(was_training)
    model = onnx.load_from_string(data)
    names = _quantized_tensors(model, modules, quantizers)
    names = {n: t for n, t in names.items() if t not in {o.name for o in model.graph.output}}
    for name in dict.fromkeys(names.values()):
        model.graph.output.append(onnx.helper.make_value_info(name, onnx.TypeProto()))
    got = session(model.SerializeToString()).run(None, {"input": x.detach().cpu().numpy()})
    out = torch.from_numpy(np.asarray(got[0]))
    by_tensor = dict(zip(dict.fromkeys(names.values()), got[1:], strict=True))
    theirs_by_module = {n: by_tensor[t] for n, t in names.items()}
    batch = len(x)
    differed = torch.zeros(batch, dtype=torch.bool)  # samples with a level that differs at an earlier layer
    mismatched = torch.zeros(batch, dtype=torch.bool)
    for module in raw:  # filled as the forward reached each quantizer: execution order
        if module not in theirs_by_module:
            continue
        mine = quantized[module].detach().cpu().reshape(batch, -1)
        theirs = torch.from_numpy(np.asarray(theirs_by_module[module])).reshape(batch, -1)
        differ = mine != theirs
        first = differ.any(1) & ~differed  # samples whose first difference is here
        if first.any():
            step = quantizers[module].scale.detach().float().cpu()
            v = raw[module].detach().cpu().reshape(batch, -1)[first] / step
            one_level = (mine[first] - theirs[first]).abs() <= 1.5 * step
            tie = ((v - v.floor() - 0.5).abs() <= TIE) & one_level
            mismatched[first] = (differ[first] & ~tie).any(1)
            differed |= first
    agree = ~differed
    scale = float(ref.abs().max().clamp_min(1e-12))
    error = float((out - ref)[agree].abs().max() / scale) if agree.any() else 0.0
    if not np.isfinite(error):
        raise FrandiError("the ONNX model's outputs are not finite where the student's are")
    return OnnxParity(batch, error, int((differed & ~mismatched).sum()), int(mismatched.sum()))
