"""Weight-and-activation mixed precision in the allocated space: activation bits reach every searched layer, the
rules keep their level's BOPs, warm starts meet a BOPs budget (once, also on resume), the knapsack under a second
budget is optimal, and no documented [space] key is silently ignored under either mode."""

from __future__ import annotations

import dataclasses
import itertools
import random
from pathlib import Path

import optuna
import pytest
import torch

from frandi_core import LatencyTable, LayerSetting, Policy, bops, compressible_layers, layer_macs, model_outputs
from frandi_core.models import resnet
from search import AllocatedSpace, ConfigError, check_model, load_config, parse_config
from search._config import SpaceSection
from search._knapsack import choose_within
from search._sensitivity import Probe, candidates, measure
from search._space import SearchSpace
from tests.tiny_study import make_weights, stored_trials, study_text

STEP = 0.1
ACTS = (4, 8)


def _build(teacher: torch.nn.Module, section: SpaceSection, seed: int = 0) -> AllocatedSpace:
    torch.manual_seed(seed)
    base = SearchSpace.of_model(section, teacher, (1, 8, 8))
    heldout, recovery = torch.randn(16, 1, 8, 8), torch.randn(32, 1, 8, 8)
    out = model_outputs(teacher, heldout)
    acts = sorted(b for b in set(section.act_bits) if b != 32)
    table = measure(teacher, list(base.searched), candidates(base), heldout, out, act_bits=acts, calibration=recovery)
    return AllocatedSpace.build(base, section, teacher, table, Probe(teacher, heldout, out, recovery))


@pytest.fixture(scope="module")
def space() -> AllocatedSpace:
    torch.manual_seed(0)
    teacher = resnet(widths=(4, 8)).eval()
    section = SpaceSection(
        sparsity=(0.0, 0.8), sparsity_step=STEP, bits=(2, 4, 8), act_bits=ACTS, mode="allocated", offsets=1
    )
    return _build(teacher, section)


def test_the_sensitivity_table_measures_each_layers_activation_bits(space: AllocatedSpace) -> None:
    t = space.sensitivity
    assert t.act_bits == ACTS and len(t.act_od) == len(t.layers) == len(space.searched)
    assert all(len(r) == len(ACTS) and all(v >= 0 for v in r) for r in t.act_od)
    assert sum(r[0] for r in t.act_od) > sum(r[1] for r in t.act_od)  # 4-bit inputs cost more than 8-bit ones
    assert type(t).from_json(t.to_json()) == t


@pytest.mark.parametrize("rule", SpaceSection().rules)
@pytest.mark.parametrize("act", ACTS)
def test_allocated_act_bits_reach_every_searched_layer(space: AllocatedSpace, rule: str, act: int) -> None:
    policy = space.policy(space.uniform_params(0.5, 4, rule, act) | {"offset0:act_bits": 0}).as_dict()
    searched = [policy[n].act_bits for n in space.searched]
    if rule == "sensitivity":  # the knapsack chooses each layer's own, among the space's
        assert all(a in ACTS for a in searched)
    else:
        assert searched == [act] * len(space.searched)
    edge = [s for n, s in policy.items() if n not in space.searched]
    assert edge and all(s == LayerSetting(0.0, 8, 8) for s in edge)  # keep_first_last: W8A8


def test_one_activation_width_is_set_without_a_parameter(space: AllocatedSpace) -> None:
    teacher = space.probe.teacher
    one = _build(teacher, dataclasses.replace(_section(space), act_bits=(4,)))
    params = one.uniform_params(0.3, 8, "uniform")
    assert "act_bits" not in params
    assert all(s.act_bits == 4 for n, s in one.policy(params).as_dict().items() if n in one.searched)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    assert all(s.act_bits == 4 for n, s in one.sample(trial).as_dict().items() if n in one.searched)
    assert "act_bits" not in trial.params


def _section(space: AllocatedSpace) -> SpaceSection:
    return SpaceSection(
        sparsity=space.base.sparsity, sparsity_step=space.base.step, bits=space.bits, act_bits=space.acts,
        mode="allocated", offsets=space.offsets,
    )


