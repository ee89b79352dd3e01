"""Feature Regression (paper eq. 2) and Output Discrepancy (eq. 3) on synthetic data, no labels."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ._actquant import check_calibration, learn_steps_
from ._channels import pruned_channels
from ._compress import WEIGHT_CLIPS
from ._errors import FrandiError
from ._hooks import capture
from ._losses import feature_loss, od_from_outputs
from ._optim import adam
from ._policy import COMPRESSIBLE

OUTPUT = "output"  # the name that stands for the model's final output in a list of feature layers


@dataclass(frozen=True)
class RecoveryConfig:
    """Feature Regression settings: step budget, Adam learning rate, mini-batch size, layers, seed; and, for
    policies that quantize activations, how their ranges are calibrated and whether FR learns the step sizes."""

    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 64
    layers: tuple[str, ...] | None = None  # None: the main blocks and the output
    seed: int = 0
    precision: str = "fp32"  # "bf16": forward passes under bf16 autocast (CUDA); weights, loss and OD stay fp32
    calibration: str = "mse"  # activation ranges from the recovery batch: "minmax", "percentile" or "mse"
    learn_act_steps: bool = True  # FR also trains the activation step sizes (LSQ-style): better by measurement
    weight_clip: str = "mse"  # each weight channel clipped where its squared error is least ("max": never clipped)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise FrandiError(
                f"recovery needs steps >= 0, batch_size >= 1 and lr > 0, got {self.steps}, "
                f"{self.batch_size}, {self.lr}"
            )
        if self.precision not in ("fp32", "bf16"):
            raise FrandiError(f"recovery precision must be 'fp32' or 'bf16', got {self.precision!r}")
        check_calibration(self.calibration)
        if self.weight_clip not in WEIGHT_CLIPS:
            raise FrandiError(f"weight_clip '{self.weight_clip}' is unknown; use one of {', '.join(WEIGHT_CLIPS)}")


class NonFiniteError(FrandiError):
    """Recovery or OD produced NaN or inf: the policy (or learning rate) broke the model."""


def default_feature_layers(model: nn.Module) -> list[str]:
    """The main blocks: top-level children holding two or more parametrized layers, plus the output."""
    blocks = []
    for name, child in model.named_children():
        leaves = [m for m in child.modules() if not list(m.children()) and any(True for _ in m.parameters())]
        if len(leaves) >= 2:
            blocks.append(name)
    return blocks + [OUTPUT]


def _split(layers: Sequence[str]) -> tuple[list[str], bool]:
    return [n for n in layers if n != OUTPUT], OUTPUT in layers


@dataclass(frozen=True)
class TeacherTargets:
    """The teacher's normalized features on the recovery batch, computed once and reused by every trial."""

    inputs: torch.Tensor
    layers: tuple[str, ...]
    features: dict[str, torch.Tensor]


def _normalize(f: torch.Tensor) -> torch.Tensor:
    f = f.flatten(1).float()
    return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def teacher_targets(
    teacher: nn.Module, inputs: torch.Tensor, layers: Sequence[str] | None = None, *, chunk: int = 256
) -> TeacherTargets:
    """Run the teacher once over the recovery batch and keep its normalized features per layer."""
    names = list(layers) if layers else default_feature_layers(teacher)
    hooked, want_out = _split(names)
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    with capture(teacher, hooked) as feats:
        for i in range(0, len(inputs), chunk):
            out = teacher(inputs[i : i + chunk])
            for n in hooked:
                parts[n].append(_normalize(feats[n]))
            if want_out:
                parts[OUTPUT].append(_normalize(out))
    return TeacherTargets(inputs, tuple(names), {n: torch.cat(v) for n, v in parts.items()})


@functools.cache
def _compiled_feature_loss() -> Callable[[list[torch.Tensor], list[torch.Tensor]], torch.Tensor]:
    """The loss through torch.compile, built once per process: compiled code is reused by every trial."""
    return torch.compile(feature_loss, dynamic=False)  # type: ignore[return-value]


