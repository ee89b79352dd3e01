"""Data-free channel pruning (``[space] channels``): real accuracy against MACs after Feature Regression.

Every prunable group of the model loses the same fraction of its output channels, the fraction that gives
``--factors`` times fewer MACs (bisection on the pruned student); weights stay fp32 unless ``--bits``. Columns:
no recovery; FR on the kept channels of every feature layer (what a trial does: the teacher's features restricted
to the channels the student kept); FR on the output only (what is left where shapes must match the teacher's:
every block's output channels are pruned); and, for scale, fine-tuning on the real labeled data with FR's budget.
Goal (issue 22): the Fashion-MNIST ResNet within 1 point of the original at 1.5x fewer MACs, within 3 at 2x.

python -m studies.experiments.channels --models resnet_fashion
python -m studies.experiments.channels --quick     # digits, 3 steps (smoke test)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from frandi_core import (
    OUTPUT,
    feature_regression_,
    layer_macs,
    model_size,
    teacher_targets,
)

from ._common import Bench, Report, channel_policy, each_model, fewer_macs, figure, finish, parse, parser

FACTORS = (1.25, 1.5, 2.0, 3.0)
FT_SEED = 0


def output_only(b: Bench, policy: Any) -> Any:
    """Compress, then FR on the model's output alone (no feature layer), the study's other settings."""
    student = b.compressed(policy)
    for p in student.parameters():
        p.requires_grad_(True)
    targets = teacher_targets(b.teacher, b.runner.targets.inputs, [OUTPUT])
    feature_regression_(student, targets, b.cfg.recovery)
    return student


def run_model(b: Bench, factors: Sequence[float], bits: int | None, report: Report) -> list[dict[str, Any]]:
    shape = b.cfg.model.input_shape
    full = sum(layer_macs(b.teacher, shape).values())
    rows = []
    for factor in factors:
        fraction, _ = fewer_macs(b.teacher, shape, factor)
        policy = channel_policy(b.teacher, shape, fraction, bits, None)
        fr, result = b.recovered(policy)
        row: dict[str, Any] = {
            "model": b.name,
            "target": factor,
            "channels": fraction,
            "fewer_macs": round(full / sum(layer_macs(fr, shape).values()), 3),
            "ratio": round(result.ratio, 2),
            "original": round(b.original, 2),
            "no_recovery": round(b.accuracy(b.compressed(policy)), 2),
            "fr_kept_channels": round(b.accuracy(fr), 2),
            "fr_output_only": round(b.accuracy(output_only(b, policy)), 2),
            "finetune_real": round(b.accuracy(b.finetuned(policy, seed=FT_SEED)), 2),
            "od": round(result.od, 4),
        }
        row["fr_minus_original"] = round(row["fr_kept_channels"] - row["original"], 2)
        assert abs(result.size_bits - model_size(fr, policy, original=b.teacher).bits) == 0
        rows.append(row)
        print(f"[{b.name}] {row}", flush=True)
    fig, axes = figure(1, width=5.0)
    ax = axes[0]
    for key, label in (("no_recovery", "no recovery"), ("fr_output_only", "FR, output only"),
                       ("fr_kept_channels", "FR, kept channels"), ("finetune_real", "fine-tuned, real data")):
        ax.plot([r["fewer_macs"] for r in rows], [r[key] for r in rows], "o-", label=label)
    ax.axhline(b.original, ls="--", c="gray", lw=1, label="original")
    ax.set_xlabel("times fewer MACs")
    ax.set_ylabel("real test accuracy (%)")
    return finish(report, fig, ax, f"{b.name}: uniform channel pruning", rows)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = parser(__doc__)
    p.add_argument("--factors", type=float, nargs="+", default=list(FACTORS), help="times fewer MACs to prune to")
    p.add_argument("--bits", type=int, help="weight bits on every layer (default: fp32)")
    a = parse(p, argv)
    factors = a.factors[:1] if a.quick else a.factors

    def model(b: Bench, report: Report) -> list[dict[str, Any]]:
        report.setup(
            b,
            pruning=f"uniform channel pruning (every prunable group the same fraction), weights "
            f"{'fp32' if a.bits is None else f'{a.bits}-bit'}",
            **{"fine-tuning": f"as FR's budget, real labeled training data, cross-entropy, seed {FT_SEED}"},
        )
        return run_model(b, factors, a.bits, report)

    return each_model(a, "channels", "Data-free channel pruning: {name}", model)


if __name__ == "__main__":
    main()
