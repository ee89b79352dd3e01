"""[study] score = "od+feature_od": the first objective adds OD on the FR feature layers to OD."""

from __future__ import annotations

from pathlib import Path

from search import load_config, open_for, open_study
from tests.tiny_study import make_weights, study_text


def _study(tmp_path: Path, score: str) -> Path:
    make_weights(tmp_path / "tiny.pt")
    p = tmp_path / "score.toml"
    text = study_text(name="score", url="sqlite:///score.db", n_trials=3, steps=5, iterations=5)
    p.write_text(text.replace("baselines = [0.5]", f'baselines = [0.5]\nscore = "{score}"'))
    return p


def test_the_blended_score_is_the_objective_and_export_reproduces_it(tmp_path: Path, frandi) -> None:
    p = _study(tmp_path, "od+feature_od")
    code, _, err = frandi("search", p, "--no-progress")
    assert code == 0, err
    cfg = load_config(p)
    with open_for(cfg) as st:
        trials = open_study(cfg, st).get_trials()
    assert len(trials) == 3
    for t in trials:
        assert t.values[0] > t.user_attrs["od"] > 0  # OD plus a positive feature discrepancy
    code, out, err = frandi("export", p, "--trial", trials[0].number, "--out", tmp_path / "t.safetensors")
    assert code == 0, err


def test_an_unknown_score_is_one_line_exit_2(tmp_path: Path, frandi) -> None:
    code, _, err = frandi("search", _study(tmp_path, "accuracy"), "--no-progress")
    assert code == 2 and "study.score 'accuracy' is unknown" in err and err.count("\n") == 1
    assert not (tmp_path / "score.db").exists()
