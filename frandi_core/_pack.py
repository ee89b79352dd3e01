"""The packed file: a compressed student stored in the bytes its size objective counts (a safetensors file).

Each compressed weight is stored as ``weight_layout`` says: its kept levels bit-packed at the layer's width
with one fp32 scale per output channel (or its kept fp32 values when unquantized), and the kept positions as
a bitmask or bit-packed flat indices. Each input-activation quantizer is stored as its fp32 step (a tensor),
its bits and sign (header). Every other state_dict entry is stored as it is. The header's metadata holds the
policy, the metrics, each weight's layout, each quantizer's bits and sign and a SHA-256 of all of it, so that a
damaged or altered file is refused instead of loaded half. The ONNX export stores the same tensors (``packed``).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from ._actquant import ACT_QUANT, activation_settings, set_activation_quantizers_
from ._channels import ChannelPlan, mark_, prune_channels_, pruned_channels
from ._compress import Compressor, _check_layers, quantize
from ._errors import FrandiError
from ._files import write_atomic
from ._intpoints import POINTS, integer_layers, point_settings, set_integer_points
from ._policy import LayerSetting, Policy, compressible_layers
from ._size import WeightLayout, index_bits, plain_state, weight_layout

FORMAT = "frandi-packed/1"
ACT_FORMAT = "frandi-packed/2"  # a file with input quantizers: a reader that knows only FORMAT refuses it
INT_FORMAT = "frandi-packed/3"  # ... with integer points and the integer runtime's bias rounding (``_intpoints``)
CHAN_FORMAT = "frandi-packed/4"  # ... of a channel-pruned student: its ChannelPlan (``_channels``) in the header


def pack_bits(values: np.ndarray, width: int) -> np.ndarray:
    """Unsigned integers below 2**width as ``width`` bits each, least significant first, in ceil(n*width/8) bytes."""
    v = np.asarray(values, dtype=np.uint64).reshape(-1, 1)
    bits = ((v >> np.arange(width, dtype=np.uint64)) & 1).astype(np.uint8)
    return np.packbits(bits.reshape(-1), bitorder="little")


def unpack_bits(data: np.ndarray, width: int, count: int) -> np.ndarray:
    """The ``count`` integers ``pack_bits`` stored at ``width`` bits in ``data`` (int64)."""
    if data.dtype != np.uint8 or data.size != -(-count * width // 8):
        raise FrandiError(f"{data.size} bytes cannot hold {count} values of {width} bits")
    bits = np.unpackbits(data, count=count * width, bitorder="little").reshape(count, width)
    return (bits.astype(np.int64) << np.arange(width, dtype=np.int64)).sum(axis=1)


def _raw(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes: equal only when bit for bit equal (0.0 and -0.0 differ, NaNs compare)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def weight_key(layer: str) -> str:
    """The state_dict key of a layer's weight (the layer may be the model itself, named "")."""
    return f"{layer}.weight" if layer else "weight"


def point_key(name: str) -> str:
    """The packed tensor holding an integer point's step."""
    return f"{POINTS}.{name}:step"


def step_key(layer: str) -> str:
    """The packed tensor holding a layer's input-quantizer step (a name no state_dict entry has)."""
    return f"{layer}.{ACT_QUANT}:step" if layer else f"{ACT_QUANT}:step"


