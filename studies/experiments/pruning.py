"""Data-free pruning (paper table 1): unstructured magnitude pruning at compression ratios 2 and 5.

The uniform sparsity giving each ratio is found with model_size(...).ratio (fp32 weights plus a 1-bit
mask per weight). Rows: original model / pruned with no recovery / fine-tuned on the real labeled
training set / recovered with FR on synthetic data only. Goal (paper): FR within 1 point at ratio 2.

python -m studies.experiments.pruning            # Fashion-MNIST ResNet and separable net
python -m studies.experiments.pruning --quick    # digits, ratio 2 only, 3 steps (smoke test)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from frandi_core import model_size

from ._common import Bench, Report, each_model, figure, finish, parse, parser

RATIOS = (2.0, 5.0)
FT_SEED = 0
METHODS = (
    ("no_recovery", "no recovery"),
    ("finetune_real", "fine-tuned, real data"),
    ("fr_synthetic", "FR, synthetic data"),
)


def run_model(b: Bench, ratios: Sequence[float], report: Report) -> list[dict[str, Any]]:
    rows = []
    for target in ratios:
        policy = b.for_ratio(target)
        sparsity = policy.layers[0][1].sparsity
        fr, r = b.recovered(policy)
        row: dict[str, Any] = {
            "model": b.name,
            "target_ratio": target,
            "ratio": round(model_size(b.teacher, policy).ratio, 3),
            "sparsity": sparsity,
            "original": round(b.original, 2),
            "no_recovery": round(b.accuracy(b.compressed(policy)), 2),
            "finetune_real": round(b.accuracy(b.finetuned(policy, seed=FT_SEED)), 2),
            "fr_synthetic": round(b.accuracy(fr), 2),
        }
        row["fr_minus_original"] = round(row["fr_synthetic"] - row["original"], 2)
        rows.append(row)
        print(f"[{b.name}] {row}", flush=True)
    fig, axes = figure(1, width=5.0)
    ax = axes[0]
    width = 0.8 / len(METHODS)
    for j, (key, label) in enumerate(METHODS):
        ax.bar([i + j * width for i in range(len(rows))], [r[key] for r in rows], width, label=label)
    ax.axhline(b.original, ls="--", c="gray", lw=1, label="original")
    ax.set_xticks([i + width for i in range(len(rows))], [f"ratio {r['target_ratio']:g}" for r in rows])
    ax.set_ylabel("real test accuracy (%)")
    lows = [min(r[k] for k, _ in METHODS) for r in rows]
    ax.set_ylim(max(0.0, min(lows) - 5), 100)
    return finish(report, fig, ax, f"{b.name}: magnitude pruning", rows)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = parser(__doc__)
    p.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS), help="compression ratios to prune to")
    a = parse(p, argv)
    ratios = RATIOS[:1] if a.quick else a.ratios

    def model(b: Bench, report: Report) -> list[dict[str, Any]]:
        report.setup(
            b,
            pruning="unstructured magnitude pruning, the same sparsity on every Conv/Linear layer, fp32 weights",
            **{
                "fine-tuning": f"as FR's budget (steps, batch, Adam lr, cosine, BN frozen), real labeled "
                f"training data, cross-entropy, seed {FT_SEED}"
            },
        )
        return run_model(b, ratios, report)

    return each_model(a, "pruning", "Data-free pruning: {name}", model)


if __name__ == "__main__":
    main()
