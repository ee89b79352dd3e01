"""Synthetic inputs kept inside the model's input range (`[synthetic] input_range`) against unbounded inversion:
uniform W/A policies recovered exactly as a trial is, with the first and last layers at W8A8 (the default space)
and with every layer at the named bits; real test accuracy and the label-free OD.

python -m studies.experiments.input_range --threads 1
python -m studies.experiments.input_range --quick            # digits, a smoke test
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from search import open_for, replace

from ._common import Bench, Report, parse, parser, study_config, uniform_wa

SETTINGS = ((8, 8), (4, 8), (2, 8), (4, 4), (3, 4))  # (weight bits, activation bits)


def rows_for(b: Bench, label: str, settings: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    rows = []
    for edges in (True, False):
        for w, a in settings:
            student, r = b.recovered(uniform_wa(b.teacher, w, a, edges=edges))
            rows.append({"model": b.name, "policy": f"W{w}A{a}", "first/last": "W8A8" if edges else f"W{w}A{a}",
                         "synthetic inputs": label, "od": round(r.od, 4), "accuracy": round(b.accuracy(student), 2),
                         "original": round(b.original, 2)})  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse(parser(__doc__), argv)
    settings = ((8, 8), (4, 4)) if args.quick else SETTINGS
    rows: list[dict[str, Any]] = []
    for name in args.models:
        cfg = study_config(name, quick=args.quick, steps=args.steps)
        if cfg.synthetic.input_range is None:
            raise SystemExit(f"{name}: its study file sets no [synthetic] input_range to compare with")
        report = Report("input_range", name + args.suffix, f"Synthetic inputs kept in the input range ({name})",
                        Path(args.out), args.argv)  # fmt: skip
        model_rows = []
        with open_for(cfg, args.storage) as st:
            for label, c in (("unbounded", replace(cfg, "synthetic", input_range=None)),
                             (f"in {list(cfg.synthetic.input_range)}", cfg)):  # fmt: skip
                b = Bench(name, st, c, root=args.root, limit=args.limit)
                model_rows += rows_for(b, label, settings)
            report.setup(b)  # the study file's settings, its input range included
        report.add_results(model_rows)
        report.write()
        rows += model_rows
    return rows


if __name__ == "__main__":
    main()
