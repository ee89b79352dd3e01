"""[space] channels: one knob per coupled group in both spaces, fingerprints of studies without it, bad input,
trials that count the smaller layers."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from frandi_core import channel_groups, load_packed, model_outputs, model_size, save_packed
from frandi_core.models import resnet
from search import AllocatedSpace, ConfigError, TrialRunner, load_config, open_for, replace
from search._config import SpaceSection
from search._sensitivity import Probe, candidates, measure
from search._space import SearchSpace
from tests.search.test_activations import edit, fingerprint_before_activation_bits

SHAPE = (1, 8, 8)


def test_study_files_without_channels_keep_their_fingerprint(study_file) -> None:
    studies = Path(__file__).resolve().parents[2] / "studies"
    for path in [study_file(), studies / "quickstart.toml", *sorted((studies / "experiments").glob("*.toml"))]:
        cfg = replace(load_config(path), "recovery", weight_clip="max")  # as those studies clipped their weights
        cfg = replace(cfg, "synthetic", input_range=None)  # and left their synthetic inputs unbounded
        assert not cfg.space.prunes_channels
        assert not {"channels", "channels_step", "channel_rules"} & set(cfg.comparable()["space"]), path
        assert cfg.fingerprint() == fingerprint_before_activation_bits(cfg), path
    cfg = load_config(study_file())
    for change in ({"channels_step": 0.25}, {"channels_multiple": 8}):  # no channels: refused, never ignored
        with pytest.raises(ConfigError, match="needs space.channels"):
            replace(cfg, "space", **change)


def test_channels_change_the_fingerprint_and_only_allocated_studies_fingerprint_their_rules(study_file) -> None:
    cfg = load_config(study_file())
    pruned = replace(cfg, "space", channels=(0.0, 0.5))
    assert pruned.fingerprint() != cfg.fingerprint()
    assert replace(pruned, "space", channels_step=0.25).fingerprint() != pruned.fingerprint()
    assert replace(pruned, "space", channels_multiple=8).fingerprint() != pruned.fingerprint()
    with pytest.raises(ConfigError, match='needs space.mode = "allocated"'):  # layerwise: refused, never ignored
        replace(pruned, "space", channel_rules=("uniform",))
    allocated = replace(pruned, "space", mode="allocated")
    assert replace(allocated, "space", channel_rules=("uniform",)).fingerprint() != allocated.fingerprint()


@pytest.mark.parametrize(
    "line, expect",
    [
        ("channels = [0.5, 0.2]", "space.channels must be [low, high]"),
        ("channels = [0.0, 1.0]", "space.channels must be [low, high]"),
        ("channels = [0.5]", "space.channels must be [low, high]"),
        ("channels = [0.0, 0.5]\nchannels_step = 0", "space.channels_step must be in (0, 1)"),
        ("channels = [0.0, 0.5]\nchannel_rules = [\"l1\"]", "space.channel_rules"),
        ("channels = [0.0, 0.5]\nchannels_multiple = 0", "space.channels_multiple must be >= 1"),
        ("channels = \"half\"", "'space.channels' must be a list"),
        ("fixed = { \"layer1.0.conv1\" = { channels = 1.5 } }", "channels must be a fraction"),
    ],
)
def test_bad_channel_input_is_one_line_and_exit_2(study_file, frandi, line: str, expect: str) -> None:
    path = edit(study_file(), "bits = [4, 8, 32]", f"bits = [4, 8, 32]\n{line}")
    code, out, err = frandi("search", path)
    assert code == 2, err
    assert expect in err and err.count("\n") == 1 and "Traceback" not in err


def test_channels_with_the_feature_score_are_refused(study_file, frandi) -> None:
    path = edit(study_file(), "bits = [4, 8, 32]", "bits = [4, 8, 32]\nchannels = [0.0, 0.5]")
    edit(path, "baselines = [0.5]", 'baselines = [0.5]\nscore = "od+feature_od"')
    code, _, err = frandi("search", path)
    assert code == 2 and "space.channels" in err and err.count("\n") == 1


def test_a_layerwise_space_samples_one_fraction_per_coupled_group() -> None:
    torch.manual_seed(0)
    teacher = resnet(widths=(4, 8)).eval()
    section = SpaceSection(channels=(0.0, 0.5), channels_step=0.25)
    space = SearchSpace.of_model(section, teacher, SHAPE)
    groups = channel_groups(teacher, SHAPE)
    assert set(space.groups) == {g for g in groups if any(n in space.searched for n in g)}
    params = space.uniform_params(0.3, 8)
    coupled = next(g for g in space.groups if "layer1.0.conv2" in g)
    params |= {f"{g[0]}:channels": 0.5 if g == coupled else 0.25 for g in space.groups}
    policy = space.sample(optuna.trial.FixedTrial(params))
    c = policy.channels()
    assert c["layer1.0.conv2"] == 0.5 and "stem.0" not in c  # stem.0 is fixed (first layer): its group prunes it
    assert set(c) == {n for g in space.groups for n in g if n in space.searched}
    assert "head.2" not in c
    assert SearchSpace.of_model(SpaceSection(), teacher, SHAPE).groups == ()  # no channels: no knob, no trace


def test_allocated_channel_rules_remove_the_levels_fraction_of_all_channels() -> None:
    torch.manual_seed(0)
    teacher = resnet(widths=(4, 8)).eval()
    section = SpaceSection(bits=(4, 8), mode="allocated", channels=(0.0, 0.75), channels_step=0.25)
    base = SearchSpace.of_model(section, teacher, SHAPE)
    heldout, recovery = torch.randn(16, *SHAPE), torch.randn(32, *SHAPE)
    out = model_outputs(teacher, heldout)
    table = measure(teacher, list(base.searched), candidates(base), heldout, out)
    space = AllocatedSpace.build(base, section, teacher, table, Probe(teacher, heldout, out, recovery))
    sizes = {r: len(space.channel_scores[r]) for r in space.channel_scores}
    for level in (0.25, 0.5):
        uniform, ranked = space.channel_fractions("uniform", level), space.channel_fractions("importance", level)
        assert set(uniform.values()) == {level}
        removed = sum(f * sizes[r] for r, f in ranked.items())
        assert abs(removed - level * sum(sizes.values())) <= len(sizes)
        assert all(0.0 <= f <= 0.75 for f in ranked.values())
    params = space.uniform_params(0.3, 8) | {"channels": 0.5, "channel_rule": "importance"}
    policy = space.sample(optuna.trial.FixedTrial(params))
    assert policy.channels() and set(policy.channels()) <= set(space.searched)


def test_a_trial_on_a_channel_policy_counts_the_smaller_layers(study_file, tmp_path: Path) -> None:
    path = edit(study_file(), "bits = [4, 8, 32]", "bits = [4, 8, 32]\nchannels = [0.0, 0.5]\nchannels_step = 0.5")
    cfg = load_config(path)
    with open_for(cfg) as st:
        runner = TrialRunner(cfg, st)
        space = runner.space
        assert isinstance(space, SearchSpace) and space.groups
        params = space.uniform_params(0.3, 8)
        plain = space.sample(optuna.trial.FixedTrial(params))
        pruned = space.sample(optuna.trial.FixedTrial(params | {f"{g[0]}:channels": 0.5 for g in space.groups}))
        student, result = runner.student(pruned)
        base = runner.evaluate(plain)
    assert result.size_bits < 0.6 * base.size_bits and result.ratio > 1.6 * base.ratio
    assert result.bops < 0.5 * base.bops
    assert result.size_bits == model_size(student, pruned, original=runner.teacher).bits
    save_packed(tmp_path / "m.safetensors", student, pruned)
    loaded = load_packed(tmp_path / "m.safetensors", resnet(widths=(4, 8)))
    x = torch.randn(8, *SHAPE)
    assert torch.equal(model_outputs(loaded, x), model_outputs(student, x))