def test_offsets_shift_the_most_sensitive_layers_activation_bits(space: AllocatedSpace) -> None:
    params = space.uniform_params(0.5, 4, "uniform", 8)
    top = space.sensitivity.ranked()[0]
    down = space.policy(params | {"offset0:act_bits": -1}).as_dict()
    assert down[top].act_bits == 4
    assert all(down[n].act_bits == 8 for n in space.searched if n != top)


@pytest.mark.parametrize("rule", SpaceSection().rules)
@pytest.mark.parametrize(("level", "bits", "act"), [(0.3, 4, 8), (0.6, 2, 4), (0.2, 8, 4)])
def test_rules_hit_their_bops_level(space: AllocatedSpace, rule: str, level: float, bits: int, act: int) -> None:
    settings = space.allocate(rule, level, bits, act)
    level_bops = sum(space.layer_cost(n, LayerSetting(level, bits, act)) for n in space.searched)
    spent = sum(space.layer_cost(n, settings[n]) for n in space.searched)
    if rule == "sensitivity":  # within the level's bytes and bit operations
        assert spent <= level_bops
        level_bytes = sum(space.layer_bytes(n, LayerSetting(level, bits, act)) for n in space.searched)
        assert sum(space.layer_bytes(n, settings[n]) for n in space.searched) <= level_bytes
    else:
        assert spent == level_bops
    whole = space.bops(Policy.from_dict(dict(space.base.fixed) | settings))
    assert whole <= space.bops(space.uniform(level, bits, act))


def test_the_sensitivity_rule_trades_bits_between_layers_under_bops(space: AllocatedSpace) -> None:
    """At some level the knapsack gives different layers different (weight, activation) bits: a real allocation."""
    mixed = [
        (lv, b, a)
        for lv, b, a in itertools.product((0.0, 0.4), (2, 4), ACTS)
        if len({(s.bits, s.act_bits) for s in space.allocate("sensitivity", lv, b, a).values()}) > 1
    ]
    assert mixed


def _brute(costs, values, budget, extra, limit):  # type: ignore[no-untyped-def]
    best = None
    for pick in itertools.product(*[range(len(c)) for c in costs]):
        c = sum(costs[i][j] for i, j in enumerate(pick))
        e = sum(extra[i][j] for i, j in enumerate(pick))
        v = sum(values[i][j] for i, j in enumerate(pick))
        if c <= budget and e <= limit and (best is None or v < best[0] - 1e-12):
            best = (v, list(pick))
    return best


def test_the_knapsack_under_a_second_budget_matches_brute_force() -> None:
    rng = random.Random(0)
    gaps = []
    for _ in range(60):
        groups, options = rng.randint(2, 4), rng.randint(2, 4)
        costs = [[rng.randint(1, 9) for _ in range(options)] for _ in range(groups)]
        values = [[rng.random() for _ in range(options)] for _ in range(groups)]
        extra = [[rng.randint(1, 9) for _ in range(options)] for _ in range(groups)]
        budget, limit = rng.randint(groups, 9 * groups), rng.randint(groups, 9 * groups)
        best = _brute(costs, values, budget, extra, limit)
        pick = choose_within(costs, values, budget, extra, limit)
        if best is None:
            assert pick is None
            continue
        assert pick is not None
        assert sum(costs[i][j] for i, j in enumerate(pick)) <= budget
        assert sum(extra[i][j] for i, j in enumerate(pick)) <= limit
        gaps.append(sum(values[i][j] for i, j in enumerate(pick)) - best[0])
    # a Lagrangian pick is feasible always and optimal mostly (its duality gap is the price of one dimension)
    assert all(g >= -1e-12 for g in gaps) and sum(g < 1e-9 for g in gaps) >= 0.8 * len(gaps)


def _pairs_bops(space: AllocatedSpace) -> dict[tuple[int, int], int]:
    return {(b, a): space.bops(space.uniform(0.0, b, a)) for b in space.bits for a in space.acts}


def test_warm_starts_meet_a_bops_budget_and_spread_under_it(space: AllocatedSpace) -> None:
    costs = _pairs_bops(space)
    limit = sorted(set(costs.values()))[-2]  # all but the most expensive pair fit
    warm = space.warm_starts(4, max_bops=limit)
    assert len(warm) >= 2
    policies = [space.policy(p) for p in warm]
    assert len(set(policies)) == len(warm) and all(space.bops(p) <= limit for p in policies)
    assert len({(p["bits"], p["act_bits"]) for p in warm}) >= 2  # spread over the budget, not one level
    assert max(space.bops(p) for p in policies) > min(costs.values())
    assert space.warm_starts(4, max_bops=min(costs.values()) - 1) == []  # nothing fits: nothing enqueued