def _compressed(
    module: nn.Module, layer: str, setting: LayerSetting
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(levels, or values when unquantized; kept-entry mask or None; scales or None) of a compressed layer,
    read from its Compressor and checked to give the student's weight bit for bit."""
    plist: Any = getattr(getattr(module, "parametrizations", None), "weight", None)
    comp = plist[0] if plist is not None and len(plist) == 1 else None
    if plist is None or not isinstance(comp, Compressor) or comp.bits != setting.bits:
        raise FrandiError(
            f"layer '{layer}' is not compressed as the policy says (sparsity {setting.sparsity}, bits "
            f"{setting.bits}); pack the student that compress() returned with the same policy, before strip_"
        )
    mask = None if comp.mask is None else comp.mask.detach().cpu().bool()
    with torch.no_grad():
        w = plist.original if comp.mask is None else plist.original * comp.mask  # as Compressor.forward does
        if setting.bits is None:
            entries, scale = w, None
        else:
            entries, scale = quantize(w, setting.bits, comp.ratio)
            w = entries * scale + 0.0  # + 0.0: a level of -0.0 is stored as 0
        if not torch.equal(_raw(w), _raw(module.weight)):  # type: ignore[arg-type]
            raise FrandiError(f"layer '{layer}': its stored form does not give the student's weight bit for bit")
    return entries.detach().cpu(), mask, None if scale is None else scale.flatten().cpu()


def _pack_weight(
    module: nn.Module, layer: str, setting: LayerSetting, layout: WeightLayout
) -> dict[str, torch.Tensor]:
    """The tensors one compressed weight is stored as, named ``<weight key>:<part>``."""
    key = weight_key(layer)
    entries, mask, scale = _compressed(module, layer, setting)
    entries = entries.flatten()
    kept = torch.ones_like(entries, dtype=torch.bool) if mask is None else mask.flatten()
    if int(kept.sum()) != layout.nnz:
        raise FrandiError(f"layer '{layer}' keeps {int(kept.sum())} weights, its policy {layout.nnz}")
    out: dict[str, torch.Tensor] = {}
    if layout.positions == "mask":
        out[f"{key}:mask"] = torch.from_numpy(pack_bits(kept.numpy(), 1))
    elif layout.positions == "index":
        idx = kept.nonzero().flatten().numpy()
        out[f"{key}:index"] = torch.from_numpy(pack_bits(idx, index_bits(layout.numel)))
    values = entries[kept]
    if setting.bits is None:
        out[f"{key}:values"] = values.contiguous()
    else:
        qmax = 2 ** (setting.bits - 1) - 1
        out[f"{key}:levels"] = torch.from_numpy(pack_bits((values + qmax).to(torch.int64).numpy(), setting.bits))
        out[f"{key}:scale"] = scale.to(torch.float32)  # type: ignore[union-attr]
    return out


def _digest(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(_raw(t).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Packed:
    """What a packed file stores: its tensors (plain state_dict entries, each compressed weight's parts named
    ``<weight key>:<part>``, each input quantizer's step), each compressed weight's layout, and each input
    quantizer's bits and sign (layer name -> {"bits", "signed"})."""

    tensors: dict[str, torch.Tensor]
    layouts: dict[str, dict[str, Any]]
    activations: dict[str, dict[str, Any]]
    points: dict[str, dict[str, Any]] = field(default_factory=dict)


def _pack_activations(
    student: nn.Module, policy: Policy
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """Each input quantizer's fp32 step (a 0-d tensor), bits and sign; refused unless they are the policy's."""
    settings = activation_settings(student)
    found = {n: s["bits"] for n, s in settings.items()}
    if found != policy.act_bits():
        raise FrandiError(
            f"the student's activation quantizers ({found or 'none'}) are not the policy's "
            f"({policy.act_bits() or 'none'}); pack the student that compress() returned with the same policy "
            "and calibration inputs, before strip_"
        )
    steps = {step_key(n): torch.tensor(s["step"], dtype=torch.float32) for n, s in settings.items()}
    return steps, {n: {"bits": s["bits"], "signed": s["signed"]} for n, s in settings.items()}


def packed(student: nn.Module, policy: Policy) -> Packed:
    """What the packed file stores for ``student``, as ``compress(model, policy)`` returned it (recovered or not)."""
    modules = _check_layers(student, policy)
    settings = policy.as_dict()
    tensors = {k: v.detach().cpu().contiguous() for k, v in plain_state(student).items()}
    layouts: dict[str, dict[str, Any]] = {}
    for layer in compressible_layers(student):
        key = weight_key(layer.name)
        setting = settings.get(layer.name, LayerSetting())
        layout = weight_layout(tensors[key], setting)
        if layout is None:
            continue
        weight = tensors.pop(key)
        tensors.update(_pack_weight(modules[layer.name], layer.name, setting, layout))
        layouts[key] = {
            "shape": list(weight.shape),
            "dtype": str(weight.dtype).removeprefix("torch."),
            "nnz": layout.nnz,
            "bits": layout.bits,
            "positions": layout.positions,
        }
    steps, activations = _pack_activations(student, policy)
    points = {n: {k: v for k, v in p.items() if k != "step"} for n, p in point_settings(student).items()}
    steps |= {point_key(n): torch.tensor(p["step"], dtype=torch.float32)
              for n, p in point_settings(student).items() if not p["layer"]}
    return Packed(tensors | steps, layouts, activations, points)


def pack(student: nn.Module, policy: Policy, metrics: dict[str, Any] | None = None) -> bytes:
    """The packed file's bytes for ``student``, as ``compress(model, policy)`` returned it (recovered or not)."""
    content = packed(student, policy)
    plan = pruned_channels(student)
    integer = bool(integer_layers(student))
    meta = {
        "format": CHAN_FORMAT if plan else INT_FORMAT if integer else ACT_FORMAT if content.activations else FORMAT,
        "policy": policy.to_json(),
        "metrics": json.dumps(metrics or {}, sort_keys=True),
        "layouts": json.dumps(content.layouts, sort_keys=True),
    }
    if content.activations:  # only then: files of policies without them keep their old header
        meta["activations"] = json.dumps(content.activations, sort_keys=True)
    if content.points or (plan and integer):  # a /4 file says by this key whether it has integer points
        meta["points"] = json.dumps(content.points, sort_keys=True)
    if plan:
        meta["channels"] = plan.to_json()
    return save(content.tensors, metadata=meta | {"sha256": _digest(content.tensors, meta)})


def save_packed(
    path: str | Path, student: nn.Module, policy: Policy, metrics: dict[str, Any] | None = None, *,
    overwrite: bool = False,
) -> int:
    """Write ``pack(student, policy, metrics)`` to ``path`` whole or not at all; returns the file's bytes."""
    data = pack(student, policy, metrics)
    write_atomic(path, data, overwrite=overwrite)
    return len(data)


def _read(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor and the metadata of a packed file, checked against its SHA-256."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no mapping)
    except (SafetensorError, OSError) as e:
        raise FrandiError(f"cannot read packed file '{path}' ({e}); export it again") from None
    if meta.get("format") not in (FORMAT, ACT_FORMAT, INT_FORMAT, CHAN_FORMAT):
        raise FrandiError(f"'{path}' is not a {FORMAT} file (format {meta.get('format')!r}); export it again")
    stated = meta.pop("sha256", None)
    if stated != _digest(tensors, meta):
        raise FrandiError(f"packed file '{path}' was changed or damaged after it was written; export it again")
    return tensors, meta


def _unpack_weight(key: str, layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    shape, nnz, bits = layout["shape"], layout["nnz"], layout["bits"]
    numel = int(np.prod(shape))
    if layout["positions"] == "mask":
        kept = torch.from_numpy(unpack_bits(tensors[f"{key}:mask"].numpy(), 1, numel)).bool()
    elif layout["positions"] == "index":
        kept = torch.zeros(numel, dtype=torch.bool)
        kept[torch.from_numpy(unpack_bits(tensors[f"{key}:index"].numpy(), index_bits(numel), nnz))] = True
    else:
        kept = torch.ones(numel, dtype=torch.bool)
    if int(kept.sum()) != nnz:
        raise FrandiError(f"weight '{key}' keeps {int(kept.sum())} entries, its layout says {nnz}")
    if bits is None:
        values = tensors[f"{key}:values"]
    else:
        qmax = 2 ** (bits - 1) - 1
        levels = torch.from_numpy(unpack_bits(tensors[f"{key}:levels"].numpy(), bits, nnz)) - qmax
        scale = tensors[f"{key}:scale"].repeat_interleave(numel // shape[0])[kept]
        values = levels.to(torch.float32) * scale
    w = torch.zeros(numel, dtype=getattr(torch, layout["dtype"]))
    w[kept] = values.to(w.dtype)
    return w.view(shape)


@dataclass(frozen=True)
class _Contents:
    """A packed file read back: its state_dict, policy, metrics, input quantizers ({"bits", "signed", "step"} by
    layer), integer points ({"bits", "signed", "layer", "step"} by name; None for a file without them) and
    channel plan (None: no channel pruned)."""

    state: dict[str, torch.Tensor]
    policy: Policy
    metrics: dict[str, Any]
    activations: dict[str, dict[str, Any]]
    points: dict[str, Any] | None
    channels: ChannelPlan | None


def _contents(path: str | Path) -> _Contents:
    tensors, meta = _read(path)
    layouts = json.loads(meta["layouts"])
    activations = json.loads(meta.get("activations", "{}"))
    if meta["format"] == CHAN_FORMAT:
        points = json.loads(meta["points"]) if "points" in meta else None
    else:
        points = json.loads(meta.get("points", "{}")) if meta["format"] == INT_FORMAT else None
    try:
        state = {k: _unpack_weight(k, v, tensors) for k, v in layouts.items()}
        for layer, a in activations.items():
            a["step"] = float(tensors[step_key(layer)].reshape(()))
        for name, p in (points or {}).items():
            if not p["layer"]:
                p["step"] = float(tensors[point_key(name)].reshape(()))
    except (KeyError, RuntimeError, ValueError, IndexError) as e:
        raise FrandiError(f"packed file '{path}' is inconsistent ({e}); export it again") from None
    state |= {k: v for k, v in tensors.items() if ":" not in k}
    plan = ChannelPlan.from_json(meta["channels"]) if "channels" in meta else None
    return _Contents(state, Policy.from_json(meta["policy"]), json.loads(meta["metrics"]), activations, points, plan)


def unpack(path: str | Path) -> tuple[dict[str, torch.Tensor], Policy, dict[str, Any]]:
    """A packed file's state_dict (the original architecture's names; a channel-pruned file's tensors at their
    pruned shapes), policy and metrics."""
    c = _contents(path)
    return c.state, c.policy, c.metrics


def load_packed(path: str | Path, model: nn.Module) -> nn.Module:
    """A copy of ``model`` (the original architecture, any weights) holding the packed file's weights and input
    quantizers, in eval mode: bit for bit the compressed student that was packed (its outputs too, activation
    quantization included). A channel-pruned file's channels are removed from the copy first, as the student's
    were (``prune_channels_`` with the file's plan). The model passed in is never modified."""
    c = _contents(path)
    state, policy, activations, points = c.state, c.policy, c.activations, c.points
    target = copy.deepcopy(model)
    if c.channels is not None:
        try:
            prune_channels_(target, c.channels)
        except FrandiError as e:
            raise FrandiError(f"packed file '{path}': its channel pruning does not fit this model ({e})") from None
    expected = target.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or extra or wrong:
        what = [f"{len(x)} {n} (e.g. '{x[0]}')" for x, n in ((missing, "missing"), (extra, "unexpected"),
                                                             (wrong, "of another shape")) if x]
        raise FrandiError(
            f"packed file '{path}' does not fit this model: {', '.join(what)}; "
            "load it into the architecture (and kwargs) it was exported from"
        )
    target.load_state_dict(state, strict=True)
    try:
        set_activation_quantizers_(target, activations)
        if points is not None:  # a file from before integer points: its student rounded at layer inputs only
            target = mark_(set_integer_points(target, points, {n: s.bits for n, s in policy.layers}), c.channels)
    except (FrandiError, KeyError, TypeError) as e:
        raise FrandiError(f"packed file '{path}': its activation quantizers do not fit this model ({e})") from None
    return target.eval()
