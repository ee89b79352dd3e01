"""The reads that keep a big study usable (search/_optuna.py, search/_report.py) return what Optuna's own do."""

from __future__ import annotations

import math
import random

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from search._optuna import fast_reads, read_trials, trial_count, trial_summaries
from search._report import front
from storage import open_storage

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def _study(tmp_path) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    """Trials of every kind: states, inf and nan-free values, params of three distributions, attributes,
    named and listed constraints, intermediate values; and a second study in the same file."""
    st = open_storage(f"sqlite:///{tmp_path / 'r.db'}", heartbeat_interval=None)
    study = optuna.create_study(study_name="r", storage=st.optuna, directions=["minimize", "minimize"])
    other = optuna.create_study(study_name="other", storage=st.optuna)
    other.add_trial(create_trial(value=1.0))
    rng = random.Random(0)
    dists = {
        "s": FloatDistribution(0, 0.9, step=0.05), "b": IntDistribution(2, 8), "r": CategoricalDistribution(["a", "b"])
    }
    for i in range(40):
        state = [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING][i % 3]
        params = {"s": rng.choice([0.0, 0.45, 0.9]), "b": rng.randint(2, 8), "r": rng.choice(["a", "b"])}
        values = [rng.random(), math.inf if i == 3 else rng.random() * 100] if state == TrialState.COMPLETE else None
        system = {"constraints": [rng.uniform(-1, 1)]} if i % 4 == 0 else {"constraints:min_ratio": rng.uniform(-1, 1)}
        study.add_trial(
            create_trial(
                state=state, params=params, distributions=dists, values=values,
                user_attrs={"size_bits": rng.randint(1, 10**6), "policy": "{}" * i, "worker": f"w{i % 3}"},
                system_attrs=system, intermediate_values={0: rng.random(), 5: math.inf} if i % 5 == 0 else None,
            )  # fmt: skip
        )
    return study, st.optuna


def test_read_trials_is_get_all_trials(tmp_path) -> None:
    study, rdb = _study(tmp_path)
    sid = rdb.get_study_id_from_name("r")
    for states in (None, (TrialState.COMPLETE,), (TrialState.WAITING, TrialState.FAIL)):
        mine, theirs = read_trials(rdb, sid, states), rdb.get_all_trials(sid, deepcopy=False, states=states)
        assert [t.__dict__ for t in mine] == [t.__dict__ for t in theirs] and mine
    assert [t.__dict__ for t in fast_reads(rdb).get_all_trials(sid)] == [t.__dict__ for t in study.trials]


def test_summaries_and_count_agree_with_whole_trials(tmp_path) -> None:
    study, _ = _study(tmp_path)
    summaries = trial_summaries(study, ("size_bits", "worker"))
    whole = study.get_trials(deepcopy=False)
    assert trial_count(study) == len(whole) == len(summaries) == 40
    for s, t in zip(summaries, whole, strict=True):
        assert (s.trial_id, s.number, s.state) == (t._trial_id, t.number, t.state)
        assert s.values == tuple(t.values or ()) and s.constraints == t.constraints
        assert s.user_attrs == {k: t.user_attrs[k] for k in ("size_bits", "worker")}


@pytest.mark.parametrize("dims", [2, 3])
def test_front_is_what_comparing_every_pair_finds(dims) -> None:
    rng = random.Random(dims)
    points = [tuple(float(rng.randint(0, 30)) for _ in range(dims)) for _ in range(3000)]  # many ties
    points += points[:50]  # and duplicates

    def beats(a, b) -> bool:
        return a != b and all(x <= y for x, y in zip(a, b, strict=True))

    expected = sorted(i for i, p in enumerate(points) if not any(beats(q, p) for q in points))
    assert sorted(front(list(range(len(points))), lambda i: points[i])) == expected and len(expected) > 1
