"""Activation bits and BOPs in a study: keys, fingerprint of old studies, sampling, trials, reports."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import search._compat as compat
from frandi_core import ACT_SIZE_RULE, SIZE_RULE, LayerSetting, Policy, compressible_layers
from search import (
    StudyConfig,
    TrialRunner,
    check_model,
    create_or_resume,
    load_config,
    open_for,
    open_study,
    replace,
)

ACT_SPACE = 'bits = [4, 8, 32]\nact_bits = [4, 8]'
FINGERPRINT = "frandi:fingerprint"  # the study attribute that holds it, as stored
# the keys [space] and [recovery] had before activation bits, BOPs and allocated mode existed
OLD_SPACE_KEYS = ("layers", "fixed", "sparsity", "sparsity_step", "bits", "keep_first_last")
OLD_RECOVERY_KEYS = ("steps", "lr", "batch_size", "layers", "seed", "precision")


def weights_digest(path: Path) -> str:
    """sha256 of the weights file, "missing" when there is none (the experiments' checkpoints are not committed)."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def fingerprint_before_activation_bits(cfg: StudyConfig) -> str:
    """The fingerprint exactly as the code computed it before activation bits and BOPs existed (once the size rule
    was part of it: that change alone refuses older studies, on purpose, see test_cli)."""
    keep = {
        "objectives": cfg.study.objectives,
        "min_ratio": cfg.study.min_ratio,
        "model": dataclasses.asdict(cfg.model) | {"weights": weights_digest(cfg.weights_path)},
        "synthetic": {k: v for k, v in dataclasses.asdict(cfg.synthetic).items() if k != "input_range"},
        "space": {k: v for k, v in dataclasses.asdict(cfg.space).items() if k in OLD_SPACE_KEYS},
        "recovery": {k: v for k, v in dataclasses.asdict(cfg.recovery).items() if k in OLD_RECOVERY_KEYS},
        "size": SIZE_RULE,
    }
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=list).encode()).hexdigest()[:16]


