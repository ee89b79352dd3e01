"""Channel pruning: whole output channels removed, so every runtime runs a smaller dense model.

A layer's ``channels`` setting is the fraction of its output channels removed. Torch-Pruning's dependency graph
finds the layers whose channels are coupled (the convolutions that feed one residual add, a depthwise
convolution and the layer before it, the BatchNorm after each, the inputs of the layers that read them): a
coupled group loses the same channels everywhere, the largest fraction any of its layers asks for. The channels
removed are those of the lowest group L2 norm (Torch-Pruning's ``GroupMagnitudeImportance``: over every coupled
Conv, Linear and BatchNorm, normalized by the group's mean). The result is a ``ChannelPlan``: the channels
each group keeps, in the order the groups were pruned; ``prune_channels_`` replays it on any instance of the
architecture (the packed file stores it, ``load_packed`` replays it), whatever its weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from ._bops import layer_outputs, zeros_for
from ._errors import FrandiError
from ._policy import COMPRESSIBLE, Policy

PLAN = "frandi_channels"  # the attribute of a channel-pruned student holding its ChannelPlan


@dataclass(frozen=True)
class ChannelPlan:
    """The output channels each pruned group keeps (in the order pruned): the group's Conv/Linear layers (its
    root first) and the indices kept; for inputs of ``input_shape`` (without the batch). What
    ``prune_channels_`` needs to prune an architecture the same way."""

    input_shape: tuple[int, ...]
    groups: tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]

    def kept(self, layer: str) -> tuple[int, ...] | None:
        """The output channels ``layer`` keeps; None when the plan prunes none of them."""
        return next((k for members, k in self.groups if layer in members), None)

    def to_json(self) -> str:
        return json.dumps({"input_shape": list(self.input_shape),
                           "groups": [[list(m), list(k)] for m, k in self.groups]})

    @classmethod
    def from_json(cls, text: str) -> ChannelPlan:
        try:
            d = json.loads(text)
            groups = tuple((tuple(str(n) for n in m), tuple(int(i) for i in k)) for m, k in d["groups"])
            return cls(tuple(int(s) for s in d["input_shape"]), groups)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise FrandiError(f"channel plan is not valid ({e})") from None


def _graph(model: nn.Module, input_shape: Sequence[int]) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` (traced with autograd on one zero input, in eval mode)."""
    x = zeros_for(model, input_shape)
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, x, verbose=False)
    except Exception as e:  # the tracer raises whatever the model's forward does on an unexpected shape
        raise FrandiError(f"channel pruning cannot trace the model at input shape {tuple(input_shape)} ({e})") from None
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
        model.train(was_training)


def output_layers(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """The Conv/Linear layers whose output is the model's output, and the last one: their channels are the
    model's outputs (the classes), never pruned."""
    out, y = layer_outputs(model, input_shape)
    names = list(out)
    return [n for n in names if out[n] is y or n == names[-1]]


def channel_groups(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[str, ...]]:
    """The Conv/Linear layers whose output channels are coupled, one tuple per prunable group (the group's root
    layer first, then the others in module order), in the order Torch-Pruning finds them."""
    return [names for names, _ in _groups(model, input_shape)]


def _groups(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[tuple[str, ...], tp.Group]]:
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    ignored = [modules[n] for n in output_layers(model, input_shape)]
    graph = _graph(model, input_shape)
    found = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=COMPRESSIBLE):
        root = names[group[0].dep.target.module]
        members = [names[dep.target.module] for dep, _ in group
                   if isinstance(dep.target.module, COMPRESSIBLE) and graph.is_out_channel_pruning_fn(dep.handler)]
        order = list(modules)
        found.append(((root, *sorted(set(members) - {root}, key=order.index)), group))
    return found


def _scored(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[tuple[str, ...], torch.Tensor]]:
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    return [(members, importance(group).detach().float().cpu()) for members, group in _groups(model, input_shape)]


