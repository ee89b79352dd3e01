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


def distance_to_unit(a: torch.Tensor, unit: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample || a/||a|| - unit ||_2 where ``unit`` rows are already L2-normalized (cached teacher targets)."""
    a = a.flatten(1)
    return (a / a.norm(dim=1, keepdim=True).clamp_min(eps) - unit).norm(dim=1)


def od_from_outputs(teacher: torch.Tensor, student: torch.Tensor) -> float:
    """Output Discrepancy (eq. 3): mean over samples of the normalized output distance."""
    return float(normalized_distance(teacher, student).mean())


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of a batch of images (mean absolute neighbour difference)."""
    if x.dim() < 4:
        return x.new_zeros(())
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
