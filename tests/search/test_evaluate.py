"""frandi evaluate: real accuracy of chosen trials on a labeled set, stored in the study, against OD."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from search import load_config, open_for, open_study
from search._scoring import stored_accuracy
from tests.fashion_files import N


def _listing(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_evaluate_stores_accuracy_and_prints_correlations(
    tiny_study: Callable[..., Path], frandi: Callable[..., tuple[int, str, str]]
) -> None:
    study = tiny_study(n_trials=4)
    code, _, err = frandi("search", study, "--no-progress")
    assert code == 0, err
    code, out, err = frandi("evaluate", study, "--data", "digits", "--trials", "0,1,2,3")
    assert code == 0, err
    assert re.search(r"Spearman [+-]\d\.\d{3}, Kendall [+-]\d\.\d{3}", out), out
    cfg = load_config(study)
    with open_for(cfg) as st:
        s = open_study(cfg, st)
        stored = stored_accuracy(s)
        assert "frandi:accuracy" in s.user_attrs  # the stored format: one study attribute
        trials = {t.number: t for t in s.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}
    assert sorted(stored) == [0, 1, 2, 3]
    table = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) == 5 and cells[0].isdigit():
            table[int(cells[0])] = (float(cells[1]), float(cells[3]))
    assert sorted(table) == [0, 1, 2, 3]
    for n, rec in stored.items():
        assert 0.0 <= rec["accuracy"] <= 100.0 and rec["samples"] == 360 and rec["data"] == "digits"
        assert table[n] == (round(trials[n].values[0], 5), round(rec["accuracy"], 2))
    # the sparsest baseline (0.9 everywhere) loses accuracy that the mildest (0.2) keeps
    by_sparsity = {float(t.user_attrs["density"]): stored[n]["accuracy"] for n, t in trials.items()}
    assert by_sparsity[max(by_sparsity)] > by_sparsity[min(by_sparsity)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "mnist"], "unknown"),
        (["--data", "torchvision:NoSuchSet", "--root", "."], "no data set class"),
        (["--data", "fashion"], "needs --root"),
        (["--data", "digits", "--trials", "99"], "does not exist"),
        (["--data", "digits", "--trials", "a,b"], "comma-separated"),
        (["--data", "digits", "--limit", "0"], "--limit"),
    ],
)
def test_evaluate_bad_input(
    tiny_study: Callable[..., Path], frandi: Callable[..., tuple[int, str, str]], args: list[str], message: str
) -> None:
    study = tiny_study(n_trials=1)
    if "--trials" in args:
        assert frandi("search", study, "--no-progress")[0] == 0
    code, _, err = frandi("evaluate", study, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("layout", ["published", "torchvision_layout"])
def test_evaluate_reads_either_layout_and_writes_nothing_there(
    tiny_study: Callable[..., Path], frandi: Callable[..., tuple[int, str, str]], request, layout: str
) -> None:
    root = request.getfixturevalue(layout)
    before = _listing(root)
    root.chmod(0o555)  # read-only, as /usr/share/datasets is (root ignores it: the listing is the check)
    try:
        study = tiny_study(n_trials=1)
        assert frandi("search", study, "--no-progress")[0] == 0
        code, out, err = frandi("evaluate", study, "--data", "fashion", "--root", root)
    finally:
        root.chmod(0o755)
    assert code == 0, err
    assert f"top-1 on fashion ({N} samples)" in out
    assert _listing(root) == before


def test_a_bad_root_is_one_line_and_exit_2(
    tiny_study: Callable[..., Path], frandi: Callable[..., tuple[int, str, str]], published: Path
) -> None:
    for f in published.glob("t10k-*"):
        f.unlink()
    code, _, err = frandi("evaluate", tiny_study(n_trials=1), "--data", "fashion", "--root", published)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(published) in err and "test split" in err