def channel_importance(model: nn.Module, input_shape: Sequence[int]) -> dict[str, torch.Tensor]:
    """Each prunable group's channel importance, by the group's root layer: the squared L2 norm of each channel
    summed over the coupled Conv, Linear and BatchNorm layers (averaged), divided by the group's mean so that
    groups compare; the lowest go first."""
    return {members[0]: scores for members, scores in _scored(model, input_shape)}


def kept_count(channels: int, fraction: float, multiple: int = 1) -> int:
    """How many of ``channels`` a group keeps when ``fraction`` of them is removed: the nearest count, a multiple
    of ``multiple`` when the group has more than ``multiple`` channels (CPU kernels run blocks of 8 or 16
    channels: a remainder runs slower), at least one (or ``multiple``)."""
    keep = channels - round(fraction * channels)
    if multiple > 1 and channels > multiple:
        keep = min(channels, max(multiple, multiple * round(keep / multiple)))
    return max(1, keep)


def channel_plan(model: nn.Module, policy: Policy, input_shape: Sequence[int], *, multiple: int = 1) -> ChannelPlan:
    """The channels each group of ``model`` keeps under ``policy``'s ``channels`` fractions: per group,
    ``kept_count`` of them (``multiple``: see there), those of the highest group L2 norm."""
    wanted = policy.channels()
    if not wanted:
        return ChannelPlan(tuple(input_shape), ())
    outputs = set(output_layers(model, input_shape))
    named = sorted(n for n in wanted if n in outputs)
    if named:
        raise FrandiError(
            f"policy prunes channels of '{named[0]}', whose outputs are the model's outputs; set its channels to 0"
        )
    kept: list[tuple[tuple[str, ...], tuple[int, ...]]] = []
    covered: set[str] = set()
    for members, scores in _scored(model, input_shape):
        covered.update(members)
        fraction = max((wanted.get(n, 0.0) for n in members), default=0.0)
        drop = len(scores) - kept_count(len(scores), fraction, multiple) if fraction else 0
        if drop <= 0:
            continue
        order = torch.argsort(scores, stable=True)  # lowest first; ties by index: the same on every replay
        kept.append((members, tuple(sorted(int(i) for i in order[drop:]))))
    missing = sorted(set(wanted) - covered)
    if missing:
        raise FrandiError(
            f"policy prunes channels of '{missing[0]}', which is in no prunable group of the model "
            "(Torch-Pruning found none holding its output channels); set its channels to 0"
        )
    return ChannelPlan(tuple(input_shape), tuple(kept))


def prune_channels_(model: nn.Module, plan: ChannelPlan) -> nn.Module:
    """Remove the channels ``plan`` does not keep, in place (coupled layers with them); records the plan on
    the model (``pruned_channels``)."""
    if plan.groups:
        graph = _graph(model, plan.input_shape)
        modules = dict(model.named_modules())
        for (root, *_), keep in plan.groups:
            m = modules.get(root)
            if m is None or not isinstance(m, COMPRESSIBLE):
                raise FrandiError(f"channel plan names layer '{root}', which is not a Conv/Linear layer of the model")
            n = m.weight.shape[0]
            if not keep or max(keep) >= n or len(set(keep)) != len(keep):
                raise FrandiError(f"channel plan keeps channels {list(keep)[:4]}... of '{root}', which has {n}")
            drop = [i for i in range(n) if i not in set(keep)]
            fn = tp.prune_conv_out_channels if isinstance(m, nn.Conv1d | nn.Conv2d) else tp.prune_linear_out_channels
            graph.get_pruning_group(m, fn, drop).prune()
    return mark_(model, plan)


def mark_(model: nn.Module, plan: ChannelPlan | None) -> nn.Module:
    """Record on ``model`` the plan its channels were pruned by (a traced copy of a pruned student needs it
    again), in place; None records nothing."""
    if plan is not None:
        setattr(model, PLAN, plan)
    return model


def pruned_channels(model: nn.Module) -> ChannelPlan | None:
    """The channel plan ``compress`` (or ``load_packed``) applied to ``model``; None when no channel was pruned."""
    plan = getattr(model, PLAN, None)
    return plan if isinstance(plan, ChannelPlan) and plan.groups else None
