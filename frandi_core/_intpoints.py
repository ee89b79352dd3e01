"""Integer points: where an integer runtime rounds a quantized model's activations, so the student rounds there too.

An integer runtime (onnxruntime's QLinearConv, QLinearAdd, QLinearAveragePool ...) runs a convolution on uint8 or
int8 inputs only if its output is requantized too, and adds or pools only quantized tensors. A layer whose input
quantizer the policy sets (``act_bits``) is such a convolution; where its output flows (through its BatchNorm and
ReLU-like ops, which the runtime folds in or which commute with rounding) into a residual add, an average pool or
a layer the policy keeps in fp32, the runtime rounds that tensor to 8 bits. ``with_integer_points`` gives the
student those same rounding points: each a calibrated 8-bit ``ActQuantizer`` in the model's traced graph (torch.fx),
stored under ``POINTS`` by the name of the graph node whose output it rounds. A tensor that feeds both a quantized
layer and an add is rounded once, by that layer's own quantizer. Models torch.fx cannot trace keep their
per-layer input quantizers only (their exported graph then runs those convolutions in fp32).
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ._actquant import (
    ACT_QUANT,
    CALIBRATIONS,
    ActQuantizer,
    activation_quantizers,
    check_calibration,
    detach_input_hook_,
    exact_log,
    grid,
)
from ._errors import FrandiError
from ._policy import COMPRESSIBLE

POINTS = "frandi_points"  # the ModuleDict (on the traced student) holding the integer points' quantizers
TAPS = "frandi_taps"  # each container module's output, where its forward hooks (feature capture) still fire
BIASES = "frandi_biases"  # the ModuleDict holding each integer layer's bias rounding (``BiasRounding``)
# Names how a student with quantized activations rounds. Studies that quantize activations fingerprint it: trials
# scored under another rounding (before integer points and bias rounding) are not comparable.
ROUNDING_RULE = "integer-points/1"
POINT_BITS = 8  # the runtime's own width: an integer point costs no file size and rounds as the runtime does

_NORM = (nn.BatchNorm1d, nn.BatchNorm2d)
_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Identity, nn.Dropout)
_PASS_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.hardtanh, F.max_pool1d, F.max_pool2d, torch.flatten, F.dropout}
_PASS_METHODS = {"relu", "flatten", "view", "reshape", "contiguous"}
_POOL_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AvgPool2d)
_POOL_FUNCTIONS = {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.avg_pool1d, F.avg_pool2d}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}


def _kind(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    """What a graph node is to an integer runtime: a "layer", a "norm" (folded into its layer), "pass" (commutes
    with rounding), "add" of two tensors, "pool" (average), or "other" (computed in fp32)."""
    if node.op == "call_module":
        m = modules[str(node.target)]
        for kind, types in (("layer", COMPRESSIBLE), ("norm", _NORM), ("pass", _PASS_MODULES), ("pool", _POOL_MODULES)):
            if isinstance(m, types):
                return kind
    elif node.op == "call_function":
        if node.target in _PASS_FUNCTIONS:
            return "pass"
        if node.target in _POOL_FUNCTIONS:
            return "pool"
        if node.target in _ADD_FUNCTIONS and len(_tensor_args(node)) == 2:
            return "add"
    elif node.op == "call_method":
        if node.target in _PASS_METHODS:
            return "pass"
        if node.target == "add" and len(_tensor_args(node)) == 2:
            return "add"
    return "other"


def _same(node: fx.Node, modules: Mapping[str, nn.Module]) -> fx.Node:
    """The node whose tensor ``node`` is (through Identity / Dropout modules, which return their input)."""
    while node.op == "call_module" and isinstance(modules[str(node.target)], (nn.Identity, nn.Dropout)):
        arg = node.args[0]
        if not isinstance(arg, fx.Node):
            break
        node = arg
    return node


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    return [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]


def _trace(model: nn.Module) -> fx.GraphModule | None:
    """The model's torch.fx graph (Conv/Linear/BN and the quantizers as leaf modules), or None if untraceable."""
    try:
        return fx.symbolic_trace(model)
    except Exception:  # torch.fx raises many kinds on data-dependent control flow: the model just keeps its hooks
        return None


