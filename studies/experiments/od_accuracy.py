"""Does OD track real accuracy? (paper figure 2)

Compress each model with >= 30 policies (uniform ones, and random per-layer ones spanning dense to
very sparse and 8 to 2 bits), measure OD on the held-out synthetic batch and real test accuracy, before
and after Feature Regression, and report Spearman's rho and Kendall's tau of OD against accuracy.

python -m studies.experiments.od_accuracy            # Fashion-MNIST ResNet and separable net
python -m studies.experiments.od_accuracy --quick    # digits, 4 policies, 3 FR steps (smoke test)
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from frandi_core import LayerSetting, Policy, compressible_layers
from search import correlations

from ._common import Bench, Report, each_model, figure, markdown_table, parse, parser, policy_summary, save, write_csv

UNIFORM: tuple[tuple[float, int | None], ...] = (
    (0.0, 8), (0.0, 4), (0.0, 3), (0.0, 2),
    (0.5, None), (0.7, None), (0.8, None), (0.9, None),
    (0.5, 4), (0.7, 4), (0.5, 3), (0.8, 3), (0.3, 2),
)  # fmt: skip
BIT_POOLS: tuple[tuple[int | None, ...], ...] = ((None, 8), (8, 6), (8, 6, 4), (4, 3), (4, 3, 2), (3, 2))
POLICY_SEED = 0


def random_policies(b: Bench, n: int, seed: int = POLICY_SEED) -> list[Policy]:
    """Per-layer policies, stratified from dense to very sparse; each draws its bits from one pool."""
    rng = random.Random(seed)
    layers = compressible_layers(b.teacher)
    out = []
    for i in range(n):
        level = 0.9 * (i + rng.random()) / n
        pool = BIT_POOLS[rng.randrange(len(BIT_POOLS))]
        out.append(
            Policy.from_dict(
                {
                    layer.name: LayerSetting(
                        round(min(max(level + rng.gauss(0.0, 0.12), 0.0), 0.95), 3), rng.choice(pool)
                    )
                    for layer in layers
                }
            )
        )
    return out


def run_model(b: Bench, policies: Sequence[tuple[str, Policy]], report: Report) -> list[dict[str, Any]]:
    rows = []
    for i, (kind, policy) in enumerate(policies):
        acc_before = b.accuracy(b.compressed(policy))
        student, r = b.recovered(policy)
        acc_after = b.accuracy(student)
        rows.append(
            {
                "model": b.name,
                "policy": i,
                "kind": kind,
                **policy_summary(policy),
                "ratio": round(r.ratio, 2),
                "od_before": round(r.od_before, 5),
                "od_after": round(r.od, 5),
                "acc_before": round(acc_before, 2),
                "acc_after": round(acc_after, 2),
            }
        )
        print(f"[{b.name}] {i + 1}/{len(policies)} {rows[-1]}", flush=True)
    write_csv(report.out / f"{report.name}.csv", rows)
    stats = []
    for stage in ("before", "after"):
        c = correlations([r[f"od_{stage}"] for r in rows], [r[f"acc_{stage}"] for r in rows])
        stats.append({"stage": f"{stage} FR", "policies": len(rows), **{k: _fmt(v) for k, v in c.items()}})
    fig, axes = figure(2)
    for ax, stage, s in zip(axes, ("before", "after"), stats, strict=True):
        for kind, marker in (("uniform", "s"), ("random", "o")):
            pts = [r for r in rows if r["kind"] == kind]
            ax.scatter(
                [r[f"od_{stage}"] for r in pts], [r[f"acc_{stage}"] for r in pts], marker=marker, label=kind, alpha=0.8
            )
        ax.axhline(b.original, ls="--", c="gray", lw=1, label="original")
        ax.set_xscale("log")
        ax.set_xlabel(f"OD {stage} FR (held-out synthetic batch)")
        ax.set_ylabel("real test accuracy (%)")
        ax.set_title(f"{b.name}, {stage} FR: Spearman {s['spearman']}, Kendall {s['kendall']}", fontsize=9)
        ax.legend(fontsize=8)
    save(fig, report.png)
    report.add("## Correlation of OD with real accuracy\n\n" + markdown_table(stats))
    report.add(f"Plot: `{report.name}.png`. Policies (CSV `{report.name}.csv`):\n\n" + markdown_table(rows))
    return rows


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = parser(__doc__)
    p.add_argument("--random", type=int, default=20, help="random per-layer policies (plus 13 uniform ones)")
    a = parse(p, argv)
    uniform = UNIFORM[:3] if a.quick else UNIFORM
    n_random = 1 if a.quick else a.random

    def model(b: Bench, report: Report) -> list[dict[str, Any]]:
        policies = [("uniform", b.uniform(s, bits)) for s, bits in uniform]
        policies += [("random", pol) for pol in random_policies(b, n_random)]
        report.setup(
            b,
            policies=f"{len(uniform)} uniform (sparsity, bits) {list(uniform)}; {n_random} random per-layer "
            f"(seed {POLICY_SEED}, sparsity level stratified over [0, 0.9] + N(0, 0.12) per layer, bits from "
            f"one of {list(BIT_POOLS)})",
        )
        return run_model(b, policies, report)

    return each_model(a, "od_accuracy", "OD vs real accuracy: {name}", model)


if __name__ == "__main__":
    main()
