"""Study files: TOML loaded into frozen dataclasses that reject unknown keys and wrong types."""

from __future__ import annotations

import dataclasses
import importlib.util
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frandi_core import FrandiError, RecoveryConfig, SynthConfig, input_bounds

from . import _compat
from ._duration import parse_duration
from ._errors import ConfigError

SAMPLERS = ("tpe", "nsga2", "random")
OBJECTIVES = ("od", "size", "bops", "latency")
MODES = ("layerwise", "allocated")
RULES = ("uniform", "global", "lamp", "erk", "sensitivity")
SCORES = ("od", "od+feature_od")
CHANNEL_RULES = ("uniform", "importance")  # allocated: every group at the level, or one L2-importance threshold


@dataclass(frozen=True)
class StudySection:
    """[study]: what to search and where trials are stored."""

    name: str
    storage: str = "sqlite:///runs/frandi.db"  # relative sqlite paths are relative to the study file
    sampler: str = "tpe"
    seed: int = 0
    n_trials: int = 50
    objectives: tuple[str, ...] = ("od", "size")  # "od" first, then "size", "bops", "latency"; ("od",) needs a budget
    min_ratio: float | None = None  # constraint: compression ratio >= min_ratio
    max_bops: float | None = None  # constraint: bit operations (MACs x weight bits x activation bits) <= max_bops
    max_latency_ms: float | None = None  # constraint: predicted latency on the [latency] target <= max_latency_ms
    baselines: tuple[float, ...] = (0.25, 0.5, 0.75)  # uniform sparsities enqueued first, at the top bits
    artifacts: str | None = None  # folder for files export --attach stores (default: beside the SQLite database)
    score: str = "od"  # the first objective: OD (eq. 3), or "od+feature_od" (plus OD on the FR feature layers)
    timeout: str | None = None  # e.g. "90m": no trial starts after it (from the command's start); not fingerprinted


