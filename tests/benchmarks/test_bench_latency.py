"""Smoke test of benchmarks.bench_latency: the digits model, one frandi policy, two runs per cell (not a timing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_latency


def test_rows_and_speed_ups_against_the_torch_export(tmp_path: Path) -> None:
    rows = bench_latency.main([
        "--models", "digits", "--policies", "W8A8", "--batches", "1", "2", "--threads", "1", "--budget", "0",
        "--min-repeats", "2", "--loads", "1", "--calib", "4", "--torch-threads", "1", "--out", str(tmp_path),
    ])  # fmt: skip
    assert [r["file"] for r in rows] == [bench_latency.BASELINE, bench_latency.REFERENCE, "frandi W8A8"]
    base, ort_int8, frandi = rows
    for r in rows:
        for cell in ("b1 t1", "b2 t1"):
            assert r[f"{cell} n"] >= 2
            assert r[f"{cell} x"] == pytest.approx(base[f"{cell} ms"] / r[f"{cell} ms"])  # over row 1, same cell
        assert r["bytes"] > 0 and r["load_ms"] > 0
    assert base["b1 t1 x"] == base["b2 t1 x"] == 1.0 and base["rel_err"] == 0.0
    assert base["integer"] == 0 and base["convs"] == 10  # 9 convolutions and the Linear layer, all fp32
    assert ort_int8["integer"] == ort_int8["convs"] == 10  # onnxruntime fuses its own QDQ file
    assert frandi["convs"] == 10 and 0 < frandi["rel_err"] < 0.5
    assert base["packed_bytes"] is None and 0 < frandi["packed_bytes"] < base["bytes"]
    md = (tmp_path / "bench_latency.md").read_text()
    for r in rows:
        assert f"| digits | {r['file']} | {bench_latency.fmt_ms(r['b1 t1 ms'])} | {r['b1 t1 x']:.2f}x |" in md
    saved = json.loads((tmp_path / "bench_latency.json").read_text())
    assert [r["file"] for r in saved["rows"]] == [r["file"] for r in rows] and saved["wall_seconds"] > 0
