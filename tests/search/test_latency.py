"""Latency as an objective and a budget: the table, the trials' predictions, the front, the refusals."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from optuna.trial import TrialState

from frandi_core import LatencyTable, LayerSetting, Policy, compressible_layers
from search import ConfigError, TrialRunner, load_config, open_for, open_study

from .test_activations import ACT_SPACE, edit


def latency_study(study_file, n_trials: int, study_keys: str) -> Path:
    """A tiny study searching activation bits, with ``study_keys`` in [study] and a quick [latency] target."""
    path = edit(study_file(n_trials=n_trials), "bits = [4, 8, 32]", ACT_SPACE)
    path = edit(path, "[study]", f"[study]\n{study_keys}")
    path.write_text(path.read_text() + "\n[latency]\nthreads = 1\nbatch = 4\nrepeats = 3\n")
    return path


def test_the_table_predicts_the_fp32_model_and_swaps_in_integer_layers(study_file) -> None:
    cfg = load_config(latency_study(study_file, 2, 'objectives = ["od", "latency"]'))
    with open_for(cfg) as st:
        runner = TrialRunner(cfg, st)
    table = runner.latency
    assert isinstance(table, LatencyTable) and "batch=4" in table.target and "threads=1" in table.target
    layers = [layer.name for layer in compressible_layers(runner.teacher)]
    assert set(table.layers) == set(layers) and table.base_ms > 0
    assert all(fp32 > 0 for fp32, _ in table.layers.values())
    assert table.predict(Policy()) == table.base_ms
    assert table.predict(Policy.uniform(runner.teacher, 0.5, 4, None)) == table.base_ms  # weights only: fp32 kernels
    one = layers[1]
    fp32, integer = table.layers[one]
    only = Policy.from_dict({one: LayerSetting(0.0, 8, 8)})
    assert table.predict(only) == pytest.approx(table.base_ms + integer - fp32)
    assert LatencyTable.from_json(table.to_json()) == table


def test_a_latency_study_records_predictions_and_reports_them(study_file, frandi) -> None:
    path = latency_study(study_file, 4, 'objectives = ["od", "latency"]')
    code, _, err = frandi("search", path, "--no-progress")
    assert code == 0, err
    cfg = load_config(path)
    with open_for(cfg) as st:
        study = open_study(cfg, st)
        trials = study.get_trials(states=(TrialState.COMPLETE,))
        assert study.metric_names == ["OD", "latency_ms"]
        table = TrialRunner(cfg, st).latency  # the stored table: measured once, read by every worker
    assert len(trials) == 4 and table is not None
    for t in trials:
        assert t.values[1] == t.user_attrs["latency_ms"] == pytest.approx(
            table.predict(Policy.from_json(t.user_attrs["policy"])))
    code, out, _ = frandi("pareto", path, "--format", "json")
    rows = json.loads(out)
    assert code == 0 and rows and all("latency_ms" in r for r in rows)


def test_a_latency_budget_is_a_constraint(study_file, frandi) -> None:
    path = latency_study(study_file, 3, 'objectives = ["od", "size"]\nmax_latency_ms = 1e9')
    assert frandi("search", path, "--no-progress")[0] == 0
    cfg = load_config(path)
    with open_for(cfg) as st:
        trials = open_study(cfg, st).get_trials(states=(TrialState.COMPLETE,))
    assert trials and all(t.constraints["max_latency_ms"] <= 0 for t in trials)


@pytest.mark.parametrize(("keys", "match"), [
    ("max_latency_ms = 0", "max_latency_ms must be > 0"),
    ('objectives = ["od", "latency", "latency"]', "is invalid"),
])
def test_bad_latency_settings_are_one_line(study_file, keys: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        load_config(edit(study_file(), "[study]", f"[study]\n{keys}"))
    assert "\n" not in str(e.value)


def test_latency_without_onnxruntime_is_refused_with_one_line(study_file, monkeypatch, frandi) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    path = edit(study_file(), "[study]", '[study]\nobjectives = ["od", "latency"]')
    code, _, err = frandi("search", path, "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "onnxruntime" in err and "frandi[onnx]" in err


def test_export_says_when_layers_asked_to_be_integer_run_in_fp32() -> None:
    """A model torch.fx cannot trace keeps its layers in fp32 in the fast file: frandi export's line says why."""
    from frandi_core import to_onnx
    from search._commands import fusion_line
    from tests.core.test_onnx_fast import untraceable_student

    student, policy, x = untraceable_student()
    line = fusion_line(to_onnx(student, policy, x[:1]), student, policy, fast=True)
    assert "0 of 2" in line and "(2 have quantized weights and inputs)" in line and "could not trace" in line
