"""What frandi stores on a trial is read back as one typed record: a round trip, and trials stored long ago."""

from __future__ import annotations

import optuna

from frandi_core import LayerSetting, Policy
from search import TrialRecord

POLICY = Policy.from_dict({"conv": LayerSetting(0.5, 4, 8), "fc": LayerSetting(0.0, 8)})


def stored(attrs: dict) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(value=0.25, user_attrs=attrs)


def test_a_record_survives_the_round_trip_through_a_trial() -> None:
    record = TrialRecord(POLICY, 0.25, 0.5, 1234.0, 8.5, 0.4, kept="compressed", bops=1e9, latency_ms=1.5,
                         seconds={"total": 2.0}, threads=2, worker="host:1:cpu", baseline=True)  # fmt: skip
    assert TrialRecord.from_trial(stored(record.to_attrs())) == record


def test_trials_stored_before_a_measurement_existed_read_with_what_they_meant() -> None:
    """No kept (FR's weights were always kept), no BOPs, no latency, the time as "seconds_total"."""
    old = {"policy": POLICY.to_json(), "od_before": 0.5, "size_bits": 1000, "ratio": 4.0, "density": 0.5,
           "seconds_total": 3.0}  # fmt: skip
    r = TrialRecord.from_trial(stored(old))
    assert (r.kept, r.bops, r.latency_ms, r.seconds, r.threads, r.baseline) == ("recovered", None, None,
                                                                                 {"total": 3.0}, None, False)
    assert r.od == 0.25 and r.policy == POLICY  # OD from the trial's value when it stored none of its own
