"""Which study files are comparable: stored fingerprints never move, and every key has a rule.

``STORED`` holds fingerprints as studies stored them (computed by the code before search/_compat.py described
comparability in one place) for variants of the bundled quickstart file: a change that moves one of them would
refuse to resume studies users already have.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from search import parse_config
from search._compat import CONDITIONAL_KEYS, NEW_KEYS, PARTS, section, what_changed
from search._config import SECTIONS

REPO = Path(__file__).resolve().parents[2]
BASE = (REPO / "studies" / "quickstart.toml").read_text()
VARIANTS: dict[str, dict] = {
    "quickstart": {},
    "act_bits": {"space": 'act_bits = [4, 8]'},
    "fixed_act_bits": {"space": 'fixed = { "re:.*conv1" = { bits = 8, act_bits = 8 } }'},
    "calibration_without_act": {"recovery": 'calibration = "percentile"'},
    "act_with_calibration": {"space": 'act_bits = [4, 8]',
                             "recovery": 'calibration = "percentile"\nlearn_act_steps = false'},
    "allocated": {"space": 'mode = "allocated"\nrules = ["uniform", "global"]\noffsets = 2\nwarm_starts = 4'},
    "score": {"study": 'score = "od+feature_od"'},
    "max_bops": {"study": 'max_bops = 1e6'},
    "bops_objective": {"study_replace": ('objectives = ["od", "size"]', 'objectives = ["od", "bops"]')},
    "latency": {"study_replace": ('objectives = ["od", "size"]', 'objectives = ["od", "latency"]'),
                "study": 'max_latency_ms = 2.5', "latency": 'threads = 2'},
    "max_latency_only": {"study": 'max_latency_ms = 1.0'},
    "min_ratio": {"study": 'min_ratio = 4.0'},
    "timeout": {"study": 'timeout = "2h"'},
}
def text(v: dict, *, as_stored: bool = True) -> str:
    """The quickstart file with a variant's lines; ``as_stored``: saying what the stored studies did where a key
    has appeared since (NEW_KEYS' values before)."""
    t = BASE
    if as_stored:
        t = t.replace("[recovery]\n", '[recovery]\nweight_clip = "max"\n', 1)
    if "study_replace" in v:
        t = t.replace(*v["study_replace"])
    for sec in ("study", "space", "recovery"):
        if sec in v:
            t = t.replace(f"[{sec}]\n", f"[{sec}]\n{v[sec]}\n", 1)
    if "latency" in v:
        t += f"\n[latency]\n{v['latency']}\n"
    return t

# fingerprints as studies stored them before weight_clip existed
STORED = {
    "quickstart": "50736aacbc8062cb",
    "act_bits": "715991d869b32900",
    "fixed_act_bits": "ef37ae692f88f230",
    "calibration_without_act": "50736aacbc8062cb",
    "act_with_calibration": "7d7937e275dab1c5",
    "allocated": "fe51243191eaeef7",
    "score": "960ddd64cb9b9c67",
    "max_bops": "fbd484492f1991a1",
    "bops_objective": "5c9fbffc9fea0c6e",
    "latency": "d001d6cb7fd3287b",
    "max_latency_only": "5ff38d60cf9892bf",
    "min_ratio": "82af36e33cd48df1",
    "timeout": "50736aacbc8062cb",
}


@pytest.mark.parametrize("name", sorted(STORED))
def test_stored_fingerprints_do_not_move(name: str) -> None:
    cfg = parse_config(text(VARIANTS[name]), base_dir=REPO / "studies")
    assert cfg.fingerprint() == STORED[name]


def test_a_new_default_refuses_a_stored_study_and_says_how_to_resume_it(study_file, frandi) -> None:
    """The weights' clipping moved from "max" to "mse": a stored study resumed with its unchanged file is refused
    with one line naming the key and the value it ran with; written into the file, the study resumes."""
    import search._compat as compat

    path = study_file(n_trials=2)
    with pytest.MonkeyPatch.context() as m:  # the study as stored before weight_clip existed
        m.setattr(compat, "NEW_KEYS", {k: v for k, v in NEW_KEYS.items() if k != ("recovery", "weight_clip")})
        m.setattr("search._compat.section", _without_weight_clip(compat.section))
        assert frandi("search", path, "--no-progress")[0] == 0
    code, _, err = frandi("search", path, "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "recovery changed" in err and 'weight_clip = "max"' in err
    path.write_text(path.read_text().replace("[recovery]\n", '[recovery]\nweight_clip = "max"\n', 1))
    assert frandi("search", path, "--no-progress")[0] == 0


def _without_weight_clip(section):  # type: ignore[no-untyped-def]
    def old(cfg, name):  # type: ignore[no-untyped-def]
        data = section(cfg, name)
        data.pop("weight_clip", None)
        return data

    return old


def test_keys_that_decide_no_result_leave_the_fingerprint_alone() -> None:
    """A study quantizing no activation ignores their calibration; the timeout decides no result. (A layerwise
    study that sets allocated keys is refused since issue 21: it had kept the fingerprint without them.)"""
    for name in ("calibration_without_act", "timeout"):
        assert STORED[name] == STORED["quickstart"], name


def test_the_message_names_the_part_that_changed() -> None:
    plain = parse_config(text({}), base_dir=REPO / "studies").comparable()
    changed = parse_config(text(VARIANTS["max_bops"]), base_dir=REPO / "studies").comparable()
    assert {k for k in plain.keys() | changed.keys() if plain.get(k) != changed.get(k)} == {"study.max_bops"}
    assert {p.label for p in PARTS} >= set(changed)


# Every key each compared section had when the rules above were written. A key added since must be listed in
# NEW_KEYS (compared once set away from its default) or CONDITIONAL_KEYS, so no stored fingerprint moves.
KNOWN = {
    "study": {"name", "storage", "sampler", "seed", "n_trials", "objectives", "min_ratio", "max_bops",
              "max_latency_ms", "baselines", "artifacts", "score", "timeout"},
    "model": {"architecture", "weights", "input_shape", "kwargs"},
    "synthetic": {"batch_size", "heldout_size", "iterations", "lr", "tv", "l2", "jitter", "flip", "seed"},
    "space": {"layers", "fixed", "sparsity", "sparsity_step", "bits", "act_bits", "keep_first_last", "mode", "rules",
              "offsets", "warm_starts"},
    "recovery": {"steps", "lr", "batch_size", "layers", "seed", "precision", "calibration", "learn_act_steps"},
    "latency": {"threads", "batch", "repeats"},
}  # fmt: skip


@pytest.mark.parametrize("section", sorted(KNOWN))
def test_every_new_key_has_a_comparability_rule(section: str) -> None:
    """[study] keys enter the fingerprint only as PARTS name them: a new one needs a Part (or none, said here);
    a new key of another compared section needs a NEW_KEYS (or CONDITIONAL_KEYS) entry."""
    keys = {f.name for f in dataclasses.fields(SECTIONS[section])}
    ruled = {k for s, k in (*NEW_KEYS, *CONDITIONAL_KEYS) if s == section}
    assert keys - KNOWN[section] <= ruled, f"[{section}] keys without a rule: {sorted(keys - KNOWN[section] - ruled)}"


def test_a_new_key_is_compared_once_a_file_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The NEW_KEYS rule itself, shown on an existing key treated as new: left out at the value studies had before
    it existed, compared at any other."""
    monkeypatch.setattr("search._compat.NEW_KEYS", {("space", "keep_first_last"): True})
    as_before = parse_config(text({}), base_dir=REPO / "studies")
    assert "keep_first_last" not in section(as_before, "space")
    flipped = text({}).replace("keep_first_last = true", "keep_first_last = false")
    assert section(parse_config(flipped, base_dir=REPO / "studies"), "space")["keep_first_last"] is False


def test_input_range_is_compared_once_set_and_the_cached_batches_keep_their_key() -> None:
    """Studies ran without [synthetic] input_range: they keep their fingerprint and their synthetic batches' key
    (stored below, computed before the key existed); a file that sets it is another study, and the message says
    how to resume the old one as it ran."""
    from search._trial import batch_key

    plain = parse_config(text({}), base_dir=REPO / "studies")
    assert batch_key(plain, "abc") == "synth-0e04f268494316debca83703d3761eee"
    assert plain.fingerprint() == STORED["quickstart"]
    bounded = parse_config(text({}).replace("[synthetic]\n", "[synthetic]\ninput_range = [-0.8, 1.8]\n", 1),
                           base_dir=REPO / "studies")  # fmt: skip
    assert bounded.fingerprint() != plain.fingerprint() and batch_key(bounded, "abc") != batch_key(plain, "abc")
    changed, hint = what_changed(plain.comparable(), bounded)
    assert changed == "synthetic" and hint is not None and "remove input_range from [synthetic]" in hint
