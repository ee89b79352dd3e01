"""Where a worker runs: the device it is given, checked against this machine, and its torch threads."""

from __future__ import annotations

import os

import torch

from ._errors import UsageError


def check_device(device: str) -> str:
    """Validate a --device value ('cpu', 'cuda', 'cuda:N') against this machine."""
    try:
        d = torch.device(device)
    except RuntimeError:
        raise UsageError(f"device '{device}' is not a torch device; use cpu, cuda or cuda:N") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device '{device}' asked for, but this machine has no CUDA GPU; use --devices cpu")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise UsageError(f"device '{device}' does not exist: {torch.cuda.device_count()} GPU(s) here")
    elif d.type != "cpu":
        raise UsageError(f"device '{device}' is not supported; use cpu, cuda or cuda:N")
    return device


def set_threads(threads: int, workers: int) -> int:
    """Torch threads for one worker: the configured number, or the cores shared out between workers."""
    n = threads or max(1, (os.cpu_count() or 1) // workers)
    torch.set_num_threads(n)
    return n
