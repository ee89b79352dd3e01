"""`frandi evaluate`: real top-1 accuracy of chosen trials on a labeled held-out set, against their OD.

Optional: the search itself never needs labels. A user who does have a labeled set can check that OD
ranks policies as accuracy does (Spearman and Kendall) and keep each trial's accuracy in the study.
The labeled data and accuracy come from frandi_core.data; correlations are computed by _scoring.py.
"""

from __future__ import annotations

import sys
from typing import Any

from frandi_core.data import accuracy, labeled_set

from ._config import StudyConfig
from ._device import check_device, set_threads
from ._errors import UsageError
from ._open import open_for
from ._records import TrialRecord
from ._report import format_rows
from ._rerun import rerun
from ._scoring import choose_trials, correlations, store_accuracy
from ._study import open_study
from ._trial import TrialRunner

OD_TOLERANCE = 1e-4  # a re-materialized trial whose score moves more than this is reported


def parse_trials(text: str | None) -> list[int] | None:
    """'1,2,3' -> [1, 2, 3]; None or '' -> None (the default set)."""
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--trials must be comma-separated trial numbers, got '{text}'") from None


def evaluate(
    cfg: StudyConfig,
    storage: str | None,
    *,
    data: str,
    root: str | None,
    trials: str | None = None,
    limit: int | None = None,
    mean: str | None = None,
    std: str | None = None,
    device: str = "cpu",
) -> int:
    """Re-materialize each chosen trial (compress + FR), measure real accuracy, store it, print OD vs accuracy."""
    check_device(device)
    numbers = parse_trials(trials)
    labeled = labeled_set(data, root, cfg.model.input_shape, mean=mean, std=std, limit=limit)
    set_threads(cfg.run.threads, 1)
    rows: list[dict[str, Any]] = []
    with open_for(cfg, storage, mode="write") as st:
        study = open_study(cfg, st)
        chosen = choose_trials(study, numbers)
        runner = TrialRunner(cfg, st, device=device)
        teacher_acc = accuracy(runner.teacher, labeled)
        for t in chosen:
            record = TrialRecord.from_trial(t)
            student, r, moved = rerun(runner, t)
            acc = accuracy(student, labeled)
            store_accuracy(study, t.number, {"accuracy": acc, "data": data, "samples": len(labeled)})
            if moved > OD_TOLERANCE:
                print(
                    f"frandi: note: trial {t.number} re-ran to {cfg.study.score} {r.score:.6f}, stored "
                    f"{t.values[0]:.6f}: changed code, torch or machine since it ran; "
                    "the table shows the stored value",
                    file=sys.stderr,
                )
            rows.append(
                {
                    "trial": t.number,
                    "od": round(t.values[0], 5),
                    "ratio": round(record.ratio, 2),
                    "accuracy": round(acc, 2),
                    "baseline": record.baseline,
                }
            )
    print(f"original model: {teacher_acc:.2f}% top-1 on {data} ({len(labeled)} samples)")
    print(format_rows(rows, "table"))
    c = correlations([r["od"] for r in rows], [r["accuracy"] for r in rows])
    if c["spearman"] is None:
        print(f"correlation of OD and accuracy: undefined ({len(rows)} trial(s), need 3 with distinct values)")
    else:
        print(
            f"correlation of OD and accuracy over {len(rows)} trials: Spearman {c['spearman']:+.3f}, "
            f"Kendall {c['kendall']:+.3f} (negative: lower OD, higher accuracy)"
        )
    return 0
