"""No policy paid twice: a trial whose policy (same digest, same study file) was already measured reports that
trial's result instead of running FR again."""

from __future__ import annotations

from pathlib import Path

import pytest

from frandi_core import Policy
from search import TrialRunner
from tests.tiny_study import make_weights, stored_trials, study_text


def _study(tmp_path: Path, n_trials: int) -> Path:
    """An allocated space of 3 policies (uniform rule, sparsity 0, 0.1 or 0.2, W8): most trials repeat one."""
    make_weights(tmp_path / "tiny.pt")
    p = tmp_path / "reuse.toml"
    text = study_text(name="reuse", url="sqlite:///reuse.db", sampler="random", n_trials=n_trials, bits="[8]",
                      sparsity="[0.0, 0.2]")
    p.write_text(text.replace("[recovery]", 'mode = "allocated"\nrules = ["uniform"]\nwarm_starts = 0\n\n[recovery]'))
    return p


def test_a_policy_measured_before_is_reused_not_recovered_again(
    tmp_path: Path, frandi, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluated: list[Policy] = []
    real = TrialRunner.evaluate

    def counting(self: TrialRunner, policy: Policy):  # type: ignore[no-untyped-def]
        evaluated.append(policy)
        return real(self, policy)

    monkeypatch.setattr(TrialRunner, "evaluate", counting)
    p = _study(tmp_path, 8)
    code, _, err = frandi("search", p, "--no-progress")
    assert code == 0, err
    trials = stored_trials(p)
    assert len(trials) == 8
    keys = {t.user_attrs["policy_key"] for t in trials}
    assert len(evaluated) == len(set(evaluated)) == len(keys) <= 3  # each policy measured once
    by_number = {t.number: t for t in trials}
    reused = [t for t in trials if "reused_from" in t.user_attrs]
    assert len(reused) == 8 - len(keys) >= 5
    for t in reused:
        source = by_number[t.user_attrs["reused_from"]]
        assert source.number < t.number and "reused_from" not in source.user_attrs
        assert t.user_attrs["policy_key"] == source.user_attrs["policy_key"] and t.values == source.values
        assert t.user_attrs["od"] == source.user_attrs["od"] and t.user_attrs["bops"] == source.user_attrs["bops"]
        assert t.user_attrs["seconds"]["total"] == 0.0 < source.user_attrs["seconds"]["total"]


def test_float_noise_in_a_sparsity_makes_no_new_policy() -> None:
    a = Policy.from_dict({"x": {"sparsity": 0.85, "bits": 4}})
    b = Policy.from_dict({"x": {"sparsity": 0.8500000000000001, "bits": 4}})
    c = Policy.from_dict({"x": {"sparsity": 0.85, "bits": 4, "act_bits": 8}})
    assert a != b and a.digest() == b.digest() != c.digest()
    assert Policy.from_dict({"x": {"sparsity": 0.851, "bits": 4}}).digest() != a.digest()
