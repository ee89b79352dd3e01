"""Forward hooks that live in context managers and are always removed."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ._errors import FrandiError


def named_modules_by_name(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    """Look modules up by fully qualified name; fail loudly on a missing one."""
    table = dict(model.named_modules())
    out = {}
    for n in names:
        if n not in table:
            raise FrandiError(f"layer '{n}' is not a module of the model; known: {list(table)[1:8]} ...")
        out[n] = table[n]
    return out


@contextmanager
def capture(
    model: nn.Module, names: Iterable[str], *, inputs: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output (or first input) of each named module on every forward, keyed by name.

    The dict is overwritten on each forward; hooks are removed when the block exits, whatever happens.
    """
    found: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name, module in named_modules_by_name(model, names).items():

            def hook(_m: nn.Module, args: tuple, out: torch.Tensor, name: str = name) -> None:
                found[name] = args[0] if inputs else out

            handles.append(module.register_forward_hook(hook))
        yield found
    finally:
        for h in handles:
            h.remove()
