"""The paper's formulas on tensors (FRanDI: Sobolev, Ermilov, Kozyrskiy, Phan), one public function each:
``bn_kl`` (eq. 1), ``feature_loss`` (eq. 2) and ``od_from_outputs`` (eq. 3), all built on ``normalized_distance``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def bn_kl(
    mean: torch.Tensor, var: torch.Tensor, run_mean: torch.Tensor, run_var: torch.Tensor
) -> torch.Tensor:
    """Eq. 1: sum over channels of KL(N(mean, var) || N(run_mean, run_var)), a BN layer's batch statistics against
    its running ones; zero exactly when they match. Synthesis minimizes it summed over the BN layers."""
    return 0.5 * (torch.log(run_var / var) + (var + (mean - run_mean) ** 2) / run_var - 1.0).sum()


class _ChannelStats(torch.autograd.Function):
    """Per-channel mean and biased variance from two plain sums, with a one-pass backward.

    torch.var_mean over (N, H, W) of an NCHW tensor was 3-7x slower than sums on CPU, and its backward
    another pass or two: together 30% of a synthesis step (benchmarks/bench_synthesis.py). Sums are
    taken around ``shift`` (the BN running mean: close to the batch mean) so E[d^2] - E[d]^2 does not cancel.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        dims = [0, *range(2, x.dim())]
        view = [1, x.shape[1]] + [1] * (x.dim() - 2)
        count = x.numel() // x.shape[1]
        d = x - shift.view(view)
        m1 = d.sum(dims) / count
        var = ((d * d).sum(dims) / count - m1 * m1).clamp_min_(0)
        mean = shift + m1
        ctx.save_for_backward(x, mean)
        ctx.view, ctx.count = view, count
        return mean, var

    @staticmethod
    def backward(ctx, g_mean: torch.Tensor, g_var: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        x, mean = ctx.saved_tensors  # an unused output's gradient arrives as zeros (materialize_grads)
        # d mean / dx = 1/M, d var / dx = 2 (x - mean) / M
        scale = (2 * g_var / ctx.count).view(ctx.view)
        return torch.addcmul((g_mean / ctx.count).view(ctx.view), x - mean.view(ctx.view), scale), None


def batch_stats(x: torch.Tensor, shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of a BN input over N (and H, W, ...); differentiable in ``x``.

    ``shift``: a per-channel value near the mean (e.g. the BN running mean) for numerical accuracy.
    """
    shift = x.new_zeros(x.shape[1]) if shift is None else shift.to(x.dtype)
    return _ChannelStats.apply(x, shift.detach())


def normalized_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample || a/||a|| - b/||b|| ||_2 over the flattened features; values in [0, 2]."""
    a = a.flatten(1).float()
    b = b.flatten(1).float()
    a = a / a.norm(dim=1, keepdim=True).clamp_min(eps)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(eps)
    return (a - b).norm(dim=1)


class _DistanceToUnit(torch.autograd.Function):
    """|| a/||a|| - u || per row, with a hand-written backward: one graph node instead of six.

    Feature Regression evaluates this for every feature layer at every step; forward + backward on a
    32 x 1024 layer took 595 us against 793 us for the composed formula (1 CPU thread). What remains is
    elementwise arithmetic, which only torch.compile fuses further (``compile_loss``).
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, unit: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        x = a.flatten(1).to(torch.promote_types(a.dtype, torch.float32))  # bf16/fp16 features: in fp32
        n = x.norm(dim=1, keepdim=True).clamp_min(eps)
        xhat = x / n
        diff = xhat - unit.to(x.dtype)
        dist = diff.norm(dim=1)
        ctx.save_for_backward(xhat, diff, dist, n)
        ctx.shape_dtype = (a.shape, a.dtype)
        return dist

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        xhat, diff, dist, n = ctx.saved_tensors
        shape, dtype = ctx.shape_dtype
        # d dist / d xhat = diff / dist (0 where dist == 0, as torch's norm backward); then through x / ||x||
        g_hat = diff * (grad / dist).masked_fill(dist == 0, 0).unsqueeze(1)
        g = (g_hat - xhat * (xhat * g_hat).sum(dim=1, keepdim=True)) / n
        return g.view(shape).to(dtype), None, None


def distance_to_unit(a: torch.Tensor, unit: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample || a/||a|| - unit ||_2 where ``unit`` rows are already L2-normalized (cached teacher targets).

    Computed in float32 whatever the dtype of ``a`` (bf16 features under autocast); gradient flows to ``a`` only.
    """
    return _DistanceToUnit.apply(a, unit.detach(), eps)


def feature_loss(student: Sequence[torch.Tensor], teacher_units: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. 2, the Feature Regression loss: sum over layers of the mean over samples of || F~/||F~|| - F/||F|| ||,
    the student's features F~ against the teacher's, whose rows come already divided by their norm (as
    ``TeacherTargets.features`` holds them, computed once). A float32 scalar; the gradient flows to ``student``."""
    loss = student[0].new_zeros((), dtype=torch.float32)
    for f, u in zip(student, teacher_units, strict=True):
        loss = loss + distance_to_unit(f, u).mean()
    return loss


def od_from_outputs(teacher: torch.Tensor, student: torch.Tensor) -> float:
    """Eq. 3, Output Discrepancy: mean over samples of || F/||F|| - F~/||F~|| || of the teacher's outputs F and the
    student's F~; in [0, 2], 0 when they agree up to a positive scale per sample."""
    return float(normalized_distance(teacher, student).mean())


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of a batch of images (mean absolute neighbour difference)."""
    if x.dim() < 4:
        return x.new_zeros(())
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
