"""bench_peers: without MCT it says so in one line and exits 2; our side runs alone (--no-mct); with MCT installed
(its own venv), the TPC quantizes the network input and the logits at the activation bits."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import _mct
from benchmarks.bench_peers import main, setting

ROOT = Path(__file__).resolve().parents[2]
HAVE_MCT = importlib.util.find_spec("model_compression_toolkit") is not None


def test_missing_mct_is_one_line_naming_the_install(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(SystemExit) as e:
        main(["--models", "resnet_fashion"])
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "not installed" in err and "pip install -c benchmarks/constraints-peers.txt -e '.[peers]'" in err
    # what the line names exists: the pin file (MCT at the extra's version) and the extra
    pins = (ROOT / "benchmarks" / "constraints-peers.txt").read_text()
    assert f"model_compression_toolkit=={_mct.MCT_VERSION}" in pins.replace("-", "_")
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["peers"]
    assert extra == [f"model-compression-toolkit=={_mct.MCT_VERSION}"]


@pytest.mark.skipif(HAVE_MCT, reason="MCT is installed here")
def test_command_without_mct_exits_2() -> None:
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_peers"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "constraints-peers.txt" in r.stderr


def test_setting_parses_and_refuses() -> None:
    assert setting("W4A8") == (4, 8) and setting("w2a8") == (2, 8)
    with pytest.raises(Exception, match="not a setting"):
        setting("4/8")


def test_quick_our_side_alone(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    rows = main(["--quick", "--no-mct", "--threads", "1", "--out", str(tmp_path),
                 "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}"])
    assert [(r["setting"], r["first/last"], r["method"]) for r in rows] == [
        ("W4A4", "W4A4", "ours (uniform, FR)"),
        ("W4A4", "W8A8", "ours (uniform, FR)"),
        ("1/8 weight bytes, A8", "-", "ours (allocated knapsack, FR)"),
    ]
    assert all(0 <= r["accuracy"] <= 100 and r["quantize s"] >= 0 for r in rows)
    assert [r.get("input_bits") for r in rows[:2]] == [4, 8]  # every layer at A4: the image itself at 4 bits
    mp = rows[2]
    assert mp["kernel_bytes"] <= mp["budget_bytes"]  # our pick fits the budget by MCT's count too
    assert set(mp["weight_bits"].split("/")) <= {"2", "3", "4", "8"}
    md = (tmp_path / "bench_peers_digits.md").read_text()
    assert "python -m benchmarks.bench_peers --quick --no-mct" in md and "| ours |" in md
    saved = json.loads((tmp_path / "bench_peers_digits.json").read_text())
    assert saved["rows"] == rows and "mct" not in saved["data"] and "--no-mct" in saved["command"]


@pytest.mark.skipif(not HAVE_MCT, reason="needs MCT (.venv-peers)")
def test_mct_quantizes_input_and_logits_at_the_activation_bits() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    model.eval()
    q = _mct.ptq(model, torch.randn(64, 1, 8, 8), 4, 4)
    held = _mct.quantizers(q)
    assert held["input"] == 4  # the network input
    assert list(held["activations"].values())[-1] == 4  # the logits
    assert set(held["weights"].values()) == {4}  # first and last layers' kernels too
    assert _mct.kernel_bytes(q) == (4 * 9 + 4 * 36 * 3) * 4 / 8
