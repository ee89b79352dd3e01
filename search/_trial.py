"""What a worker loads once (teacher, synthetic batches, teacher targets) and what it does per trial."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass
from functools import cached_property

import torch

from frandi_core import (
    LATENCY_RULE,
    OUTPUT,
    LatencyTable,
    ModelSpec,
    Policy,
    SyntheticData,
    bops,
    compress,
    feature_discrepancy,
    feature_regression_,
    latency_target,
    layer_macs,
    load_model,
    measure_latency,
    model_outputs,
    model_size,
    output_discrepancy,
    synthesize,
    teacher_targets,
    weights_digest,
)
from storage import Storage

from ._allocate import AllocatedSpace, study_space
from ._compat import section
from ._config import StudyConfig
from ._records import TrialRecord
from ._space import SearchSpace


def batch_key(cfg: StudyConfig, digest: str) -> str:
    """Content key of a study's synthetic batches: model weights, input shape, synthetic config and seed."""
    blob = json.dumps(
        {"weights": digest, "shape": cfg.model.input_shape, "synthetic": section(cfg, "synthetic")},
        sort_keys=True,
        default=list,
    )
    return "synth-" + hashlib.sha256(blob.encode()).hexdigest()[:32]


def _to_bytes(data: SyntheticData) -> bytes:
    buf = io.BytesIO()
    torch.save({"recovery": data.recovery, "heldout": data.heldout}, buf)
    return buf.getvalue()


def _from_bytes(raw: bytes) -> SyntheticData:
    d = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    return SyntheticData(recovery=d["recovery"], heldout=d["heldout"])


def model_spec(cfg: StudyConfig) -> ModelSpec:
    return ModelSpec(
        cfg.model.architecture, str(cfg.weights_path), dict(cfg.model.kwargs), cfg.model.input_shape
    )


