"""Smoke tests: each experiment runs on a tiny setting and writes its CSV, PNG and markdown; frandi evaluate."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch

from search import labeled_data, labeled_set, load_config, open_for, open_study, stored_accuracy
from studies.experiments import (
    act_quantization,
    channels,
    fast_onnx,
    fr_vs_finetune,
    od_accuracy,
    pruning,
    quantization,
    search_pays,
)


def _outputs(out: Path, stem: str) -> list[dict[str, str]]:
    """Check a report's files exist and hold numbers; return its CSV rows."""
    for ext in ("csv", "png", "md", "json"):
        assert (out / f"{stem}.{ext}").stat().st_size > 0, f"{stem}.{ext} missing or empty"
    with open(out / f"{stem}.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows
    md = (out / f"{stem}.md").read_text()
    assert "Wall time" in md and "seed" in md
    assert json.loads((out / f"{stem}.json").read_text())["wall_seconds"] > 0
    return rows


def _accuracies(rows: list[dict[str, str]], *keys: str) -> list[float]:
    values = [float(r[k]) for r in rows for k in keys]
    assert all(0.0 <= v <= 100.0 for v in values)
    return values


@pytest.fixture
def quick(tmp_path: Path, shared_db: str) -> Callable[..., list]:
    def run(module: object) -> list:
        return module.main(["--quick", "--threads", "1", "--out", str(tmp_path), "--storage", shared_db])  # type: ignore[attr-defined]

    return run


def test_od_accuracy(quick: Callable[..., list], tmp_path: Path) -> None:
    rows = quick(od_accuracy)
    csv_rows = _outputs(tmp_path, "od_accuracy_digits")
    assert len(csv_rows) == len(rows) == 4
    _accuracies(csv_rows, "acc_before", "acc_after")
    assert all(0.0 <= float(r["od_after"]) <= 2.0 for r in csv_rows)
    md = (tmp_path / "od_accuracy_digits.md").read_text()
    assert re.search(r"\| after FR \| 4 \| [+-]\d\.\d{3} \| [+-]\d\.\d{3} \|", md), md


def test_fr_vs_finetune(quick: Callable[..., list], tmp_path: Path) -> None:
    quick(fr_vs_finetune)
    rows = _outputs(tmp_path, "fr_vs_finetune_digits")
    _accuracies(rows, "original", "no_recovery", "fr_synthetic", "finetune_real")


def test_pruning_hits_the_ratio(quick: Callable[..., list], tmp_path: Path) -> None:
    quick(pruning)
    rows = _outputs(tmp_path, "pruning_digits")
    assert abs(float(rows[0]["ratio"]) - 2.0) < 0.01
    orig, fr = _accuracies(rows, "original", "fr_synthetic")
    assert math.isclose(float(rows[0]["fr_minus_original"]), fr - orig, abs_tol=0.011)


def test_channel_pruning_hits_the_macs_factor(quick: Callable[..., list], tmp_path: Path) -> None:
    quick(channels)
    rows = _outputs(tmp_path, "channels_digits")
    assert abs(float(rows[0]["fewer_macs"]) - 1.25) < 0.05
    _accuracies(rows, "original", "no_recovery", "fr_kept_channels", "fr_output_only", "finetune_real")


def test_fast_onnx_keeps_the_students_accuracy(quick: Callable[..., list], tmp_path: Path) -> None:
    rows = quick(fast_onnx)
    assert [r["policy"] for r in rows] == ["W8A8", "W4A4"]
    for r in rows:
        assert r["mismatched"] == 0 and abs(r["onnxruntime"] - r["pytorch"]) <= 0.3, r  # one digit image of 360
        assert r["integer_layers"].startswith(tuple(f"{n} of" for n in range(1, 100)))  # integer kernels used
    assert (tmp_path / "fast_onnx_digits.md").is_file()


def test_quantization(quick: Callable[..., list], tmp_path: Path) -> None:
    quick(quantization)
    rows = _outputs(tmp_path, "quantization_digits")
    assert [r["policy"] for r in rows[:2]] == ["uniform W8", "uniform W4"]
    sizes = [float(r["size_kib"]) for r in rows[:2]]
    assert sizes[0] > sizes[1]
    _accuracies(rows, "no_recovery", "fr_synthetic")


def test_act_quantization(quick: Callable[..., list], tmp_path: Path) -> None:
    quick(act_quantization)
    rows = _outputs(tmp_path, "act_quantization_digits")
    uniform = [r for r in rows if not r["role"]]
    assert [r["policy"] for r in uniform] == ["uniform W8A8", "uniform W4A4"]
    assert float(uniform[0]["gbops"]) > float(uniform[1]["gbops"])
    assert [r["role"] for r in rows[len(uniform) :]][-1] == "uniform"  # the budget's uniform policy closes the table
    _accuracies(rows, "no_recovery", "fr", "fr_lsq")


def test_search_pays(quick: Callable[..., list], tmp_path: Path) -> None:
    quick(search_pays)
    rows = _outputs(tmp_path, "search_pays_digits")
    uniform = [r for r in rows if r["policy"].startswith("uniform")]
    searched = [r for r in rows if r["policy"].startswith("search best")]
    assert len(uniform) == 2 and len(searched) == 1
    assert all(float(r["ratio"]) >= 2.99 for r in rows)
    _accuracies(rows, "fr_synthetic")


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


FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist: the files as published


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_preset_matches_the_training_data() -> None:
    """evaluate reads Fashion-MNIST through torchvision transforms; the result must equal the training tensors."""
    ours = labeled_set("fashion", str(FASHION), (1, 28, 28), limit=200)
    theirs = labeled_data("fashion", "test", FASHION)
    assert torch.equal(ours.tensors[1], theirs.tensors[1][:200])
    assert torch.allclose(ours.tensors[0], theirs.tensors[0][:200], atol=1e-5)
