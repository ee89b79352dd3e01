"""Bit operations (BOPs): the cost of a layer on integer hardware, MACs x weight bits x activation bits.

MACs come from one forward of a single sample. Unstructured pruning does not reduce them: dense integer
kernels multiply the zeros too, and skipping scattered zeros needs sparse hardware this count does not assume.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._hooks import capture
from ._policy import LayerSetting, Policy, compressible_layers

FP32 = 32  # bits of an unquantized weight or activation


def zeros_for(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    """One zero sample of ``input_shape`` (without the batch) on the model's device."""
    param = next(iter(model.parameters()), None)
    return torch.zeros(1, *input_shape, device=param.device if param is not None else None)


@torch.no_grad()
def layer_outputs(model: nn.Module, input_shape: Sequence[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each Conv/Linear layer's output and the model's output, on one zero sample, in eval mode (restored)."""
    names = [layer.name for layer in compressible_layers(model)]
    was_training = model.training
    model.eval()
    try:
        with capture(model, names) as out:
            y = model(zeros_for(model, input_shape))
    finally:
        model.train(was_training)
    return {n: out[n] for n in names}, y


@torch.no_grad()
def layer_macs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Multiply-accumulates of each Conv/Linear layer for one sample of ``input_shape`` (without the batch).

    A layer's weight is used once per output position: MACs = weight elements x output positions, which
    counts groups, kernel size and stride for any Conv1d/Conv2d/Linear.
    """
    modules = dict(model.named_modules())
    out, _ = layer_outputs(model, input_shape)
    macs = {}
    for n in out:
        w = modules[n].weight
        macs[n] = w.numel() * out[n][0].numel() // w.shape[0]
    return macs


def bops(macs: dict[str, int], policy: Policy) -> int:
    """Sum over layers of MACs x weight bits x activation bits (fp32 counts 32); pruning does not reduce it."""
    settings = policy.as_dict()
    total = 0
    for name, m in macs.items():
        s = settings.get(name, LayerSetting())
        total += m * (s.bits or FP32) * (s.act_bits or FP32)
    return total
