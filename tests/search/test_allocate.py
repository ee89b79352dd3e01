"""Allocated policy space: each rule hits its global level, the knapsack is optimal and within its budget,
warm starts are enqueued once, bad allocated-mode input is one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
import torch

from frandi_core import LayerSetting, Policy, compress, compressible_layers, model_outputs, output_discrepancy
from frandi_core.models import resnet
from search import AllocatedSpace, load_config, open_for, open_study
from search._config import SpaceSection
from search._knapsack import choose
from search._sensitivity import Probe, candidates, measure
from search._space import SearchSpace
from tests.tiny_study import make_weights, study_text

STEP = 0.05


@pytest.fixture(scope="module")
def space() -> AllocatedSpace:
    torch.manual_seed(0)
    teacher = resnet(widths=(4, 8)).eval()
    section = SpaceSection(sparsity=(0.0, 0.9), sparsity_step=STEP, bits=(3, 4, 8), mode="allocated", offsets=1)
    base = SearchSpace.build(section, compressible_layers(teacher))
    heldout, recovery = torch.randn(16, 1, 8, 8), torch.randn(32, 1, 8, 8)
    out = model_outputs(teacher, heldout)
    table = measure(teacher, list(base.searched), candidates(base), heldout, out)
    return AllocatedSpace.build(base, section, teacher, table, Probe(teacher, heldout, out, recovery))


def _searched_size(space: AllocatedSpace, settings: dict[str, LayerSetting]) -> int:
    return sum(space.layer_bytes(n, settings[n]) for n in space.searched)


@pytest.mark.parametrize("rule", [r for r in SpaceSection().rules if r != "sensitivity"])
@pytest.mark.parametrize("level", [0.3, 0.6, 0.85])
def test_each_rule_prunes_its_global_level(space: AllocatedSpace, rule: str, level: float) -> None:
    settings = space.allocate(rule, level, 4)
    total = sum(space.numel[n] for n in space.searched)
    pruned = sum(round(settings[n].sparsity * space.numel[n]) for n in space.searched)
    assert abs(pruned - round(level * total)) <= len(space.searched)  # exact up to rounding in each layer
    size = _searched_size(space, settings)
    uniform = _searched_size(space, {n: LayerSetting(level, 4) for n in space.searched})
    step = _searched_size(space, {n: LayerSetting(level - STEP, 4) for n in space.searched}) - uniform
    # no larger than one step above the level's bytes (a layer a rule leaves dense also drops its position mask)
    assert size <= uniform + step
    for s in settings.values():
        assert 0.0 <= s.sparsity <= 0.9 + 1e-9 and s.bits == 4


def test_rules_place_the_pruning_differently(space: AllocatedSpace) -> None:
    placed = {r: space.sparsities(r, 0.6) for r in ("uniform", "global", "lamp", "erk")}
    assert len({tuple(round(v, 3) for v in p.values()) for p in placed.values()}) == 4
    big = max(space.searched, key=lambda n: space.numel[n])
    assert placed["erk"][big] > 0.6  # ERK prunes the largest layer hardest


def test_sensitivity_rule_stays_within_the_uniform_levels_bytes(space: AllocatedSpace) -> None:
    for level, bits in ((0.5, 4), (0.8, 3), (0.2, 8)):
        budget = _searched_size(space, {n: LayerSetting(level, bits) for n in space.searched})
        settings = space.allocate("sensitivity", level, bits)
        assert _searched_size(space, settings) <= budget
        t = space.sensitivity
        chosen = sum(t.od[i][t.settings.index(settings[n])] for i, n in enumerate(t.layers))
        uniform = LayerSetting(level, bits)
        if uniform in t.settings:  # the uniform level is one of the knapsack's options: it cannot do worse
            assert chosen <= sum(r[t.settings.index(uniform)] for r in t.od) + 1e-12


def test_knapsack_is_optimal_on_a_case_solved_by_hand() -> None:
    costs = [[4, 2, 1], [5, 3, 1], [3, 2]]
    values = [[0.0, 0.2, 0.9], [0.0, 0.1, 0.8], [0.0, 0.5]]
    # budget 8: (4,3,1)? no, group 3 has no cost-1 option. Candidates within 8: A2+B3+C3 = 8, value 0.3;
    # A4+B1+C3 = 8, value 0.8; A2+B5... = 10 too big. Best: A2 (0.2) + B3 (0.1) + C3 (0.0) = 0.3
    assert choose(costs, values, 8) == [1, 1, 0]
    # budget 6: A1+B3+C2 = 6 -> 0.9+0.1+0.5 = 1.5; A2+B1+C3 = 6 -> 0.2+0.8+0 = 1.0; A2+B3+... = 7+ too big
    assert choose(costs, values, 6) == [1, 2, 0]
    assert choose(costs, values, 3) is None  # the cheapest combination costs 4
    assert choose(costs, values, 12) == [0, 0, 0]


def test_knapsack_respects_large_budgets_after_rounding() -> None:
    costs = [[100_003 * (k + 1) for k in range(5)] for _ in range(6)]
    values = [[1.0 / (k + 1) for k in range(5)] for _ in range(6)]
    budget = 1_700_000
    picks = choose(costs, values, budget)
    assert picks is not None
    assert sum(c[j] for c, j in zip(costs, picks, strict=True)) <= budget


def test_offsets_shift_only_the_most_sensitive_layer(space: AllocatedSpace) -> None:
    plain = space.policy(space.uniform_params(0.5, 4)).as_dict()
    shifted = space.policy(space.uniform_params(0.5, 4) | {"offset0:sparsity": -2, "offset0:bits": 1}).as_dict()
    top = space.sensitivity.ranked()[0]
    assert shifted[top] == LayerSetting(round(0.5 - 2 * STEP, 6), 8)
    assert {n: s for n, s in shifted.items() if n != top} == {n: s for n, s in plain.items() if n != top}


def _level_ratios(space: AllocatedSpace) -> dict[tuple[float, int], float]:
    levels = [(s, b) for b in space.bits for s in space.base.grid()]
    return {lv: space.probe.ratio(space.uniform(*lv)) for lv in levels}


def test_warm_starts_are_the_probes_best_of_every_rule_at_sizes_spread_over_the_front(space: AllocatedSpace) -> None:
    warm = space.warm_starts(4)
    assert len(warm) == 4 and len({space.policy(p) for p in warm}) == 4
    ratios = _level_ratios(space)
    lo, hi = min(ratios.values()), max(ratios.values())
    width = (hi - lo) / 4  # 4 budgets, evenly in ratio: ratio >= lo + (i + 1/2) width
    for i, p in enumerate(warm):
        budget = lo + (i + 0.5) * width
        assert budget <= ratios[p["sparsity"], p["bits"]] <= budget + width  # smallest ratio first, each fits
        least = [
            min((lv for lv in ratios if lv[1] == b and budget <= ratios[lv] <= budget + width), key=ratios.get)
            for b in space.bits
            if any(lv[1] == b and budget <= ratios[lv] <= budget + width for lv in ratios)
        ]
        rivals = [space.policy(space.uniform_params(s, b, rule)) for s, b in least for rule in space.rules]
        assert len(rivals) >= len(space.rules)  # each bit width's least compressed level that fits, every rule
        od = space.probe.od(space.policy(p))
        earlier = {space.policy(q) for q in warm[:i]}
        assert all(od <= space.probe.od(q) + 1e-12 for q in rivals if q not in earlier)
    assert space.warm_starts(0) == []


class _FavorOneRule(Probe):
    """A probe that ranks one rule's policies best, whatever the model."""

    favored: frozenset[Policy] = frozenset()

    def od(self, policy: Policy) -> float:
        return 0.0 if policy in self.favored else 1.0