def edit(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


def test_study_files_without_the_new_keys_keep_their_fingerprint(study_file) -> None:
    """Files that say what the stored studies did (weights clipped at their maximum: weight_clip = "max", the
    only way before the key existed; synthetic inputs unbounded: no input_range; search/_compat.py's NEW_KEYS)
    hash as they did."""
    studies = Path(__file__).resolve().parents[2] / "studies"
    for path in [study_file(), studies / "quickstart.toml", *sorted((studies / "experiments").glob("*.toml"))]:
        cfg = replace(replace(load_config(path), "recovery", weight_clip="max"), "synthetic", input_range=None)
        assert cfg.fingerprint() == fingerprint_before_activation_bits(cfg), path


@pytest.mark.parametrize(
    "section, change",
    [
        ("space", {"act_bits": (4, 8)}),
        ("space", {"fixed": {"layer1.0.conv1": {"act_bits": 8}}}),
        ("study", {"max_bops": 1e9}),
    ],
)
def test_each_new_key_changes_the_fingerprint(study_file, section: str, change: dict) -> None:
    cfg = load_config(study_file())
    assert replace(cfg, section, **change).fingerprint() != cfg.fingerprint()


@pytest.mark.parametrize("change", [{"calibration": "minmax"}, {"learn_act_steps": False}])
def test_activation_recovery_keys_count_only_where_activations_are_quantized(study_file, change: dict) -> None:
    cfg = load_config(study_file())
    assert replace(cfg, "recovery", **change).fingerprint() == cfg.fingerprint()  # they change nothing here
    quantized = replace(cfg, "space", act_bits=(4, 8))
    assert replace(quantized, "recovery", **change).fingerprint() != quantized.fingerprint()


def test_an_old_study_resumes_unchanged(study_file) -> None:
    """Its file saying how its weights were clipped (the only way there was): see test_compat for the file that
    does not."""
    cfg = load_config(edit(study_file(), "[recovery]\n", '[recovery]\nweight_clip = "max"\n'))
    with open_for(cfg) as st:
        space = check_model(cfg)[1]
        study = create_or_resume(cfg, st, space)
        study.set_user_attr(FINGERPRINT, fingerprint_before_activation_bits(cfg))  # as the old code stored it
        create_or_resume(cfg, st, space)  # no ConfigError: the same study file still matches
        assert open_study(cfg, st).user_attrs[FINGERPRINT] == fingerprint_before_activation_bits(cfg)


def test_default_space_samples_the_parameters_it_always_did(study_file) -> None:
    cfg = load_config(study_file())
    space = check_model(cfg)[1]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    policy = space.sample(trial)
    assert set(trial.params) == {f"{n}:{k}" for n in space.searched for k in ("sparsity", "bits")}
    assert policy.act_bits() == {}


def test_searched_activation_bits_and_edges_at_w8a8(study_file) -> None:
    cfg = load_config(edit(study_file(), "bits = [4, 8, 32]", ACT_SPACE))
    space = check_model(cfg)[1]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        policy = space.sample(trial).as_dict()
        assert all(policy[n].act_bits == trial.params[f"{n}:act_bits"] for n in space.searched)
        first, *_, last = [layer.name for layer in compressible_layers(check_model(cfg)[0])]
        assert policy[first] == policy[last] == LayerSetting(0.0, 8, 8)
    assert space.uniform_params(0.0, 4)[f"{space.searched[0]}:act_bits"] == 8


def test_a_bops_study_records_bops_and_reports_them(study_file, frandi) -> None:
    path = edit(study_file(n_trials=4), "bits = [4, 8, 32]", ACT_SPACE)
    cfg = load_config(path)
    with open_for(cfg) as st:
        runner = TrialRunner(cfg, st)
        w8a8 = runner.evaluate(Policy.uniform(runner.teacher, 0.0, 8, 8)).bops
        w4a4 = runner.evaluate(Policy.uniform(runner.teacher, 0.0, 4, 4)).bops
    assert w8a8 == 4 * w4a4
    budget = (w8a8 + w4a4) / 2
    edit(path, "[study]", f'[study]\nobjectives = ["od", "bops"]\nmax_bops = {budget}')
    code, out, err = frandi("search", path, "--no-progress")
    assert code == 0, err
    cfg = load_config(path)
    with open_for(cfg) as st:
        study = open_study(cfg, st)
        trials = study.get_trials(states=(TrialState.COMPLETE,))
        assert study.metric_names == ["OD", "GBOPs"]
    assert len(trials) == 4
    for t in trials:
        assert t.values[1] == pytest.approx(t.user_attrs["bops"] / 1e9)
        assert (t.constraints["max_bops"] <= 0) == (t.user_attrs["bops"] <= budget)
        assert Policy.from_json(t.user_attrs["policy"]).act_bits()  # activations quantized on searched layers
    code, out, _ = frandi("pareto", path, "--format", "json")
    rows = json.loads(out)
    assert code == 0 and rows and {"act_bits", "gbops"} <= set(rows[0])
    assert all(r["gbops"] <= budget / 1e9 + 1e-4 for r in rows)  # the front holds feasible trials only
    assert set("/".join(r["act_bits"] for r in rows).split("/")) <= {"4", "8"}


def test_a_study_that_quantizes_activations_counts_their_steps_in_its_size_rule(study_file, frandi) -> None:
    """Packed files store one fp32 step per activation-quantized layer since ACT_SIZE_RULE: such a study
    fingerprints that rule, and one stored under the old rule is refused; other studies keep SIZE_RULE."""
    plain = load_config(study_file())
    assert plain.size_rule == SIZE_RULE and plain.comparable()["size accounting"] == SIZE_RULE
    path = edit(study_file(n_trials=2), "bits = [4, 8, 32]", ACT_SPACE)
    cfg = load_config(path)
    assert cfg.size_rule == ACT_SIZE_RULE != SIZE_RULE and cfg.comparable()["size accounting"] == ACT_SIZE_RULE
    with pytest.MonkeyPatch.context() as m:  # the code before the steps were stored: every study on SIZE_RULE
        m.setattr(compat, "ACT_SIZE_RULE", SIZE_RULE)
        old = cfg.fingerprint()
        assert frandi("search", path, "--no-progress")[0] == 0
    assert old != cfg.fingerprint()  # the rule alone changes the hash
    code, _, err = frandi("search", edit(path, "n_trials = 2", "n_trials = 3"), "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "size accounting changed" in err and "--force" in err
    with open_for(cfg) as st:
        assert len(open_study(cfg, st).get_trials(states=(TrialState.COMPLETE,))) == 2  # nothing was added


def test_a_study_scored_under_the_old_rounding_is_refused_on_resume(study_file, frandi, monkeypatch) -> None:
    """A study that quantizes activations fingerprints how its students round (ROUNDING_RULE: integer points and
    bias rounding); one scored before is refused with one line naming why; weights-only studies are unaffected."""
    plain = load_config(study_file())
    assert "activation rounding" not in plain.comparable()
    path = edit(study_file(n_trials=2), "bits = [4, 8, 32]", ACT_SPACE)
    with monkeypatch.context() as m:  # the code before integer points: another rule
        m.setattr(compat, "ROUNDING_RULE", "layer-inputs/0")
        assert frandi("search", path, "--no-progress")[0] == 0
    code, _, err = frandi("search", edit(path, "n_trials = 2", "n_trials = 3"), "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "activation rounding changed" in err and "--force" in err