_traced: weakref.WeakKeyDictionary[nn.Module, fx.GraphModule | None] = weakref.WeakKeyDictionary()


def own_points(model: nn.Module, policy: Any) -> int:
    """How many integer points of their own (an fp32 step each in the packed file) ``policy`` gives ``model``:
    what ``with_integer_points`` adds, counted without calibrating (the model's trace is kept per model)."""
    if getattr(model, POINTS, None) is not None:
        return sum(1 for p in point_settings(model).values() if not p["layer"])
    act = policy.act_bits()
    if not act:
        return 0
    if model not in _traced:
        _traced[model] = None if isinstance(model, COMPRESSIBLE) else _trace(model)
    traced = _traced[model]
    if traced is None:
        return 0
    integer = {n for n, s in policy.layers if s.act_bits is not None and s.bits is not None}
    return sum(1 for layer in plan(traced, act, integer).values() if layer is None)


def readers(traced: fx.GraphModule, quantized: Mapping[str, int]) -> dict[str, list[str]]:
    """Graph node name -> the quantized layers that read its output directly at the largest of their widths:
    those share one quantizer (the tensor is rounded once, as the integer runtime stores it once)."""
    found: dict[str, list[str]] = {}
    for n in traced.graph.nodes:
        if n.op == "call_module" and str(n.target) in quantized and n.args and isinstance(n.args[0], fx.Node):
            found.setdefault(n.args[0].name, []).append(str(n.target))
    out = {}
    for src, layers in found.items():
        top = max(quantized[layer] for layer in layers)
        out[src] = [layer for layer in layers if quantized[layer] == top]
    return out


def _tie(modules: Mapping[str, nn.Module], layers: list[str], q: nn.Module) -> None:
    """Make ``q`` the input quantizer of every layer in ``layers``, applied by the graph (their hooks off)."""
    for layer in layers:
        modules[layer].add_module(ACT_QUANT, q)
        detach_input_hook_(modules[layer])


def plan(traced: fx.GraphModule, quantized: Mapping[str, int], integer_ok: set[str]) -> dict[str, str | None]:
    """Graph node name -> the layer whose input quantizer rounds that node's output, or None for a new 8-bit
    point; for each tensor an integer runtime rounds that the layers' input quantizers do not already cover.

    ``quantized``: layer name -> activation bits of the layers the policy quantizes; ``integer_ok``: those of
    them whose weights are quantized too (an integer runtime runs these)."""
    modules = dict(traced.named_modules())
    kinds = {n: _kind(n, modules) for n in traced.graph.nodes}
    nodes = {n.name: n for n in traced.graph.nodes}
    points: dict[str, str | None] = {}
    rounded: dict[fx.Node, str] = {}  # node -> the quantized layer (largest bits) that reads it directly
    for n in traced.graph.nodes:
        if kinds[n] == "layer" and str(n.target) in quantized and n.args and isinstance(n.args[0], fx.Node):
            src, layer = n.args[0], str(n.target)
            if src not in rounded or quantized[layer] > quantized[rounded[src]]:
                rounded[src] = layer
    for name, group in readers(traced, quantized).items():
        if len(group) > 1:  # several layers read it at one width: the runtime quantizes it once, for all
            points[name] = rounded[nodes[name]]
    integer: set[fx.Node] = set()  # nodes computed by integer kernels
    from_layer: set[fx.Node] = set()  # ... of which a quantized layer's output (or its epilogue): needs requantizing
    for n in traced.graph.nodes:
        k, args = kinds[n], _tensor_args(n)
        if k == "layer" and str(n.target) in integer_ok:
            integer.add(n)
            from_layer.add(n)
        elif k in ("norm", "pass") and args and args[0] in integer and (k == "pass" or kinds[args[0]] == "layer"):
            integer.add(n)
            if args[0] in from_layer:
                from_layer.add(n)
        elif k in ("add", "pool") and args and all(a in integer or _same(a, modules) in rounded for a in args):
            integer.add(n)
            for a in args:  # through an identity, the tensor a layer already rounds: rounded there, once
                a = _same(a, modules) if _same(a, modules) in rounded else a
                points[a.name] = rounded.get(a)
    for n in from_layer:  # read by something the runtime computes in fp32: requantized there, at 8 bits
        if n.name not in points and any(u not in integer and u.op != "output" for u in n.users):
            points[n.name] = rounded.get(n)
    return points


