"""Label-free scores of a compressed model against its teacher on the held-out synthetic batch.

OD (eq. 3) compares normalized logits; these compare what a classifier decides (top-1 agreement), how
confident it is (softmax KL), and what the inner layers compute (OD on intermediate features). The search
benchmark ranks them by rank correlation with real accuracy (benchmarks/bench_search.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._hooks import capture
from ._losses import normalized_distance


def disagreement(teacher_out: torch.Tensor, student_out: torch.Tensor) -> float:
    """Fraction of samples whose top-1 class differs from the teacher's (1 - top-1 agreement)."""
    return float((teacher_out.argmax(1) != student_out.argmax(1)).float().mean())


def softmax_kl(teacher_out: torch.Tensor, student_out: torch.Tensor) -> float:
    """Mean KL(teacher softmax || student softmax) over samples."""
    log_t = torch.log_softmax(teacher_out.float(), 1)
    log_s = torch.log_softmax(student_out.float(), 1)
    return float((log_t.exp() * (log_t - log_s)).sum(1).mean())


@torch.no_grad()
def feature_discrepancy(teacher: nn.Module, student: nn.Module, inputs: torch.Tensor, layers: Sequence[str]) -> float:
    """OD on intermediate features: the mean over ``layers`` of the mean normalized distance between the
    teacher's and the student's features (each flattened per sample)."""
    outs = []
    for model in (teacher, student):
        model.eval()
        with capture(model, layers) as feats:
            model(inputs)
            outs.append({n: feats[n].flatten(1) for n in layers})
    return float(torch.stack([normalized_distance(outs[0][n], outs[1][n]).mean() for n in layers]).mean())