def test_warm_starts_under_bops_meet_min_ratio_too(space: AllocatedSpace) -> None:
    costs = _pairs_bops(space)
    limit = max(costs.values())
    ratio = 1.5 * space.probe.ratio(space.uniform(0.0, 8, 8))
    warm = space.warm_starts(3, max_bops=limit, min_ratio=ratio)
    assert warm and all(space.probe.ratio(space.policy(p)) >= ratio * 0.95 for p in warm)
    assert all(p["sparsity"] > 0 for p in warm if p["bits"] == 8)  # reached by pruning where bits alone do not


def _wa_study(tmp_path: Path, n_trials: int, extra: str = "") -> Path:
    make_weights(tmp_path / "tiny.pt")
    p = tmp_path / "wa.toml"
    text = study_text(name="wa", url="sqlite:///wa.db", sampler="tpe", n_trials=n_trials, iterations=5,
                      bits="[2, 4, 8]")
    space = 'mode = "allocated"\nact_bits = [4, 8]\n'
    p.write_text(text.replace("[recovery]", f"{space}{extra}\n[recovery]"))
    return p


def test_a_bops_budget_study_runs_its_warm_starts_once_and_every_searched_layer_gets_act_bits(
    tmp_path: Path, frandi
) -> None:
    p = _wa_study(tmp_path, 6, "warm_starts = 3")
    cfg0 = load_config(p)
    teacher, base = check_model(cfg0)
    macs = layer_macs(teacher, cfg0.model.input_shape)
    searched = set(base.searched)
    w4a8 = Policy.from_dict(dict(base.fixed) | {n: LayerSetting(0.0, 4, 8) for n in searched})
    limit = bops(macs, w4a8)
    p.write_text(p.read_text().replace("baselines = [0.5]", f"baselines = [0.5]\nmax_bops = {limit}"))
    code, _, err = frandi("search", p, "--no-progress")
    assert code == 0, err
    trials = stored_trials(p)
    warm = [t for t in trials if t.user_attrs.get("warm_start")]
    assert 1 <= len(warm) <= 3 and all(t.user_attrs["bops"] <= limit for t in warm)
    for t in trials:
        policy = Policy.from_json(t.user_attrs["policy"]).as_dict()
        assert all(policy[n].act_bits in ACTS for n in searched), t.params  # none left at fp32
    code, _, err = frandi("search", p, "--no-progress", "--n-trials", "8")
    assert code == 0, err
    again = stored_trials(p)
    assert len(again) == 8 and sum(bool(t.user_attrs.get("warm_start")) for t in again) == len(warm)


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        ('rules = ["global"]', 'space.rules needs space.mode = "allocated"'),
        ("warm_starts = 3", 'space.warm_starts needs space.mode = "allocated"'),
        ("offsets = 1", 'space.offsets needs space.mode = "allocated"'),
    ],
)
def test_allocated_keys_in_a_layerwise_space_are_refused(tmp_path: Path, frandi, extra: str, expect: str) -> None:
    p = _wa_study(tmp_path, 4, extra)
    p.write_text(p.read_text().replace('mode = "allocated"\n', ""))
    code, _, err = frandi("search", p, "--no-progress")
    assert code == 2 and expect in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_bops_budget_out_of_reach_is_one_line_exit_2(tmp_path: Path, frandi) -> None:
    p = _wa_study(tmp_path, 4)
    p.write_text(p.read_text().replace("baselines = [0.5]", "baselines = [0.5]\nmax_bops = 1000.0"))
    code, _, err = frandi("search", p, "--no-progress")
    assert code == 2 and "study.max_bops 1000 is out of reach" in err and err.count("\n") == 1
    assert not (tmp_path / "wa.db").exists()


def test_an_allocated_study_with_activation_bits_is_not_comparable_with_one_run_before(tmp_path: Path) -> None:
    cfg = load_config(_wa_study(tmp_path, 4))
    assert cfg.comparable()["allocation"] and "allocation" not in dataclasses.replace(
        cfg, space=dataclasses.replace(cfg.space, act_bits=(32,))
    ).comparable()