@torch.no_grad()
def pruned_targets(student: nn.Module, targets: TeacherTargets) -> TeacherTargets:
    """The teacher's targets for a channel-pruned student: at each feature layer whose channels were pruned, the
    teacher's feature restricted to the channels the student kept (a fixed selection, renormalized); a layer
    whose kept channels cannot be told (no pruned Conv/Linear of its width inside it) is left out. Unchanged
    targets for a student that prunes no channel."""
    plan = pruned_channels(student)
    if plan is None:
        return targets
    hooked, _ = _split(targets.layers)
    with capture(student, hooked) as feats:
        model_outputs(student, targets.inputs[:1])
    modules = list(student.named_modules())
    layers, features = [], {}
    for name in targets.layers:
        t = targets.features[name]
        shape = feats[name].shape if name != OUTPUT else None
        if shape is None or shape[1:].numel() == t.shape[1]:
            layers.append(name)
            features[name] = t
            continue
        width, spatial = shape[1], shape[2:].numel()
        inside = [n for n, m in modules if (n == name or n.startswith(f"{name}.")) and isinstance(m, COMPRESSIBLE)
                  and m.weight.shape[0] == width]
        kept = plan.kept(inside[-1]) if inside else None
        if kept is None or len(kept) != width or t.shape[1] % spatial or max(kept) >= t.shape[1] // spatial:
            continue
        layers.append(name)
        features[name] = _normalize(t.view(len(t), -1, spatial)[:, list(kept)])
    return TeacherTargets(targets.inputs, tuple(layers), features)


def feature_regression_(
    student: nn.Module,
    targets: TeacherTargets,
    config: RecoveryConfig = RecoveryConfig(),
    *,
    progress: bool = False,
    compile_loss: bool = False,
) -> list[float]:
    """Train the compressed student in place to match the teacher's normalized features (eq. 2).

    BN statistics stay frozen (eval mode: there is no real data to update them), masks are re-applied by
    the compression parametrization on every forward, activations pass their quantizers (straight-through),
    whose step sizes are trained too if ``config.learn_act_steps``. A channel-pruned student regresses the
    teacher's features at the channels it kept (``pruned_targets``). Returns the loss per step.
    ``compile_loss`` fuses the loss's elementwise work with torch.compile (2.5x faster loss on CPU, but the
    first call compiles for 10-25 s on CPU: it pays in long studies only, see benchmarks/bench_trial.py).
    """
    student.eval()
    targets = pruned_targets(student, targets)
    hooked, _ = _split(targets.layers)
    learn_steps_(student, config.learn_act_steps)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = adam(params, config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(config.steps, 1))
    gen = torch.Generator().manual_seed(config.seed)
    n = len(targets.inputs)
    bs = min(config.batch_size, n)
    loss_of = _compiled_feature_loss() if compile_loss else feature_loss
    autocast = torch.autocast(targets.inputs.device.type, torch.bfloat16, enabled=config.precision == "bf16")
    losses: list[torch.Tensor] = []
    with capture(student, hooked) as feats:
        for _ in tqdm(range(config.steps), desc="feature regression", disable=not progress, leave=False):
            idx = torch.randperm(n, generator=gen)[:bs]
            with autocast:
                out = student(targets.inputs[idx])
            found = [out if name == OUTPUT else feats[name] for name in targets.layers]
            loss = loss_of(found, [targets.features[name][idx] for name in targets.layers])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.detach())
    values = [float(v) for v in torch.stack(losses)] if losses else []
    if values and not math.isfinite(values[-1]):
        raise NonFiniteError(f"feature regression diverged (loss {values[-1]}); lower recovery.lr")
    return values


@torch.no_grad()
def model_outputs(model: nn.Module, inputs: torch.Tensor, *, chunk: int = 256) -> torch.Tensor:
    """The model's outputs in eval mode over a batch, in chunks; the model's train/eval flag is restored."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(inputs[i : i + chunk]) for i in range(0, len(inputs), chunk)])
    finally:
        model.train(was_training)


def output_discrepancy(student: nn.Module, heldout: torch.Tensor, teacher_outputs: torch.Tensor) -> float:
    """OD (eq. 3, ``od_from_outputs``) of ``student`` on the held-out batch against the teacher's outputs there;
    NonFiniteError when the student outputs NaN or inf."""
    od = od_from_outputs(teacher_outputs, model_outputs(student, heldout))
    if not math.isfinite(od):
        raise NonFiniteError(f"output discrepancy is {od}: the compressed model outputs NaN or inf")
    return od


NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def recalibrate_(model: nn.Module, inputs: torch.Tensor, *, chunk: int = 256) -> nn.Module:
    """Re-estimate every BN layer's running statistics on ``inputs`` (their plain average over the chunks), in
    place; the model is left in eval mode. A compressed model's BN statistics re-estimated on synthetic data
    (EagleEye's adaptive BN) rank policies before recovery."""
    norms = [m for m in model.modules() if isinstance(m, NORMS)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for i in range(0, len(inputs), chunk) if norms else ():
        model(inputs[i : i + chunk])
    return model.eval()
