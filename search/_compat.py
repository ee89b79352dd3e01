"""What makes two study files comparable: one description, from which both the fingerprint and the message that
names what changed are derived.

A study is resumed only with a file whose trials would score as the stored ones did. ``PARTS`` lists what decides
a trial's result; each part is compared when its condition holds, that is when the study uses what it describes
(a study that quantizes no activation does not depend on how activations are rounded). ``CONDITIONAL_KEYS`` says
the same for single keys of a section. Two rules keep stored studies resumable as the code grows:

- A change in how trials are computed is a new version of a rule string (``SIZE_RULE``, ``ROUNDING_RULE``,
  ``LATENCY_RULE``: "name/N"), compared as a part: exactly the studies it affects get a new fingerprint.
- A key added to a section from now on goes in ``NEW_KEYS`` with the value every study had before it existed: it
  is compared once a file's value differs from that one, so a stored study keeps its fingerprint when the file
  says what the study did (a new default is a difference, and says what changed). A test holds stored ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from frandi_core import ACT_SIZE_RULE, LATENCY_RULE, ROUNDING_RULE, SIZE_RULE

if TYPE_CHECKING:
    from ._config import StudyConfig

Condition = Callable[["StudyConfig"], bool]


def _always(cfg: StudyConfig) -> bool:
    return True


def _never(cfg: StudyConfig) -> bool:
    return False


def quantizes_activations(cfg: StudyConfig) -> bool:
    """Whether any layer may get quantized activations: searched act_bits, or a fixed entry naming act_bits."""
    fixed = cfg.space.fixed.values()
    return cfg.space.act_bits != (32,) or any(isinstance(v, dict) and "act_bits" in v for v in fixed)


def uses_latency(cfg: StudyConfig) -> bool:
    """Whether trials predict their latency: a latency objective or budget."""
    return "latency" in cfg.study.objectives or cfg.study.max_latency_ms is not None


def size_rule(cfg: StudyConfig) -> str:
    """How the size objective is counted: a study that may quantize activations also counts their steps."""
    return ACT_SIZE_RULE if quantizes_activations(cfg) else SIZE_RULE


# How an allocated space spreads a level whose activations are quantized: the level carries activation bits, and the
# sensitivity rule keeps BOPs (latency in a latency study) as well as bytes. Compared only by allocated studies that
# quantize activations (before it, their searched layers silently kept fp32 inputs: not comparable).
ALLOCATION_RULE = "level-act-bits/1"


def allocates_activations(cfg: StudyConfig) -> bool:
    """Whether an allocated space spreads quantized activation bits (ALLOCATION_RULE)."""
    return cfg.space.mode == "allocated" and any(b != 32 for b in cfg.space.act_bits)


def _allocated(cfg: StudyConfig) -> bool:
    return cfg.space.mode == "allocated"


def _prunes_channels(cfg: StudyConfig) -> bool:
    return cfg.space.prunes_channels


def _allocates_channels(cfg: StudyConfig) -> bool:
    return cfg.space.prunes_channels and cfg.space.mode == "allocated"


# (section, key) -> when the key decides a result; every other key of a compared section always does.
CONDITIONAL_KEYS: dict[tuple[str, str], Condition] = {
    ("space", "act_bits"): quantizes_activations,
    ("recovery", "calibration"): quantizes_activations,
    ("recovery", "learn_act_steps"): quantizes_activations,
    ("space", "mode"): _allocated,
    ("space", "rules"): _allocated,
    ("space", "offsets"): _allocated,
    ("space", "warm_starts"): _never,  # chooses the first trials, once; decides no trial's result
    ("space", "channels"): _prunes_channels,
    ("space", "channels_step"): _prunes_channels,
    ("space", "channels_multiple"): _prunes_channels,
    ("space", "channel_rules"): _allocates_channels,
}
# (section, key) of keys added after the rules above -> the value every study had before: compared when not that.
NEW_KEYS: dict[tuple[str, str], Any] = {
    ("recovery", "weight_clip"): "max",  # weights were clipped at their largest magnitude
    ("synthetic", "input_range"): None,  # synthetic inputs were never bounded
}


def _json(data: Any) -> Any:
    return json.loads(json.dumps(data, default=list))


def section(cfg: StudyConfig, name: str) -> dict[str, Any]:
    """A compared section as plain data: the keys that decide this study's results."""
    data = _json(dataclasses.asdict(getattr(cfg, name)))
    for (sec, key), applies in CONDITIONAL_KEYS.items():
        if sec == name and not applies(cfg):
            del data[key]
    for (sec, key), before in NEW_KEYS.items():
        if sec == name and data.get(key) == _json(before):
            del data[key]
    return data