class BiasRounding(nn.Module):
    """The integer runtime's bias: an integer layer's bias (with its BatchNorm folded in) rounded to levels of
    input step x per-channel weight scale, as an int32 bias of QLinearConv / QGemm is. Added after the layer (or
    its BatchNorm) as a constant offset: gradients pass as if there were no rounding."""

    def __init__(self, layer: str, bits: int, module: nn.Module, norm: nn.Module | None, quantizer: ActQuantizer):
        super().__init__()
        self.layer = layer
        self.bits = bits
        self._refs = (module, norm, quantizer)  # a tuple: not registered, the modules stay where they are

    @torch.no_grad()
    def offset(self) -> torch.Tensor:
        module: Any = self._refs[0]  # a Conv/Linear (its weight a parametrization or a plain tensor)
        norm: Any = self._refs[1] if isinstance(self._refs[1], _NORM) else None
        quantizer = self._refs[2]
        w = module.weight.detach().double()  # levels x scale: its largest magnitude per channel is qmax x scale
        scale = w.abs().flatten(1).amax(1) / (2 ** (self.bits - 1) - 1)
        bias = module.bias.detach().double() if getattr(module, "bias", None) is not None else torch.zeros_like(scale)
        if norm is not None:
            mean, var = norm.running_mean, norm.running_var
            assert mean is not None and var is not None  # a norm the runtime folds tracks its statistics
            mult = norm.weight.detach().double() / torch.sqrt(var.double() + norm.eps)
            shift = (bias - mean.double()) * mult + norm.bias.detach().double()
            scale = scale * mult
        else:
            shift = bias
        step = scale.abs().float().double() * float(quantizer.scale.detach())
        level = step.float().double().clamp_min(1e-30)
        return (torch.round(shift / level) * level - shift).float()

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.offset().to(y.dtype).view(1, -1, *([1] * (y.dim() - 2)))


def _integer_ok(model: nn.Module, bits: Mapping[str, int | None] | None = None) -> dict[str, int]:
    """Layer -> weight bits of the layers with an input quantizer and quantized weights (``bits`` by layer, else
    read from the compressed layers): those an integer runtime runs."""
    out = {}
    for name, m in model.named_modules():
        plist: Any = getattr(getattr(m, "parametrizations", None), "weight", None)
        b = bits.get(name) if bits is not None else plist[0].bits if plist is not None else None
        if isinstance(getattr(m, ACT_QUANT, None), ActQuantizer) and b is not None:
            out[name] = int(b)
    return out


def _bias_owners(traced: fx.GraphModule, layers: set[str]) -> dict[str, fx.Node]:
    """Integer layer -> the node after which its bias is rounded: its BatchNorm when the layer feeds only that
    (the runtime folds it in), else the layer's own node."""
    modules = dict(traced.named_modules())
    out = {}
    for n in traced.graph.nodes:
        if n.op == "call_module" and str(n.target) in layers:
            users = list(n.users)
            norm = len(users) == 1 and users[0].op == "call_module" and isinstance(modules[str(users[0].target)], _NORM)
            out[str(n.target)] = users[0] if norm else n
    return out


class _Tap(nn.Module):
    """Runs a container module's forward hooks on its output: torch.fx inlines containers, so a hook on one (a
    feature layer of FR, a block) would never fire in the traced model. Returns nothing the graph uses."""

    def __init__(self, container: nn.Module) -> None:
        super().__init__()
        self._refs = (container,)

    def forward(self, x: torch.Tensor) -> None:
        container = self._refs[0]
        for hook in list(container._forward_hooks.values()):
            hook(container, (), x)


