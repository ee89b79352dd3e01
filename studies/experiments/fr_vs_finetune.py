"""Feature Regression on synthetic data vs fine-tuning on real labeled data (paper figure 3).

At several uniform sparsities (fp32 weights), recover the pruned model three ways with the same step
budget and batch size: not at all; FR on the synthetic batch (no labels, no real images); fine-tuning with
cross-entropy on the real labeled training set. Report real test accuracy (and OD) of each.

python -m studies.experiments.fr_vs_finetune            # Fashion-MNIST ResNet and separable net
python -m studies.experiments.fr_vs_finetune --quick    # digits, one sparsity, 3 steps (smoke test)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from frandi_core import output_discrepancy

from ._common import Bench, Report, each_model, figure, parse, parser, save

SPARSITIES = (0.5, 0.7, 0.8, 0.9)
FT_SEED = 0


def run_model(b: Bench, sparsities: Sequence[float], report: Report) -> list[dict[str, Any]]:
    rows = []
    od = b.runner
    for s in sparsities:
        policy = b.uniform(s)
        none = b.compressed(policy)
        fr, r = b.recovered(policy)
        ft = b.finetuned(policy, seed=FT_SEED)
        row = {
            "model": b.name,
            "sparsity": s,
            "ratio": round(r.ratio, 2),
            "original": round(b.original, 2),
            "no_recovery": round(b.accuracy(none), 2),
            "fr_synthetic": round(b.accuracy(fr), 2),
            "finetune_real": round(b.accuracy(ft), 2),
            "od_none": round(r.od_before, 5),
            "od_fr": round(r.od, 5),
            "od_finetune": round(output_discrepancy(ft, od.heldout, od.teacher_out), 5),
        }
        rows.append(row)
        print(f"[{b.name}] {row}", flush=True)
    fig, axes = figure(1, width=5.0)
    ax = axes[0]
    xs = [r["sparsity"] for r in rows]
    for key, label in (
        ("no_recovery", "no recovery"),
        ("fr_synthetic", "FR, synthetic data"),
        ("finetune_real", "fine-tune, real labeled data"),
    ):
        ax.plot(xs, [r[key] for r in rows], marker="o", label=label)
    ax.axhline(b.original, ls="--", c="gray", lw=1, label="original")
    ax.set_xlabel("uniform sparsity (fp32 weights)")
    ax.set_ylabel("real test accuracy (%)")
    ax.set_title(f"{b.name}: {b.cfg.recovery.steps} steps x batch {b.cfg.recovery.batch_size}", fontsize=9)
    ax.legend(fontsize=8)
    save(fig, report.png)
    report.add_results(rows)
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = parser(__doc__)
    a = parse(p, argv)
    sparsities = SPARSITIES[:1] if a.quick else SPARSITIES

    def model(b: Bench, report: Report) -> list[dict[str, Any]]:
        report.setup(
            b,
            **{
                "fine-tuning": f"cross-entropy on the real training set, same steps, batch size, Adam lr and "
                f"cosine schedule as FR, BN statistics frozen like FR, batches drawn with seed {FT_SEED}",
                "sparsities": f"{list(sparsities)}, uniform over every Conv/Linear layer, fp32 weights",
            },
        )
        return run_model(b, sparsities, report)

    return each_model(a, "fr_vs_finetune", "FR on synthetic data vs fine-tuning on real data: {name}", model)


if __name__ == "__main__":
    main()