# --- every documented [space] key changes what a study runs, or is refused: never silently ignored -------------

CHANGED = {  # a value other than the default for each [space] key, as TOML
    "layers": '["re:layer1.*"]',
    "fixed": '{ "layer2.0.conv1" = { sparsity = 0.5, bits = 4 } }',
    "sparsity": "[0.1, 0.5]",
    "sparsity_step": "0.2",
    "bits": "[2, 3]",
    "act_bits": "[4, 8]",
    "keep_first_last": "false",
    "mode": None,  # the other mode
    "rules": '["global", "erk"]',
    "offsets": "1",
    "warm_starts": "2",
    "channels": "[0.25, 0.5]",
    "channels_step": "0.25",
    "channels_multiple": "8",
    "channel_rules": '["importance"]',
}
SPACE_TOML = 'sparsity = [0.0, 0.8]\nsparsity_step = 0.1\nbits = [4, 8, 32]\n'


def _config(tmp_path: Path, mode: str, key: str | None) -> str:
    other = "layerwise" if mode == "allocated" else "allocated"
    lines = [f'mode = "{other if key == "mode" else mode}"']
    text = study_text(name="walk", url="sqlite:///walk.db", sampler="random", n_trials=20)
    space = "[space]\n" + "\n".join(lines + ([f"{key} = {CHANGED[key]}"] if key not in (None, "mode") else []))
    start, end = text.index("[space]"), text.index("[recovery]")
    defaults = {k: v for k, v in (line.split(" = ", 1) for line in SPACE_TOML.splitlines())}
    if key in defaults:
        del defaults[key]
    return text[:start] + space + "\n" + "".join(f"{k} = {v}\n" for k, v in defaults.items()) + "\n" + text[end:]


FEATURE = {  # what each key decides, as read off what a study runs (see _features)
    "layers": "roles",
    "fixed": "roles",
    "keep_first_last": "roles",
    "sparsity": "sparsity range",
    "sparsity_step": "sparsity grid",
    "bits": "weight bits",
    "act_bits": "activation bits",
    "mode": "parameters",
    "rules": "rules",
    "offsets": "parameters",
    "warm_starts": "warm starts",
    "channels": "channels",
    "channels_step": "channels",  # (refused without channels, as each option of channel pruning)
    "channels_multiple": "channels",
    "channel_rules": "channels",
}


