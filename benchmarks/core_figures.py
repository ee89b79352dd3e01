"""The method's headline figures on the digits reference model: synthesis speed and quality, and what FR
recovers at 50% uniform sparsity (OD on the held-out synthetic batch, real accuracy on held-out digits).

    python -m benchmarks.core_figures [--threads 1] [--sparsity 0.5] [--steps 100]
"""

from __future__ import annotations

import argparse
import time

import torch

from frandi_core import (
    ModelSpec,
    Policy,
    RecoveryConfig,
    SynthConfig,
    bn_kl_loss,
    compress,
    feature_regression_,
    load_model,
    model_outputs,
    output_discrepancy,
    synthesize,
    teacher_targets,
)
from frandi_core.data import accuracy, labeled_data


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=100)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    teacher = load_model(ModelSpec("frandi_core.models:resnet", "studies/models/resnet_digits.pt", {}, (1, 8, 8)))
    test = labeled_data("digits", "test")
    cfg = SynthConfig(batch_size=128, heldout_size=128, iterations=200, seed=0)
    t0 = time.perf_counter()
    syn = synthesize(teacher, (1, 8, 8), cfg)
    per_iter = (time.perf_counter() - t0) / (2 * cfg.iterations)
    noise = torch.randn(128, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    print(
        f"synthesis: {per_iter * 1e3:.1f} ms/iteration (batch 128, {a.threads} thread(s)); BN-KL noise "
        f"{float(bn_kl_loss(teacher, noise)):.2f} -> recovery {float(bn_kl_loss(teacher, syn.recovery)):.3f}, "
        f"held-out {float(bn_kl_loss(teacher, syn.heldout)):.3f}"
    )
    policy = Policy.uniform(teacher, a.sparsity)
    student = compress(teacher, policy)
    targets = teacher_targets(teacher, syn.recovery)
    out = model_outputs(teacher, syn.heldout)
    od0, acc0 = output_discrepancy(student, syn.heldout, out), accuracy(student, test)
    t0 = time.perf_counter()
    feature_regression_(student, targets, RecoveryConfig(steps=a.steps, lr=1e-3, batch_size=64, seed=0))
    fr = time.perf_counter() - t0
    od1, acc1 = output_discrepancy(student, syn.heldout, out), accuracy(student, test)
    print(f"original model: {accuracy(teacher, test):.2f}% on {len(test)} held-out digits")
    print(
        f"{a.sparsity:.0%} uniform sparsity: OD {od0:.4f} -> {od1:.4f} after FR ({od0 / od1:.1f}x lower), "
        f"accuracy {acc0:.2f}% -> {acc1:.2f}%  (FR {a.steps} steps, {fr:.1f} s)"
    )


if __name__ == "__main__":
    main()