def _container_outputs(traced: fx.GraphModule) -> dict[str, tuple[nn.Module, fx.Node]]:
    """Each inlined container (by name, dots as underscores) and the one node that is its output."""
    scopes: dict[str, list[fx.Node]] = {}
    for n in traced.graph.nodes:
        for key in (n.meta.get("nn_module_stack") or {}):
            scopes.setdefault(key, []).append(n)
    modules = dict(traced.named_modules())
    out = {}
    for scope, nodes in scopes.items():
        inside = set(nodes)
        outputs = [n for n in nodes if any(u not in inside for u in n.users)]
        container = modules.get(scope)
        if len(outputs) == 1 and container is not None and not (len(nodes) == 1 and nodes[0].op == "call_module"):
            out[scope.replace(".", "_")] = (container, outputs[0])
    return out


class _Observer(nn.Module):
    """Collects (evenly thinned) values of the tensor it sees during calibration and passes it through."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.signed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().flatten().float()
        self.signed |= bool((flat < 0).any())
        self.seen.append(flat[:: max(1, flat.numel() // (1 << 16))])
        return x


def _insert(traced: fx.GraphModule, where: str, modules: Mapping[str, nn.Module], after: Mapping[str, fx.Node]) -> None:
    """Put each module of ``modules`` (under the ModuleDict ``where``) right after its node in ``after``, read by
    all that node's users."""
    traced.add_submodule(where, nn.ModuleDict(dict(modules)))
    for name, node in after.items():
        with traced.graph.inserting_after(node):
            new = traced.graph.call_module(f"{where}.{name}", (node,))
        node.replace_all_uses_with(new, delete_user_cb=lambda u, new=new: u is not new)  # type: ignore[misc]


def _integer(traced: fx.GraphModule, points: Mapping[str, nn.Module], layers: Mapping[str, int]) -> fx.GraphModule:
    """The traced model with the points (by node name) and, after each integer layer (input quantizer and
    quantized weights) or its BatchNorm, its bias rounding."""
    nodes = {n.name: n for n in traced.graph.nodes}
    containers = _container_outputs(traced)  # before any node is added: they belong to no container
    _insert(traced, POINTS, points, {name: nodes[name] for name in points})
    modules = dict(traced.named_modules())
    owners = _bias_owners(traced, set(layers))
    biases = {}
    for layer, node in owners.items():
        norm = modules[str(node.target)] if node.target != layer else None
        biases[layer.replace(".", "_")] = BiasRounding(layer, layers[layer], modules[layer], norm,
                                                       getattr(modules[layer], ACT_QUANT))
    _insert(traced, BIASES, biases, {layer.replace(".", "_"): node for layer, node in owners.items()})
    traced.add_submodule(TAPS, nn.ModuleDict({name: _Tap(c) for name, (c, _) in containers.items()}))
    for name, (_, node) in containers.items():
        with traced.graph.inserting_after(node):
            traced.graph.call_module(f"{TAPS}.{name}", (node,))
    traced.recompile()
    return traced


def _shared(modules: Mapping[str, nn.Module], layer: str) -> nn.Module:
    """The layer's input quantizer, now applied by the graph where the tensor is made, so that every reader
    (the layer, an add) gets the same rounded tensor: the layer's own pre-hook is removed (it would round twice)."""
    q = getattr(modules[layer], ACT_QUANT, None)
    if not isinstance(q, ActQuantizer):
        raise FrandiError(f"layer '{layer}' has no input quantizer to share")
    detach_input_hook_(modules[layer])
    return q