def _features(tmp_path: Path, text: str) -> dict[str, object]:
    """What a study file makes a study run, read off 8 sampled trials and the warm starts: which layers are
    searched (vary) or fixed (and at what), the searched layers' sparsities, weight and activation bits, the
    sparsity grid of the parameters, the parameter names, the rules drawn, how many warm starts."""
    cfg = parse_config(text, base_dir=tmp_path)
    teacher, base = check_model(cfg)
    space: SearchSpace | AllocatedSpace = base
    if cfg.space.mode == "allocated":
        space = _build(teacher, cfg.space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    policies, params = [], []
    for _ in range(8):
        trial = study.ask()
        policies.append(space.sample(trial).as_dict())
        params.append(trial.params)
        study.tell(trial, 0.0)
    layers = [layer.name for layer in compressible_layers(teacher)]
    seen = {n: {p.get(n, LayerSetting()) for p in policies} for n in layers}  # a layer no policy names: dense
    roles = {n: next(iter(v)) if len(v) == 1 else "varies" for n, v in seen.items()}
    searched = [p[n] for p in policies for n in base.searched]
    level = ("sparsity",)  # allocated: the level's; layerwise: each layer's "name:sparsity" (offsets are steps)
    grid = {round(v, 6) for q in params for k, v in q.items() if k in level or k.endswith(":sparsity")
            and not k.startswith("offset")}
    return {
        "roles": roles,
        "sparsity range": (min(s.sparsity for s in searched), max(s.sparsity for s in searched)),
        "sparsity grid": grid,
        "weight bits": {s.bits for s in searched},
        "activation bits": {s.act_bits for s in searched},
        "parameters": {k for q in params for k in q},
        "rules": {q.get("rule") for q in params},
        "warm starts": len(space.warm_starts(cfg.space.warm_starts)),
        "channels": {s.channels for s in searched},
    }


def test_the_key_walk_covers_every_space_key() -> None:
    assert set(CHANGED) == set(FEATURE) == {f.name for f in dataclasses.fields(SpaceSection)}


@pytest.mark.parametrize("mode", ["layerwise", "allocated"])
def test_no_space_key_is_silently_ignored(tmp_path: Path, mode: str) -> None:
    make_weights(tmp_path / "tiny.pt")
    default = _features(tmp_path, _config(tmp_path, mode, None))
    refused = []
    for key in CHANGED:
        text = _config(tmp_path, mode, key)
        try:
            changed = _features(tmp_path, text)
        except ConfigError as e:  # refused: one line naming the key
            assert f"space.{key}" in str(e) and "\n" not in str(e), (key, e)
            refused.append(key)
            continue
        what = FEATURE[key]
        assert changed[what] != default[what], f"[space] {key} = {CHANGED[key]} leaves the {mode} space's {what}"
    options = ["channels_step", "channels_multiple", "channel_rules"]  # without channels (the default: none)
    assert refused == (["rules", "offsets", "warm_starts"] if mode == "layerwise" else []) + options


def test_under_a_latency_budget_the_knapsack_and_the_warm_starts_keep_predicted_latency() -> None:
    torch.manual_seed(0)
    teacher = resnet(widths=(4, 8)).eval()
    section = SpaceSection(sparsity=(0.0, 0.8), sparsity_step=STEP, bits=(4, 8), act_bits=(8, 32), mode="allocated")
    layers = [layer.name for layer in compressible_layers(teacher)]
    table = LatencyTable("test", 10.0, {n: (1.0 + i, 0.4 + 0.1 * i) for i, n in enumerate(layers)})
    space = dataclasses.replace(_build(teacher, section), latency=table)
    assert space.second == "latency"
    for level, bits, act in ((0.3, 4, 8), (0.5, 8, 8), (0.2, 4, None)):  # allocate's None: fp32 inputs
        level_ms = table.predict(space.uniform(level, bits, act or 32))
        chosen = space.allocate("sensitivity", level, bits, act)
        assert table.predict(Policy.from_dict(dict(space.base.fixed) | chosen)) <= level_ms + 1e-9
    fastest, slowest = (table.predict(space.uniform(0.0, 8, a)) for a in (8, 32))
    assert fastest < slowest
    limit = (fastest + slowest) / 2
    warm = space.warm_starts(4, max_latency_ms=limit, max_bops=1.0)  # latency first: the BOPs budget is not used
    assert warm and all(table.predict(space.policy(p)) <= limit for p in warm)


def test_the_sensitivity_command_shows_the_activation_columns(tmp_path: Path, frandi) -> None:
    p = _wa_study(tmp_path, 4)
    code, out, err = frandi("sensitivity", p)
    assert code == 0, err
    head = out.splitlines()[0].split()
    assert head[-2:] == ["a4", "a8"] and "+ 2 activation widths" in out.splitlines()[-1]


def test_in_a_bops_budget_study_the_knapsack_spends_the_slack_between_levels(space: AllocatedSpace) -> None:
    costs = sorted(set(_pairs_bops(space).values()))
    cap = (costs[0] + costs[1]) / 2  # between the two cheapest uniform levels
    capped = dataclasses.replace(space, cap=cap)
    cheapest = space.bops(space.uniform(0.0, 2, 4))
    assert cheapest == costs[0]
    chosen = space.policy(space.uniform_params(0.0, 8, "sensitivity", 8) | {"offset0:act_bits": 0})
    picked = capped.policy(capped.uniform_params(0.0, 8, "sensitivity", 8) | {"offset0:act_bits": 0,
                                                                            "offset0:bits": 0})
    assert capped.bops(picked) <= cap < space.bops(chosen)  # the study's budget, not the level's
    assert capped.bops(picked) > cheapest  # more than the cheapest level: the slack is spent
    warm = capped.warm_starts(3, max_bops=cap)
    assert all(capped.bops(capped.policy(p)) <= cap for p in warm)
    assert max(capped.bops(capped.policy(p)) for p in warm) > cheapest
