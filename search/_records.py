"""The names frandi stores on Optuna trials and studies: written and read through this module, nowhere else.

A trial's facts live in its user attributes (JSON values): who ran it and its policy (set when it starts), how it
was enqueued (baseline, warm start), and its measurements (set when it finishes). ``TrialRecord`` reads them all
back as one typed record, older trials included (their missing attributes get the defaults they meant). The study's
own facts are study user attributes, named by the constants below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from frandi_core import Policy

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from ._trial import TrialResult

# study user attributes
FINGERPRINT = "frandi:fingerprint"  # hash of what decides a trial's result (StudyConfig.fingerprint)
CONFIG = "frandi:config"  # what the fingerprint covers, as data: to say what changed when it differs
BASELINES_ENQUEUED = "frandi:baselines"  # true once the uniform baselines were enqueued (once per study)
WARM_STARTS_ENQUEUED = "frandi:warm_starts"  # true once the warm starts were enqueued (once per study)
WARM_SECONDS = "frandi:warm_start_seconds"  # seconds spent choosing the warm starts
PACKED = "frandi:packed_bytes"  # trial number -> bytes of its last packed export
ACCURACY = "frandi:accuracy"  # JSON: trial number -> {"accuracy", "data", "samples"} (frandi evaluate)
DASHBOARD_ARTIFACTS = "dashboard:artifacts:"  # study system attributes optuna-dashboard lists artifacts from

# trial user attributes
POLICY = "policy"
WORKER = "worker"
BASELINE = "baseline"  # enqueued as a uniform baseline
WARM_START = "warm_start"  # enqueued as a warm start of the allocated space
FAIL_REASON = "fail_reason"
POLICY_KEY = "policy_key"  # the policy's digest under the study file's fingerprint: one measurement per key
REUSED = "reused_from"  # the number of the earlier trial whose measurement this one reports
SIZE_BITS = "size_bits"
BOPS = "bops"
LATENCY_MS = "latency_ms"
SECONDS = "seconds"


def start_attrs(worker: str, policy: Policy, policy_key: str | None = None) -> dict[str, Any]:
    """What a trial stores when it starts: the worker running it, the policy it sampled and that policy's key."""
    return {WORKER: worker, POLICY: policy.to_json()} | ({POLICY_KEY: policy_key} if policy_key else {})


def result_attrs(r: TrialResult, *, threads: int) -> dict[str, Any]:
    """What a finished trial stores: its measurements (the first objective's value is Optuna's own), and the torch
    threads it ran with (CPU results move with the thread count; export reuses it)."""
    seconds = {k: round(v, 4) for k, v in r.seconds.items()}
    return _measured(r.od, r.od_before, r.kept, r.size_bits, r.ratio, r.density, r.bops, r.latency_ms, seconds, threads)


def _measured(
    od: float, od_before: float, kept: str, size_bits: float, ratio: float, density: float, bops: float | None,
    latency_ms: float | None, seconds: dict[str, float], threads: int | None,
) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "od": od, "od_before": od_before, "kept": kept, SIZE_BITS: size_bits, "ratio": ratio, "density": density,
        BOPS: bops, SECONDS: seconds, "threads": threads,
    }  # fmt: skip
    if latency_ms is not None:
        attrs[LATENCY_MS] = latency_ms
    return attrs


def _seconds(attrs: dict[str, Any]) -> dict[str, float]:
    """Where a trial's time went; the oldest studies stored only "seconds_total"."""
    if isinstance(attrs.get(SECONDS), dict):
        return {k: float(v) for k, v in attrs[SECONDS].items()}
    return {"total": float(attrs["seconds_total"])} if "seconds_total" in attrs else {}


@dataclass(frozen=True)
class TrialRecord:
    """A finished trial as stored: its policy, measurements and how it came to run."""

    policy: Policy
    od: float
    od_before: float
    size_bits: float
    ratio: float
    density: float
    kept: str = "recovered"  # "compressed": FR raised the score, so the weights before FR were kept
    bops: float | None = None  # trials run before BOPs were recorded have none
    latency_ms: float | None = None  # only studies that predict latency record it
    seconds: dict[str, float] = field(default_factory=dict)
    threads: int | None = None
    worker: str | None = None
    baseline: bool = False
    warm_start: bool = False
    policy_key: str | None = None  # trials run before policies were keyed have none
    reused_from: int | None = None  # set when the trial reported an earlier trial's measurement

    def to_attrs(self) -> dict[str, Any]:
        """The record as a trial's user attributes, as the worker writes them: ``from_trial``'s inverse."""
        attrs = start_attrs(self.worker or "", self.policy, self.policy_key) | _measured(
            self.od, self.od_before, self.kept, self.size_bits, self.ratio, self.density, self.bops, self.latency_ms,
            dict(self.seconds), self.threads,
        )
        if self.baseline:
            attrs[BASELINE] = True
        if self.warm_start:
            attrs[WARM_START] = True
        if self.reused_from is not None:
            attrs[REUSED] = self.reused_from
        return attrs

    @classmethod
    def from_trial(cls, t: FrozenTrial) -> TrialRecord:
        a = t.user_attrs
        return cls(
            policy=Policy.from_json(a[POLICY]),
            od=float(a.get("od", t.values[0] if t.values else float("nan"))),
            od_before=float(a["od_before"]),
            size_bits=float(a[SIZE_BITS]),
            ratio=float(a["ratio"]),
            density=float(a["density"]),
            kept=str(a.get("kept", "recovered")),
            bops=None if a.get(BOPS) is None else float(a[BOPS]),
            latency_ms=None if a.get(LATENCY_MS) is None else float(a[LATENCY_MS]),
            seconds=_seconds(a),
            threads=None if a.get("threads") is None else int(a["threads"]),
            worker=a.get(WORKER),
            baseline=bool(a.get(BASELINE, False)),
            warm_start=bool(a.get(WARM_START, False)),
            policy_key=a.get(POLICY_KEY),
            reused_from=None if a.get(REUSED) is None else int(a[REUSED]),
        )
