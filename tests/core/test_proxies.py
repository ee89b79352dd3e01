"""Label-free proxies: zero for the teacher itself, larger for a model that departs from it."""

from __future__ import annotations

import torch

from frandi_core import Policy, compress, disagreement, feature_discrepancy, model_outputs, softmax_kl
from frandi_core.models import resnet


def test_proxies_are_zero_for_the_teacher_and_grow_with_compression() -> None:
    torch.manual_seed(0)
    teacher = resnet(widths=(4, 8)).eval()
    x = torch.randn(32, 1, 8, 8)
    out = model_outputs(teacher, x)
    assert disagreement(out, out) == 0.0 and abs(softmax_kl(out, out)) < 1e-6
    assert feature_discrepancy(teacher, teacher, x, ["layer1", "layer2"]) < 1e-6
    mild, harsh = (compress(teacher, Policy.uniform(teacher, s, b)) for s, b in ((0.1, 8), (0.8, 2)))
    for f in (softmax_kl, disagreement):
        assert f(out, model_outputs(harsh, x)) >= f(out, model_outputs(mild, x))
    assert softmax_kl(out, model_outputs(harsh, x)) > 0
    assert feature_discrepancy(teacher, harsh, x, ["layer1", "layer2"]) > feature_discrepancy(
        teacher, mild, x, ["layer1", "layer2"]
    ) > 0