@dataclass(frozen=True)
class Part:
    """One thing that decides a trial's result: its key in the fingerprint, its name in messages, its value,
    when it is compared, and (where it differs) the value a message shows."""

    key: str
    label: str
    value: Callable[[StudyConfig], Any]
    applies: Condition = _always
    shown: Callable[[StudyConfig], Any] | None = None


def _model(cfg: StudyConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg.model) | {"weights": _file_digest(cfg)}


def _file_digest(cfg: StudyConfig) -> str:
    try:
        return hashlib.sha256(cfg.weights_path.read_bytes()).hexdigest()
    except OSError:
        return "missing"


PARTS: tuple[Part, ...] = (
    Part("objectives", "study.objectives", lambda c: list(c.study.objectives)),
    Part("min_ratio", "study.min_ratio", lambda c: c.study.min_ratio),
    Part("score", "study.score", lambda c: c.study.score, lambda c: c.study.score != "od"),
    Part("max_bops", "study.max_bops", lambda c: c.study.max_bops, lambda c: c.study.max_bops is not None),
    Part("model", "model", _model, shown=lambda c: dataclasses.asdict(c.model)),  # the weights: "the model weights"
    Part("synthetic", "synthetic", lambda c: section(c, "synthetic")),
    Part("space", "space", lambda c: section(c, "space")),
    Part("recovery", "recovery", lambda c: section(c, "recovery")),
    Part("size", "size accounting", size_rule),
    Part("rounding", "activation rounding", lambda c: ROUNDING_RULE, quantizes_activations),
    Part("latency", "latency", lambda c: dataclasses.asdict(c.latency) | {"rule": LATENCY_RULE}, uses_latency),
    Part("max_latency_ms", "study.max_latency_ms", lambda c: c.study.max_latency_ms, uses_latency),
    Part("allocation", "allocation", lambda c: ALLOCATION_RULE, allocates_activations),
)


def fingerprint(cfg: StudyConfig) -> str:
    """Hash of everything that decides a trial's result (``PARTS``); name, storage, n_trials, sampler, timeout
    and [run] are not in it."""
    keep = {p.key: p.value(cfg) for p in PARTS if p.applies(cfg)}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=list).encode()).hexdigest()[:16]


def what_changed(stored: dict[str, Any], cfg: StudyConfig) -> tuple[str, str | None]:
    """The parts of ``cfg`` that differ from what a study stored (its ``comparable``), named; and where the study
    ran before a key existed, how the file says what it did (else None)."""
    new = comparable(cfg)
    changed = [k for k in new if stored.get(k) != new[k]]
    older = [(sec, key, before) for (sec, key), before in NEW_KEYS.items()
             if sec in changed and key in new[sec] and key not in (stored.get(sec) or {})]  # fmt: skip
    how = [f"remove {key} from [{sec}]" if before is None else f"write {key} = {json.dumps(before)} in [{sec}]"
           for sec, key, before in older]  # fmt: skip
    names = " and ".join(f"{sec}.{key}" for sec, key, _ in older)
    hint = f"it ran before {names} could be chosen: {' and '.join(how)} to resume it as it ran" if older else None
    return (", ".join(changed) if changed else "the model weights"), hint


def comparable(cfg: StudyConfig) -> dict[str, Any]:
    """What the fingerprint covers, by name, as plain data: stored with the study to say what changed."""
    return {p.label: _json((p.shown or p.value)(cfg)) for p in PARTS if p.applies(cfg)}