@torch.no_grad()
def with_integer_points(
    student: nn.Module, calibration: torch.Tensor, method: str = "mse", *, chunk: int = 256
) -> nn.Module:
    """The student (its input quantizers already calibrated) with an 8-bit quantizer on each tensor an integer
    runtime rounds (``plan``), calibrated on ``calibration`` by ``method``: a traced copy sharing the student's
    modules, or the student itself when it has nothing to add or cannot be traced."""
    check_calibration(method)
    quantized = {n: q.bits for n, q in activation_quantizers(student).items()}
    traced = _trace(student) if quantized and not isinstance(student, COMPRESSIBLE) else None
    layers = _integer_ok(student)
    if traced is None or not (layers or plan(traced, quantized, set(layers))):
        return student
    todo = plan(traced, quantized, set(layers))
    modules = dict(student.named_modules())
    new = {name: _Observer() for name, layer in todo.items() if layer is None}
    made = {name: _shared(modules, layer) if layer else new[name] for name, layer in todo.items()}
    for src, group in readers(traced, quantized).items():
        if src in made and len(group) > 1:
            _tie(modules, group, made[src])
    traced = _integer(traced, made, layers)
    was_training = traced.training
    traced.eval()
    try:
        for i in range(0, len(calibration), chunk):
            traced(calibration[i : i + chunk])
    finally:
        traced.train(was_training)
    points = getattr(traced, POINTS)
    for name, obs in new.items():
        x = torch.cat(obs.seen)
        clip = CALIBRATIONS[method](x, POINT_BITS, obs.signed)
        step = max(clip, 1e-8) / grid(POINT_BITS, obs.signed)[1]
        points[name] = ActQuantizer(POINT_BITS, obs.signed, step, full=True).to(calibration.device)
    return traced


def point_settings(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Point name -> {"bits", "signed", "step", "layer"} of each integer point (``layer``: the layer whose input
    quantizer it shares, or None for a point of its own)."""
    points = getattr(model, POINTS, None)
    if points is None:
        return {}
    owners = {id(getattr(m, ACT_QUANT)): n for n, m in model.named_modules()
              if isinstance(getattr(m, ACT_QUANT, None), ActQuantizer)}
    return {
        name: {"bits": q.bits, "signed": q.signed, "step": float(q.scale.detach().float().cpu()),
               "layer": owners.get(id(q))}
        for name, q in points.items()
    }


def set_integer_points(
    model: nn.Module, settings: Mapping[str, Mapping[str, Any]], bits: Mapping[str, int | None]
) -> nn.Module:
    """``model`` (its input quantizers already set) with the integer points ``settings`` describes (what
    ``point_settings`` returned) and the bias rounding of its integer layers (``bits``: weight bits by layer, the
    policy's): the traced copy, or the model itself
    when it has no input quantizer or cannot be traced (then ``settings`` must be empty)."""
    traced = _trace(model) if activation_quantizers(model) and not isinstance(model, COMPRESSIBLE) else None
    if traced is None:
        if settings:
            raise FrandiError("the model cannot be traced by torch.fx, yet the file holds integer points")
        return model
    nodes = {n.name for n in traced.graph.nodes}
    unknown = sorted(set(settings) - nodes)
    if unknown:
        raise FrandiError(f"integer point(s) {unknown[:3]} name no node of this model's graph")
    modules = dict(model.named_modules())
    made: dict[str, nn.Module] = {}
    device = next(model.parameters()).device
    for name, s in settings.items():
        if s.get("layer"):
            made[name] = _shared(modules, str(s["layer"]))
            continue
        q = ActQuantizer(int(s["bits"]), bool(s["signed"]), 1.0, full=True)
        q.log_scale.data.copy_(exact_log(float(s["step"])))
        made[name] = q.to(device)
    quantized = {n: q.bits for n, q in activation_quantizers(model).items()}
    for src, group in readers(traced, quantized).items():
        if src in made and len(group) > 1:
            _tie(modules, group, made[src])
    return _integer(traced, made, _integer_ok(model, bits))


def drop_integer_points_(model: nn.Module) -> nn.Module:
    """Turn every integer point and bias rounding into an identity, in place (the state_dict then holds the
    architecture's names, and the model computes as the plain one)."""
    for where in (POINTS, BIASES):
        found = getattr(model, where, None)
        if found is not None:
            for name in list(found):
                found[name] = nn.Identity()
    return model


def integer_layers(model: nn.Module) -> set[str]:
    """The layers whose bias the model rounds as an integer runtime does: those the fast export runs on integer
    kernels."""
    return {m.layer for m in model.modules() if isinstance(m, BiasRounding)}
