"""Synthesis cost: seconds per inversion iteration against a bare forward + backward of the same model and batch.

    python -m benchmarks.bench_synthesis [--batch 64] [--iters 50] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from frandi_core import ModelSpec, SynthConfig, invert, load_model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = load_model(ModelSpec("frandi_core.models:resnet", "studies/models/resnet_digits.pt", {}, (1, 8, 8)))
    cfg = SynthConfig(batch_size=a.batch, iterations=a.iters)

    def bare() -> float:
        x = torch.randn(a.batch, 1, 8, 8, requires_grad=True)
        opt = torch.optim.Adam([x], lr=0.1, fused=True)  # fused, as synthesis runs it on CPU
        t0 = time.perf_counter()
        for _ in range(a.iters):
            opt.zero_grad(set_to_none=True)
            (g,) = torch.autograd.grad(model(x).square().mean(), x)
            x.grad = g
            opt.step()
        return (time.perf_counter() - t0) / a.iters

    def synth() -> float:
        t0 = time.perf_counter()
        invert(model, (1, 8, 8), a.batch, cfg, seed=0)
        return (time.perf_counter() - t0) / a.iters

    bare(), synth()  # warm up
    b = min(bare() for _ in range(a.repeats))
    s = min(synth() for _ in range(a.repeats))
    print(f"model resnet_digits, batch {a.batch}, {a.threads} thread(s), best of {a.repeats}")
    print(f"bare forward+backward+Adam: {b * 1e3:8.2f} ms/iter")
    print(f"synthesis (BN-KL + priors): {s * 1e3:8.2f} ms/iter")
    print(f"ratio synthesis / bare:     {s / b:8.2f}x   (goal <= 1.20x)")


if __name__ == "__main__":
    main()
