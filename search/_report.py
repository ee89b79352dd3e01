"""Reading a study back: the Pareto front of (OD, size[, BOPs]), status counts, rows for tables, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from frandi_core import Policy

from . import _optuna
from ._optuna import TrialSummary
from ._records import BOPS, LATENCY_MS, PACKED, SECONDS, SIZE_BITS, WORKER, TrialRecord
from ._study import METRICS

T = TypeVar("T")

def feasible(t: FrozenTrial) -> bool:
    """Meets every Optuna constraint of the trial (min_ratio - ratio <= 0, bops over max_bops <= 0); trials
    without one are feasible."""
    return all(v <= 0 for v in t.constraints.values())


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete, feasible trials that no other trial beats on OD, size and (in a study with such objectives)
    bit operations and latency; sorted by size. The front is found on a summary of each trial; only its trials
    are read whole."""
    names = study.metric_names or []
    extra = [attr for metric, attr in (("bops", BOPS), ("latency", LATENCY_MS)) if METRICS[metric] in names]

    def key(t: TrialSummary) -> tuple[float, ...]:
        return (t.values[0], float(t.user_attrs[SIZE_BITS]), *(float(t.user_attrs[a]) for a in extra))

    trials = [
        t
        for t in _optuna.trial_summaries(study, (SIZE_BITS, BOPS, LATENCY_MS))
        if t.state == TrialState.COMPLETE and all(v <= 0 for v in t.constraints.values())
    ]
    storage = _optuna.study_storage(study)
    return [storage.get_trial(t.trial_id) for t in sorted(front(trials, key), key=lambda t: (*key(t)[1::-1], t.number))]


def front(items: list[T], key: Callable[[T], tuple[float, ...]]) -> list[T]:
    """The items no other item beats (<= on every objective of ``key``, < on one); equal ones are all kept.

    In order of ``key``, an item can only be beaten by one before it, and if one is, one on the front is: so each
    is compared with the front so far, not with every item (10,000 trials: a tenth of a second).
    """
    kept: list[tuple[tuple[float, ...], T]] = []
    for k, item in sorted(((key(i), i) for i in items), key=lambda ki: ki[0]):
        if not any(f != k and all(a <= b for a, b in zip(f, k, strict=True)) for f, _ in kept):
            kept.append((k, item))
    return [item for _, item in kept]


def bits_summary(policy: Policy, activations: bool = False) -> str:
    """The bit-widths a policy uses (weights, or input activations), e.g. '4/8/fp32'."""
    used = sorted({(s.act_bits if activations else s.bits) or 32 for _, s in policy.layers})
    return "/".join("fp32" if b == 32 else str(b) for b in used)


def row(t: FrozenTrial, packed_bytes: int | None = None) -> dict[str, Any]:
    """One trial as a table row; ``packed_kib`` is the real size of its packed export, if it was exported."""
    r = TrialRecord.from_trial(t)
    return {
        "trial": t.number,
        "od": round(t.values[0], 5),
        "od_before": round(r.od_before, 5),
        "kept": r.kept,
        "size_kib": round(r.size_bits / 8192, 2),
        "packed_kib": None if packed_bytes is None else round(packed_bytes / 1024, 2),
        "ratio": round(r.ratio, 2),
        "density": round(r.density, 3),
        "bits": bits_summary(r.policy),
        "act_bits": bits_summary(r.policy, activations=True),
        "gbops": None if r.bops is None else round(r.bops / 1e9, 4),
        **({"latency_ms": round(r.latency_ms, 3)} if r.latency_ms is not None else {}),
        "baseline": r.baseline,
    }


def front_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Rows of the Pareto front, with the real packed size of the trials that were exported."""
    packed = study.user_attrs.get(PACKED, {})
    return [row(t, packed.get(str(t.number))) for t in pareto_trials(study)]


def format_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        if rows:
            w = csv.DictWriter(buf, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return buf.getvalue().rstrip("\n")
    if not rows:
        return "(no finished trials yet)"
    cols = list(rows[0])
    cells = [["-" if r[c] is None else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(x.rjust(w) for x, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def status(study: optuna.Study, n_trials: int, to_start: int = 0, stale: int = 0) -> dict[str, Any]:
    """Counts per state, trials still to start, best feasible OD, mean trial time, distinct workers.

    ``stale`` RUNNING trials (no heartbeat within the grace period: their worker died) are counted apart from
    running ones; the next worker to start fails and retries them.
    """
    trials = _optuna.trial_summaries(study, (SECONDS, WORKER))
    by_state = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    by_state["running"] -= stale
    by_state["stale"] = stale
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    feasible_ones = (t for t in complete if all(v <= 0 for v in t.constraints.values()))
    best = min(feasible_ones, key=lambda t: t.values[0], default=None)
    seconds = [float(t.user_attrs.get(SECONDS, {}).get("total", 0)) for t in complete]
    return {
        "study": study.study_name,
        "n_trials": n_trials,
        **by_state,
        "to_start": to_start,
        "best_od": round(best.values[0], 5) if best else None,
        "best_trial": best.number if best else None,
        "mean_trial_seconds": round(sum(seconds) / len(seconds), 3) if seconds else None,
        "workers_seen": len({t.user_attrs.get(WORKER) for t in complete}),
    }