@pytest.mark.parametrize("rule", SpaceSection().rules)
def test_warm_starts_follow_the_probe_to_any_rule(space: AllocatedSpace, rule: str) -> None:
    favored = frozenset(space.policy(space.uniform_params(s, b, rule)) for s in space.base.grid() for b in space.bits)
    probe = _FavorOneRule(space.probe.teacher, space.probe.heldout, space.probe.teacher_out, space.probe.recovery)
    probe.favored = favored
    warm = dataclasses.replace(space, probe=probe).warm_starts(4)
    assert len(warm) == 4 and all(space.policy(p) in favored for p in warm)  # each bin's best: the favored rule's


def _allocated_study(tmp_path: Path, n_trials: int, extra: str = "") -> Path:
    make_weights(tmp_path / "tiny.pt")
    p = tmp_path / "alloc.toml"
    text = study_text(name="alloc", url="sqlite:///alloc.db", sampler="tpe", n_trials=n_trials, iterations=5)
    p.write_text(text.replace("[recovery]", f'mode = "allocated"\noffsets = 1\n{extra}\n[recovery]'))
    return p


@pytest.mark.parametrize("rule", SpaceSection().rules)
def test_warm_starts_are_enqueued_once_also_on_resume(tmp_path: Path, frandi, rule: str) -> None:
    p = _allocated_study(tmp_path, 8, f'rules = ["{rule}"]\nwarm_starts = 4')
    code, _, err = frandi("search", p, "--no-progress")
    assert code == 0, err
    cfg = load_config(p)
    with open_for(cfg) as st:
        trials = open_study(cfg, st).get_trials()
    warm = [t for t in trials if t.user_attrs.get("warm_start")]
    # one per size bin, a bin none of the rule's levels falls in is skipped; uniform ones may be baselines
    assert len(trials) == 8 and (2 if rule == "uniform" else 3) <= len(warm) <= 4
    assert all(t.params["rule"] == rule for t in warm)
    first = sum(bool(t.user_attrs.get("baseline")) for t in trials)
    assert [t.number for t in warm] == list(range(first, first + len(warm)))  # right after the baselines
    assert [t.state for t in trials].count(optuna.trial.TrialState.COMPLETE) == 8
    code, _, err = frandi("search", p, "--no-progress", "--n-trials", "11")
    assert code == 0, err
    with open_for(cfg) as st:
        again = open_study(cfg, st).get_trials()
    assert len(again) == 11
    assert sum(bool(t.user_attrs.get("warm_start")) for t in again) == len(warm)


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        ('mode = "bogus"', "space.mode 'bogus' is unknown"),
        ('mode = "allocated"\nrules = ["uniform", "magic"]', "space.rules ['uniform', 'magic'] is invalid"),
        ('mode = "allocated"\noffsets = -1', "space.offsets and space.warm_starts must be >= 0"),
        ('mode = "allocated"\noffsets = 99', "space.offsets is 99, but only"),
        ("color = 3", "unknown key 'space.color'"),
    ],
)
def test_bad_allocated_input_is_one_line_exit_2(tmp_path: Path, frandi, extra: str, expect: str) -> None:
    p = _allocated_study(tmp_path, 4)
    p.write_text(p.read_text().replace('mode = "allocated"\noffsets = 1\n', extra + "\n"))
    code, out, err = frandi("search", p, "--no-progress")
    assert code == 2 and expect in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "alloc.db").exists()  # refused before the storage was created