def cached_batches(
    cfg: StudyConfig,
    storage: Storage,
    teacher: torch.nn.Module,
    *,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[str, SyntheticData]:
    """The study's synthetic batches from the shared cache; exactly one worker generates a missing one."""
    key = batch_key(cfg, weights_digest(teacher))

    def make() -> bytes:
        return _to_bytes(
            synthesize(teacher, cfg.model.input_shape, cfg.synthetic, device=device, progress=progress)
        )

    raw = storage.get_or_create_blob(
        key,
        make,
        what="the synthetic batches",
        meta={"kind": "synthetic", "shape": list(cfg.model.input_shape), "synthetic": asdict(cfg.synthetic)},
    )
    return key, _from_bytes(raw)


@dataclass(frozen=True)
class TrialResult:
    """One evaluated policy: the study's score (the first objective) and OD of the weights kept, OD before
    recovery, size, bit operations, which weights were kept ("recovered", or "compressed" when FR raised the
    held-out score), and where the time went."""

    od: float
    od_before: float
    size_bits: int
    ratio: float
    density: float
    seconds: dict[str, float]
    bops: int
    score: float
    kept: str = "recovered"
    latency_ms: float | None = None  # predicted on the study's [latency] target, if the study uses latency


def cached_latency(cfg: StudyConfig, storage: Storage, batch_key: str, teacher: torch.nn.Module) -> LatencyTable:
    """The study's latency table on its [latency] target, from the storage; exactly one worker measures it (on
    CPU, a copy of the teacher), so every trial of the study is predicted from the same table."""
    lat = cfg.latency
    key = f"latency/{batch_key}/{latency_target(lat.threads, lat.batch)}/repeats={lat.repeats}/{LATENCY_RULE}"

    def make() -> bytes:
        model = copy.deepcopy(teacher).cpu().eval()
        example = torch.zeros(1, *cfg.model.input_shape)
        return measure_latency(model, example, threads=lat.threads, batch=lat.batch, repeats=lat.repeats).to_json(
        ).encode()

    raw = storage.get_or_create_blob(key, make, what="the latency table", meta={"kind": "latency"})
    return LatencyTable.from_json(raw.decode())


class TrialRunner:
    """Holds the teacher, the cached batches and the teacher's targets; evaluates policies.

    ``teacher`` and ``batches`` (cached_batches' result): what the caller already loaded for this study, on
    ``device``, reused instead of loading them again (the teacher's gradients are switched off here).
    """

    def __init__(
        self,
        cfg: StudyConfig,
        storage: Storage,
        *,
        device: str = "cpu",
        progress: bool = False,
        teacher: torch.nn.Module | None = None,
        batches: tuple[str, SyntheticData] | None = None,
    ) -> None:
        self.cfg = cfg
        self._fingerprint: str | None = None  # cfg.fingerprint(), once a trial needs it (it reads the weights)
        self.device = torch.device(device)
        self.teacher = teacher if teacher is not None else load_model(model_spec(cfg), device=self.device)
        if cfg.run.channels_last:  # students are copies of the teacher: they inherit the layout
            self.teacher = self.teacher.to(memory_format=torch.channels_last)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.storage = storage
        self.batch_key, data = batches or cached_batches(cfg, storage, self.teacher, device=device, progress=progress)
        self.heldout = self._layout(data.heldout.to(self.device))
        self.targets = teacher_targets(
            self.teacher, self._layout(data.recovery.to(self.device)), cfg.recovery.layers or None
        )
        self.teacher_out = model_outputs(self.teacher, self.heldout)
        self.macs = layer_macs(self.teacher, cfg.model.input_shape)
        self.latency = cached_latency(cfg, storage, self.batch_key, self.teacher) if cfg.uses_latency else None

    @cached_property
    def space(self) -> SearchSpace | AllocatedSpace:
        """The study's sampling space, built when first sampled from: scoring one policy (export, evaluate) needs
        none (an allocated space measures or reads its sensitivity table)."""
        base = SearchSpace.of_model(self.cfg.space, self.teacher, self.cfg.model.input_shape)
        return study_space(
            self.cfg.space, self.storage, self.batch_key, self.teacher, base, self.heldout, self.teacher_out,
            self.targets.inputs, method=self.cfg.recovery.calibration, latency=self.latency,
            weight_clip=self.cfg.recovery.weight_clip, max_bops=self.cfg.study.max_bops,
            max_latency_ms=self.cfg.study.max_latency_ms,
        )

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = self.cfg.run.channels_last and x.dim() == 4
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def student(self, policy: Policy) -> tuple[torch.nn.Module, TrialResult]:
        """Compress (activation ranges from the recovery batch), recover with FR, measure OD on the held-out batch;
        returns the student (still parametrized).

        Never worse than no recovery: when FR raises the held-out score, the weights before FR are put back.
        """
        t0 = time.perf_counter()
        rec = self.cfg.recovery
        student = compress(
            self.teacher, policy, calibration=self.targets.inputs, method=rec.calibration, weight_clip=rec.weight_clip,
            channel_multiple=self.cfg.space.channels_multiple,
        )
        for p in student.parameters():
            p.requires_grad_(True)
        t1 = time.perf_counter()
        od_before = output_discrepancy(student, self.heldout, self.teacher_out)
        score_before = self.score(student, od_before)
        t2 = time.perf_counter()
        before = {k: v.detach().clone() for k, v in student.state_dict().items()}
        feature_regression_(student, self.targets, self.cfg.recovery, compile_loss=self.cfg.run.compile)
        t3 = time.perf_counter()
        od = output_discrepancy(student, self.heldout, self.teacher_out)
        score, kept = self.score(student, od), "recovered"
        if score > score_before:
            student.load_state_dict(before)
            od, score, kept = od_before, score_before, "compressed"
        t4 = time.perf_counter()
        pruned = bool(policy.channels())
        size = model_size(student, policy, original=self.teacher) if pruned else model_size(self.teacher, policy)
        macs = layer_macs(student, self.cfg.model.input_shape) if pruned else self.macs
        seconds = {
            "compress": t1 - t0,
            "od_before": t2 - t1,
            "recover": t3 - t2,
            "od": t4 - t3,
            "total": t4 - t0,
        }
        scale = {n: m / self.macs[n] for n, m in macs.items() if self.macs.get(n)} if pruned else None
        latency = None if self.latency is None else self.latency.predict(policy, scale)
        result = TrialResult(
            od, od_before, size.bits, size.ratio, size.density, seconds, bops(macs, policy), score, kept, latency
        )
        return student, result

    def score(self, student: torch.nn.Module, od: float) -> float:
        """The study's score of a student whose OD is ``od``: OD, or OD plus OD on the FR feature layers."""
        if self.cfg.study.score == "od":
            return od
        layers = [n for n in self.targets.layers if n != OUTPUT]
        return od + feature_discrepancy(self.teacher, student, self.heldout, layers)

    def evaluate(self, policy: Policy) -> TrialResult:
        return self.student(policy)[1]

    def policy_key(self, policy: Policy) -> str:
        """What makes two trials' results the same measurement: the policy's digest under the study file's
        fingerprint (a trial run with another study file, under --force, is never taken for this one's)."""
        if self._fingerprint is None:
            self._fingerprint = self.cfg.fingerprint()
        return hashlib.sha256(f"{self._fingerprint}/{policy.digest()}".encode()).hexdigest()[:32]


def reused_result(record: TrialRecord, score: float) -> TrialResult:
    """The result a finished trial recorded, as a trial that measured the same policy reports it: every timing 0,
    since nothing ran."""
    return TrialResult(
        od=record.od,
        od_before=record.od_before,
        size_bits=int(record.size_bits),
        ratio=record.ratio,
        density=record.density,
        seconds={k: 0.0 for k in record.seconds or {"total": 0.0}},
        bops=int(record.bops or 0),
        score=score,
        kept=record.kept,
        latency_ms=record.latency_ms,
    )
