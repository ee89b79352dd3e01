"""Where weight channels are clipped: `[recovery] weight_clip = "max"` (each channel's largest magnitude) against
`"mse"` (the fraction of it with the least squared error), on uniform W/A policies recovered exactly as a trial is,
with the first and last layers at W8A8 (the default space) and with every layer at the named bits; real test
accuracy and the label-free OD.

python -m studies.experiments.weight_clip --models resnet_fashion --threads 1
python -m studies.experiments.weight_clip --quick            # digits, a smoke test
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from frandi_core import WEIGHT_CLIPS
from search import replace

from ._common import Bench, Report, each_model, parse, parser, uniform_wa

SETTINGS = ((2, 8), (3, 8), (4, 8), (4, 4))  # (weight bits, activation bits)


def evaluate(b: Bench, w: int, a: int, edges: bool) -> list[dict[str, Any]]:
    base = b.runner.cfg
    rows = []
    for clip in WEIGHT_CLIPS:
        b.runner.cfg = replace(base, "recovery", weight_clip=clip)
        try:
            student, r = b.recovered(uniform_wa(b.teacher, w, a, edges=edges))
        finally:
            b.runner.cfg = base
        rows.append({"model": b.name, "policy": f"W{w}A{a}", "first/last": "W8A8" if edges else f"W{w}A{a}",
                     "weight_clip": clip, "od": round(r.od, 4), "accuracy": round(b.accuracy(student), 2),
                     "original": round(b.original, 2)})  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse(parser(__doc__), argv)
    settings = ((2, 8),) if args.quick else SETTINGS

    def model(b: Bench, report: Report) -> list[dict[str, Any]]:
        report.setup(b)
        rows = [row for edges in (True, False) for w, a in settings for row in evaluate(b, w, a, edges)]
        report.add_results(rows)
        return rows

    return each_model(args, "weight_clip", "Weight clipping: max against mse ({name})", model)


if __name__ == "__main__":
    main()