def test_offsets_in_a_layerwise_space_are_refused(tmp_path: Path, frandi) -> None:
    p = _allocated_study(tmp_path, 4)
    p.write_text(p.read_text().replace('mode = "allocated"\n', ""))
    code, _, err = frandi("search", p, "--no-progress")
    assert code == 2 and 'space.offsets needs space.mode = "allocated"' in err


def test_an_impossible_size_budget_is_one_line_exit_2(tmp_path: Path, frandi) -> None:
    p = _allocated_study(tmp_path, 4)
    p.write_text(p.read_text().replace("baselines = [0.5]", "baselines = [0.5]\nmin_ratio = 1000.0"))
    code, _, err = frandi("search", p, "--no-progress")
    assert code == 2 and "study.min_ratio 1000" in err and err.count("\n") == 1
    assert not (tmp_path / "alloc.db").exists()


def test_sensitivity_command_prints_the_table_stores_it_once_and_draws_it(tmp_path: Path, frandi) -> None:
    p = _allocated_study(tmp_path, 4)
    code, out, err = frandi("sensitivity", p, "--png", tmp_path / "heat.png")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["0.00/4", "0.00/8"] and lines[1].startswith("layer1.0.conv1")
    assert (tmp_path / "heat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, again, _ = frandi("sensitivity", p)
    assert code == 0 and again.splitlines()[-1] == out.splitlines()[-2]  # read back, not measured again
    assert frandi("sensitivity", p, "--png", tmp_path / "heat.jpg")[0] == 2


def test_a_layerwise_study_keeps_the_fingerprint_it_had_before_allocated_mode(tmp_path: Path) -> None:
    p = _allocated_study(tmp_path, 4)
    allocated = load_config(p)
    p.write_text(p.read_text().replace('mode = "allocated"\noffsets = 1\n', ""))
    layerwise = load_config(p)
    fingerprinted = layerwise.comparable()["space"]  # act_bits too is left out: it quantizes no activation
    assert set(fingerprinted) == {"layers", "fixed", "sparsity", "sparsity_step", "bits", "keep_first_last"}
    assert layerwise.fingerprint() != allocated.fingerprint()


def test_warm_starts_leave_an_allocated_studys_fingerprint_alone(tmp_path: Path) -> None:
    p = _allocated_study(tmp_path, 4)
    before = load_config(p)
    p.write_text(p.read_text().replace("offsets = 1\n", "offsets = 1\nwarm_starts = 2\n"))
    after = load_config(p)
    assert after.space.warm_starts == 2 and after.fingerprint() == before.fingerprint()
    p.write_text(p.read_text().replace("offsets = 1\n", "offsets = 0\n"))  # offsets decide trial results
    assert load_config(p).fingerprint() != before.fingerprint()


def test_warm_starts_spread_over_the_sizes_that_meet_min_ratio(space: AllocatedSpace) -> None:
    ratios = _level_ratios(space)
    lo, hi = min(ratios.values()), max(ratios.values())
    floor = lo + (hi - lo) / 2
    everywhere, budgeted = space.warm_starts(6), space.warm_starts(6, min_ratio=floor)
    assert min(ratios[p["sparsity"], p["bits"]] for p in everywhere) < floor
    assert len(budgeted) >= 3 and all(ratios[p["sparsity"], p["bits"]] >= floor for p in budgeted)


def test_a_short_study_gets_as_many_warm_starts_as_it_has_trials_left(tmp_path: Path, frandi) -> None:
    p = _allocated_study(tmp_path, 5, 'rules = ["global", "lamp"]\nwarm_starts = 12')
    code, _, err = frandi("search", p, "--no-progress")
    assert code == 0, err
    cfg = load_config(p)
    with open_for(cfg) as st:
        trials = open_study(cfg, st).get_trials()
    baselines = sum(bool(t.user_attrs.get("baseline")) for t in trials)
    assert len(trials) == 5 and sum(bool(t.user_attrs.get("warm_start")) for t in trials) == 5 - baselines


def test_the_probe_measures_a_compressed_copy_after_its_bn_statistics_are_re_estimated(space: AllocatedSpace) -> None:
    probe = space.probe
    teacher = {k: v.clone() for k, v in probe.teacher.state_dict().items()}
    for rule, level, bits in (("global", 0.6, 3), ("uniform", 0.3, 8), ("sensitivity", 0.8, 4)):
        policy = space.policy(space.uniform_params(level, bits, rule))
        student = compress(probe.teacher, policy)
        raw = output_discrepancy(student, probe.heldout, probe.teacher_out)
        with torch.no_grad():  # BN statistics of the compressed weights, on the recovery batch
            for m in student.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.reset_running_stats()
                    m.momentum = None
            student.train()(probe.recovery)
        adapted = output_discrepancy(student.eval(), probe.heldout, probe.teacher_out)
        assert abs(adapted - raw) > 1e-4  # re-estimating moved it
        assert probe.od(policy) == pytest.approx(adapted, rel=1e-4, abs=1e-6)
    dense = Policy.from_dict({layer.name: LayerSetting(0.0, None) for layer in compressible_layers(probe.teacher)})
    dense_od = output_discrepancy(compress(probe.teacher, dense), probe.heldout, probe.teacher_out)
    assert dense_od == 0.0 and probe.od(dense) > 0.0  # dense weights too get statistics of the recovery batch
    assert all(torch.equal(v, probe.teacher.state_dict()[k]) for k, v in teacher.items())  # the teacher untouched


def test_the_probe_and_the_sensitivity_table_clip_weights_as_trials_do() -> None:
    """weight_clip reaches the screens: the table's OD of a layer at 2 bits is the OD of the student compress()
    makes with the same clipping, the probe's 2-bit OD moves with it; a table measured under "max" keeps its key."""
    from search._sensitivity import sensitivity_key

    torch.manual_seed(0)
    teacher = resnet(widths=(4, 8)).eval()
    heldout, recovery = torch.randn(16, 1, 8, 8), torch.randn(32, 1, 8, 8)
    out = model_outputs(teacher, heldout)
    policy = Policy.uniform(teacher, 0.0, 2)
    od = {clip: Probe(teacher, heldout, out, recovery, weight_clip=clip).od(policy) for clip in ("max", "mse")}
    assert od["mse"] != od["max"]
    section = SpaceSection(bits=(2, 8))
    base = SearchSpace.build(section, compressible_layers(teacher))
    two = [i for i, s in enumerate(candidates(base)) if s.bits == 2 and s.sparsity == 0]
    rows = {clip: measure(teacher, list(base.searched), candidates(base), heldout, out, weight_clip=clip).od
            for clip in ("max", "mse")}  # fmt: skip
    assert all(r_max[i] != r_mse[i] for r_max, r_mse in zip(rows["max"], rows["mse"], strict=True) for i in two)
    layer = base.searched[0]
    alone = Policy.from_dict({layer: LayerSetting(0.0, 2)})
    one = measure(teacher, [layer], [LayerSetting(0.0, 2)], heldout, out, weight_clip="mse").od[0][0]
    assert one == pytest.approx(output_discrepancy(compress(teacher, alone, weight_clip="mse"), heldout, out))
    args = ("batch", ["a"], [LayerSetting(0.5, 4)], [], "mse")
    assert sensitivity_key(*args) == sensitivity_key(*args, "max") != sensitivity_key(*args, "mse")
