"""Smoke tests: each experiment runs on a tiny setting and writes its CSV, PNG and markdown; frandi evaluate."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from studies.experiments import (
    act_quantization,
    channels,
    fast_onnx,
    fr_vs_finetune,
    input_range,
    od_accuracy,
    pruning,
    quantization,
    search_pays,
    weight_clip,
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


def test_weight_clip(quick: Callable[..., list], tmp_path: Path) -> None:
    rows = quick(weight_clip)
    assert [(r["first/last"], r["weight_clip"]) for r in rows] == [("W8A8", "max"), ("W8A8", "mse"),
                                                                   ("W2A8", "max"), ("W2A8", "mse")]
    assert all(0 <= r["accuracy"] <= 100 and r["od"] >= 0 for r in rows)
    assert (tmp_path / "weight_clip_digits.md").is_file()


def test_input_range(quick: Callable[..., list], tmp_path: Path) -> None:
    rows = quick(input_range)
    assert [(r["synthetic inputs"], r["first/last"]) for r in rows] == [
        ("unbounded", "W8A8"), ("unbounded", "W8A8"), ("unbounded", "W8A8"), ("unbounded", "W4A4"),
        ("in [-0.8037, 1.8279]", "W8A8"), ("in [-0.8037, 1.8279]", "W8A8"), ("in [-0.8037, 1.8279]", "W8A8"),
        ("in [-0.8037, 1.8279]", "W4A4")]  # fmt: skip
    assert all(0 <= r["accuracy"] <= 100 and r["od"] >= 0 for r in rows)
    assert "kept in [-0.8037, 1.8279]" in (tmp_path / "input_range_digits.md").read_text()
