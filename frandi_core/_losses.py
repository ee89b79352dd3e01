"""The paper's formulas on tensors: BN-statistics KL (eq. 1), normalized feature distance (eq. 2, 3)."""

from __future__ import annotations

import torch


def bn_kl(
    mean: torch.Tensor, var: torch.Tensor, run_mean: torch.Tensor, run_var: torch.Tensor
) -> torch.Tensor:
    """Sum over channels of KL(N(mean, var) || N(run_mean, run_var)); zero exactly when they match."""
    return 0.5 * (torch.log(run_var / var) + (var + (mean - run_mean) ** 2) / run_var - 1.0).sum()


def batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of a BN input over N (and H, W)."""
    dims = [0] + list(range(2, x.dim()))
    return x.mean(dims), x.var(dims, unbiased=False)


def normalized_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample || a/||a|| - b/||b|| ||_2 over the flattened features; values in [0, 2]."""
    a = a.flatten(1).float()
    b = b.flatten(1).float()
    a = a / a.norm(dim=1, keepdim=True).clamp_min(eps)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(eps)
    return (a - b).norm(dim=1)


class _DistanceToUnit(torch.autograd.Function):
    """|| a/||a|| - u || per row, with a hand-written backward: one graph node instead of six.

    Feature Regression evaluates this for every feature layer at every step; on small models the
    autograd bookkeeping of the composed version cost more than the arithmetic (see benchmarks.bench_trial).
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


def od_from_outputs(teacher: torch.Tensor, student: torch.Tensor) -> float:
    """Output Discrepancy (eq. 3): mean over samples of the normalized output distance."""
    return float(normalized_distance(teacher, student).mean())


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of a batch of images (mean absolute neighbour difference)."""
    if x.dim() < 4:
        return x.new_zeros(())
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