@dataclass(frozen=True)
class ModelSection:
    """[model]: the user's trained model."""

    architecture: str
    weights: str  # relative to the study file
    input_shape: tuple[int, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SpaceSection:
    """[space]: which layers are searched and over which settings.

    Each compressible layer gets, in this order of precedence: dense 8-bit if it is the first or last
    layer and ``keep_first_last``; the setting of the first ``fixed`` entry naming it (exact name before
    ``re:`` pattern); a searched setting if it matches ``layers``; otherwise it stays dense fp32.

    ``mode = "layerwise"`` searches each layer's setting on its own; ``"allocated"`` searches one global
    (sparsity, weight bits, activation bits) level spread over the searched layers by a searched ``rules`` entry,
    plus small searched offsets for the ``offsets`` most sensitive layers, and starts with ``warm_starts`` trials:
    the most promising policy of any rule (by OD before recovery) at each of that many budgets (latency, BOPs or
    size: what the study is constrained by) spread over the whole range. ``rules``, ``offsets`` and
    ``warm_starts`` mean nothing to a layerwise space: set there, they are refused, not ignored.
    """

    layers: tuple[str, ...] = ("re:.*",)
    fixed: dict[str, Any] = field(default_factory=dict)
    sparsity: tuple[float, ...] = (0.0, 0.9)
    sparsity_step: float = 0.05
    bits: tuple[int, ...] = (4, 6, 8)  # 32 keeps a layer in fp32
    act_bits: tuple[int, ...] = (32,)  # input-activation bits of searched layers; 32 keeps them fp32
    keep_first_last: bool = True
    mode: str = "layerwise"  # or "allocated": a global level spread over layers by a rule (see search/_allocate.py)
    rules: tuple[str, ...] = RULES  # allocated: the allocation rules the search chooses from
    offsets: int = 0  # allocated: the most sensitive layers that get searched per-layer offsets
    warm_starts: int = 12  # allocated: trials enqueued first, one per size bin (see search/_allocate.py)
    channels: tuple[float, ...] = (0.0, 0.0)  # fraction of output channels removed per coupled group: [low, high]
    channels_step: float = 0.125
    channels_multiple: int = 1  # each pruned group keeps a multiple of this many channels (8: faster CPU kernels)
    channel_rules: tuple[str, ...] = CHANNEL_RULES  # allocated: how a channel level is spread over the groups

    @property
    def prunes_channels(self) -> bool:
        """Whether channels are searched (a range above 0): only then do trials sample them."""
        return any(c > 0 for c in self.channels)


ALLOCATED_ONLY = ("rules", "offsets", "warm_starts")  # keys a layerwise study refuses if set (never fingerprints)
CHANNEL_OPTIONS = ("channels_step", "channels_multiple", "channel_rules")  # refused if set without space.channels


@dataclass(frozen=True)
class LatencySection:
    """[latency]: the target a latency objective or budget is predicted for (onnxruntime on this CPU), from a
    per-layer table measured once per study (``frandi_core.measure_latency``)."""

    threads: int = 1  # onnxruntime intra-op threads
    batch: int = 1  # inputs per run
    repeats: int = 30  # timed runs per table entry (medians)


@dataclass(frozen=True)
class RunSection:
    """[run]: how workers run here; changes to it never invalidate past trials."""

    devices: tuple[str, ...] = ("cpu",)
    workers: int = 1
    threads: int = 0  # torch threads per worker; 0 = cores // workers
    heartbeat_interval: int = 10
    grace_period: int = 30
    channels_last: bool = False  # NHWC tensors for 4-D models: faster convolutions on CUDA (tensor cores)
    compile: bool = False  # torch.compile the FR loss: compiles 10-25 s per worker, then a faster step


@dataclass(frozen=True)
class StudyConfig:
    """A whole study file."""

    study: StudySection
    model: ModelSection
    synthetic: SynthConfig = SynthConfig()
    space: SpaceSection = SpaceSection()
    recovery: RecoveryConfig = RecoveryConfig()
    latency: LatencySection = LatencySection()
    run: RunSection = RunSection()
    base_dir: Path = Path(".")

    def fingerprint(self) -> str:
        """Hash of everything that decides a trial's result (search/_compat.py says what, and when)."""
        return _compat.fingerprint(self)

    def comparable(self) -> dict[str, Any]:
        """What the fingerprint covers, by name, as plain data: to say which part changed."""
        return _compat.comparable(self)

    @property
    def weights_path(self) -> Path:
        return (self.base_dir / self.model.weights).resolve()

    @property
    def allocates_activations(self) -> bool:
        """Whether an allocated space spreads quantized activation bits (ALLOCATION_RULE)."""
        return _compat.allocates_activations(self)

    @property
    def uses_latency(self) -> bool:
        """Whether trials predict their latency: a latency objective or budget."""
        return _compat.uses_latency(self)

    @property
    def size_rule(self) -> str:
        """How this study's size objective is counted (ACT_SIZE_RULE when activations may be quantized)."""
        return _compat.size_rule(self)

    @property
    def quantizes_activations(self) -> bool:
        """Whether any layer may get quantized activations: searched act_bits, or a fixed entry naming act_bits."""
        return _compat.quantizes_activations(self)


# scalar type -> (whether a TOML value is one: true is no integer here, an integer is a float), what it must be
_SCALARS: dict[type, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
}


def _check(value: Any, tp: Any, key: str) -> Any:
    """Check (and lightly coerce) one TOML value against a type hint; raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if tp is Any:
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"'{key}' must be a list, got {type(value).__name__} {value!r}")
        (item, *_rest) = typing.get_args(tp)
        return tuple(_check(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a table, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp in _SCALARS:
        fits, what = _SCALARS[tp]
        if not fits(value):
            raise ConfigError(f"'{key}' must be {what}, got {type(value).__name__} {value!r}")
        return float(value) if tp is float else value
    raise TypeError(f"unsupported config type {tp!r}")


def _parse_section(cls: type, data: Any, name: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"[{name}] must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "base_dir"}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key '{name}.{unknown[0]}'; known keys of [{name}]: {', '.join(fields)}")
    missing = [
        f.name
        for f in fields.values()
        if f.name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing key '{name}.{missing[0]}' in the study file")
    values = {k: _check(v, hints[k], f"{name}.{k}") for k, v in data.items()}
    try:
        return cls(**values)
    except FrandiError as e:
        raise ConfigError(f"[{name}] {e}") from None


def _validate(cfg: StudyConfig) -> None:
    s, sp = cfg.study, cfg.space
    if not s.name.strip():
        raise ConfigError("study.name is empty; name the study, e.g. name = \"resnet-digits\"")
    if s.sampler not in SAMPLERS:
        raise ConfigError(f"study.sampler '{s.sampler}' is unknown; use one of {', '.join(SAMPLERS)}")
    if (
        not s.objectives
        or any(o not in OBJECTIVES for o in s.objectives)
        or len(set(s.objectives)) < len(s.objectives)
    ):
        raise ConfigError(
            f'study.objectives {list(s.objectives)} is invalid; use "od" then any of "size", "bops", "latency", '
            'each once, e.g. ["od", "size"] or ["od", "latency"]'
        )
    if s.score not in SCORES:
        raise ConfigError(f"study.score '{s.score}' is unknown; use one of {', '.join(SCORES)}")
    if s.objectives[0] != "od":
        raise ConfigError('study.objectives must start with "od" (the label-free accuracy proxy)')
    if s.objectives == ("od",) and s.min_ratio is None and s.max_bops is None and s.max_latency_ms is None:
        raise ConfigError(
            'study.objectives = ["od"] needs a budget: set study.min_ratio (e.g. 2.0), study.max_bops or '
            "study.max_latency_ms"
        )
    if s.max_latency_ms is not None and s.max_latency_ms <= 0:
        raise ConfigError(f"study.max_latency_ms must be > 0 (milliseconds per batch), got {s.max_latency_ms}")
    lat = cfg.latency
    if lat.threads < 1 or lat.batch < 1 or lat.repeats < 1:
        raise ConfigError(
            f"latency.threads, latency.batch and latency.repeats must be >= 1, got {lat.threads}, {lat.batch}, "
            f"{lat.repeats}"
        )
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if cfg.uses_latency and missing:
        raise ConfigError(
            f"a latency objective or study.max_latency_ms is measured with onnxruntime on the exported model, and "
            f"{', '.join(missing)} is not installed; pip install 'frandi[onnx]', or remove them"
        )
    if s.min_ratio is not None and s.min_ratio < 1:
        raise ConfigError(f"study.min_ratio must be >= 1, got {s.min_ratio}")
    if s.max_bops is not None and s.max_bops <= 0:
        raise ConfigError(f"study.max_bops must be > 0 (bit operations, e.g. 2.5e9), got {s.max_bops}")
    if s.n_trials < 1:
        raise ConfigError(f"study.n_trials must be >= 1, got {s.n_trials}")
    if s.timeout is not None:
        try:
            parse_duration(s.timeout, "study.timeout")
        except FrandiError as e:
            raise ConfigError(str(e)) from None
    lo, hi = (sp.sparsity + (None, None))[:2] if len(sp.sparsity) == 2 else (None, None)
    if lo is None or hi is None or not 0 <= lo <= hi < 1:
        raise ConfigError(
            f"space.sparsity must be [low, high] with 0 <= low <= high < 1, got {list(sp.sparsity)}"
        )
    if not 0 < sp.sparsity_step < 1:
        raise ConfigError(f"space.sparsity_step must be in (0, 1), got {sp.sparsity_step}")
    for key, choices in (("bits", sp.bits), ("act_bits", sp.act_bits)):
        if not choices:
            raise ConfigError(f"space.{key} must list at least one bit-width (2..8, or 32 for fp32)")
        for b in choices:
            if not (2 <= b <= 8 or b == 32):
                raise ConfigError(f"space.{key} has {b}, not a bit-width; use 2..8, or 32 to keep fp32")
    if sp.mode not in MODES:
        raise ConfigError(f"space.mode '{sp.mode}' is unknown; use one of {', '.join(MODES)}")
    if not sp.rules or any(r not in RULES for r in sp.rules) or len(set(sp.rules)) < len(sp.rules):
        raise ConfigError(f"space.rules {list(sp.rules)} is invalid; choose from {list(RULES)}, each once")
    if sp.offsets < 0 or sp.warm_starts < 0:
        raise ConfigError(
            f"space.offsets and space.warm_starts must be >= 0, got {sp.offsets} and {sp.warm_starts}"
        )
    lo, hi = (sp.channels + (None, None))[:2] if len(sp.channels) == 2 else (None, None)
    if lo is None or hi is None or not 0 <= lo <= hi < 1:
        raise ConfigError(
            f"space.channels must be [low, high], the fraction of output channels removed, with "
            f"0 <= low <= high < 1, got {list(sp.channels)}"
        )
    if not 0 < sp.channels_step < 1:
        raise ConfigError(f"space.channels_step must be in (0, 1), got {sp.channels_step}")
    if sp.channels_multiple < 1:
        raise ConfigError(f"space.channels_multiple must be >= 1 (channels), got {sp.channels_multiple}")
    rules = sp.channel_rules
    if not rules or any(r not in CHANNEL_RULES for r in rules) or len(set(rules)) < len(rules):
        raise ConfigError(f"space.channel_rules {list(rules)} is invalid; choose from {list(CHANNEL_RULES)}, each once")
    if sp.prunes_channels and s.score != "od":
        raise ConfigError(
            f"study.score '{s.score}' compares the teacher's and the student's features, whose channels "
            "space.channels removes; use score = \"od\" with space.channels"
        )
    default = SpaceSection()
    if sp.mode == "layerwise":
        for key in (*ALLOCATED_ONLY, "channel_rules"):  # meaningless per layer: refused, never ignored
            if getattr(sp, key) != getattr(default, key):
                raise ConfigError(f'space.{key} needs space.mode = "allocated"; set it, or remove space.{key}')
    if not sp.prunes_channels:
        for key in CHANNEL_OPTIONS:  # meaningless without channel pruning: refused, never ignored
            if getattr(sp, key) != getattr(default, key):
                raise ConfigError(f"space.{key} needs space.channels (a range above 0); set it, or remove space.{key}")
    for level in s.baselines:
        if not 0 <= level < 1:
            raise ConfigError(f"study.baselines has sparsity {level}, outside [0, 1)")
    if len(cfg.model.input_shape) < 1 or any(d < 1 for d in cfg.model.input_shape):
        raise ConfigError(
            f"model.input_shape must be positive sizes without the batch, got {cfg.model.input_shape}"
        )
    if cfg.synthetic.input_range is not None:
        try:
            input_bounds(cfg.synthetic.input_range, cfg.model.input_shape)
        except FrandiError as e:
            raise ConfigError(str(e)) from None
    r = cfg.run
    if r.workers < 1:
        raise ConfigError(f"run.workers must be >= 1, got {r.workers}")
    if r.threads < 0:
        raise ConfigError(f"run.threads must be >= 0 (0 = cores / workers), got {r.threads}")
    if not r.devices:
        raise ConfigError("run.devices names no device; write e.g. cpu or cuda:0,cuda:1")
    if r.heartbeat_interval < 1 or r.grace_period <= r.heartbeat_interval:
        raise ConfigError(
            "run.grace_period must be larger than run.heartbeat_interval (both in seconds, >= 1)"
        )


SECTIONS = {
    "study": StudySection,
    "model": ModelSection,
    "synthetic": SynthConfig,
    "space": SpaceSection,
    "recovery": RecoveryConfig,
    "latency": LatencySection,
    "run": RunSection,
}


def parse_config(text: str, *, base_dir: Path = Path("."), source: str = "<string>") -> StudyConfig:
    """Parse a study file's text; relative paths in it are relative to ``base_dir``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source} is not valid TOML ({e}); fix the syntax") from None
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}] in {source}; sections are {', '.join(SECTIONS)}")
    for required in ("study", "model"):
        if required not in data:
            raise ConfigError(f"{source} has no [{required}] section")
    parts = {name: _parse_section(cls, data[name], name) for name, cls in SECTIONS.items() if name in data}
    cfg = StudyConfig(**parts, base_dir=base_dir)
    _validate(cfg)
    return cfg


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate a study file."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"study file '{p}' is a folder; give the .toml file in it")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read study file '{p}' ({e.strerror}); check the path") from None
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark, as some editors write, is not an error
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"study file '{p}' is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); save it as UTF-8"
        ) from None
    return parse_config(text, base_dir=p.resolve().parent, source=str(p))


def replace(cfg: StudyConfig, section: str, **changes: Any) -> StudyConfig:
    """A copy of ``cfg`` with some keys of one section changed (CLI overrides such as --n-trials), checked as a
    study file is."""
    try:
        new = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})
    except FrandiError as e:  # a section's own check (SynthConfig, RecoveryConfig)
        raise ConfigError(f"[{section}] {e}") from None
    _validate(new)
    return new
