"""Never worse than no recovery: a trial keeps the weights before FR when FR raises the held-out OD."""

from __future__ import annotations

from pathlib import Path

from frandi_core import Policy, output_discrepancy
from search import TrialRunner, load_config, open_for, open_study, replace
from tests.tiny_study import make_weights, study_text


def _runner(tmp_path: Path, lr: float) -> TrialRunner:
    make_weights(tmp_path / "tiny.pt")
    p = tmp_path / "keep.toml"
    p.write_text(study_text(name="keep", url="sqlite:///keep.db", steps=20, lr=lr))
    cfg = load_config(p)
    with open_for(cfg) as st:
        return TrialRunner(cfg, st)


def test_fr_that_raises_od_is_dropped_and_the_lower_od_kept(tmp_path: Path) -> None:
    runner = _runner(tmp_path, lr=0.5)  # a learning rate that wrecks an 8-bit model FR has nothing to fix in
    policy = Policy.uniform(runner.teacher, 0.0, 8)
    student, r = runner.student(policy)
    assert r.kept == "compressed"
    assert r.od == r.od_before
    assert output_discrepancy(student, runner.heldout, runner.teacher_out) == r.od  # the weights kept are those
    # the same policy and a sane learning rate on a hard policy: FR helps and its weights are kept
    runner.cfg = replace(runner.cfg, "recovery", lr=1e-3, steps=40)
    student, r = runner.student(Policy.uniform(runner.teacher, 0.8, 3))
    assert r.kept == "recovered" and r.od < r.od_before
    assert output_discrepancy(student, runner.heldout, runner.teacher_out) == r.od


def test_the_kept_weights_are_recorded_per_trial(study_file, frandi) -> None:
    assert frandi("search", study_file(n_trials=3), "--no-progress")[0] == 0
    cfg = load_config(study_file(n_trials=3))
    with open_for(cfg) as st:
        trials = open_study(cfg, st).get_trials()
    assert trials and all(t.user_attrs["kept"] in ("recovered", "compressed") for t in trials)
    for t in trials:
        assert t.values[0] <= t.user_attrs["od_before"] + 1e-12
