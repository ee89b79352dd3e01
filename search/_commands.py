"""What each CLI command does, given a validated StudyConfig; printing lives here, parsing in cli.py."""

from __future__ import annotations

import io
import json
import secrets
import socket
import sys
import time
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from frandi_core import (
    Policy,
    activation_settings,
    bn_kl_loss,
    integer_layers,
    load_model,
    model_outputs,
    onnx_fusion,
    onnx_parity,
    pack,
    point_settings,
    pruned_channels,
    strip_,
    to_onnx,
    write_atomic,
)

from ._artifacts import artifact_dir, artifact_store, attach
from ._config import StudyConfig
from ._device import check_device, set_threads
from ._duration import parse_duration
from ._errors import ExportError, UsageError
from ._launch import check_model, launch
from ._open import open_for
from ._optuna import fast_reads
from ._records import FAIL_REASON, PACKED, TrialRecord, result_attrs
from ._report import format_rows, front_rows
from ._report import status as status_of
from ._rerun import finished_trials, rerun
from ._sensitivity import cached_sensitivity
from ._sensitivity_view import format_table, heatmap
from ._study import open_study, to_start_key
from ._trial import TrialRunner, cached_batches, model_spec
from ._worker import Deadline, stale_trials, work


def search(
    cfg: StudyConfig, storage: str | None, *, force: bool, progress: bool, fmt: str, hard_timeout: float | None = None
) -> int:
    t0 = time.perf_counter()
    deadline = Deadline.after(timeout_of(cfg), hard_timeout)
    launch(cfg, storage_override=storage, force=force, progress=progress, deadline=deadline)
    wall = time.perf_counter() - t0
    with open_for(cfg, storage, mode="read") as st:  # launch closed its storage: report from a fresh one
        study = open_study(cfg, st)
        s = status_of(study, cfg.study.n_trials)
        front = front_rows(study)
        failed = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.FAIL]
    print(
        f"study '{s['study']}': {s['complete']} finished, {s['fail']} failed, {s['running']} running "
        f"({wall:.0f} s this run)"
    )
    print(format_rows(front, fmt))
    if s["complete"] < cfg.study.n_trials and deadline.passed():
        print(
            f"frandi: time limit reached: the study holds {s['complete']} of {cfg.study.n_trials} "
            "finished trials; run the same command again to resume",
            file=sys.stderr,
        )
        return 0
    if s["complete"] < cfg.study.n_trials and not s["running"]:
        why = (
            f"last failure: {failed[-1].user_attrs.get(FAIL_REASON, 'unknown')}"
            if failed
            else "a worker stopped before creating its trial; run the same command again to start it"
        )
        print(
            f"frandi: error: the study holds {s['complete']} of {cfg.study.n_trials} finished trials; {why}",
            file=sys.stderr,
        )
        return 1
    return 0


def worker(
    cfg: StudyConfig, storage: str | None, *, device: str, threads: int | None, hard_timeout: float | None = None
) -> int:
    deadline = Deadline.after(timeout_of(cfg), hard_timeout)
    check_device(device)
    index = 1 + secrets.randbelow(2**31)  # its own sampler seed: 64 joining workers share one about 1 in 270,000
    with open_for(cfg, storage, mode="write") as st:
        n = work(cfg, st, device=device, worker_index=index, threads=threads, progress=True, deadline=deadline)
    print(f"worker done: ran {n} trial(s)" + ("; time limit reached" if deadline.passed() else ""))
    return 0


def timeout_of(cfg: StudyConfig) -> float | None:
    """The study's soft time limit in seconds ([study] timeout, or --timeout), None without one."""
    return None if cfg.study.timeout is None else parse_duration(cfg.study.timeout, "study.timeout")


def status(cfg: StudyConfig, storage: str | None, *, fmt: str) -> int:
    with open_for(cfg, storage, mode="read") as st:
        study = open_study(cfg, st)
        to_start = st.get_counter(to_start_key(study.study_name))
        s = status_of(study, cfg.study.n_trials, to_start, len(stale_trials(study)))
    print(json.dumps(s, indent=2) if fmt == "json" else "\n".join(f"{k:>18}: {v}" for k, v in s.items()))
    return 0


def pareto(cfg: StudyConfig, storage: str | None, *, fmt: str) -> int:
    with open_for(cfg, storage, mode="read") as st:
        rows = front_rows(open_study(cfg, st))
    print(format_rows(rows, fmt))
    return 0


ONNX_TOLERANCE = 1e-4  # largest accepted max|ONNX - PyTorch| on the held-out batch, relative to max|PyTorch|


def _export_bytes(fmt: str, student: torch.nn.Module, policy: Policy, metrics: dict, heldout: torch.Tensor) -> bytes:
    """The exported file's bytes; the ONNX model is checked against the student on the held-out batch first."""
    if fmt == "packed":
        return pack(student, policy, metrics)
    if fmt in ("onnx", "onnx-packed"):
        data = to_onnx(student, policy, heldout, layout="fast" if fmt == "onnx" else "packed")
        parity = onnx_parity(student, data, heldout)
        if not parity.ok(ONNX_TOLERANCE):
            raise ExportError(f"the ONNX model's outputs differ from the student's ({parity.describe()}; tolerance "
                              f"{ONNX_TOLERANCE}); nothing written; export --format packed instead")
        print(f"ONNX outputs on the held-out batch: {parity.describe()}")
        print(fusion_line(data, student, policy, fast=fmt == "onnx"))
        return data
    buf = io.BytesIO()
    activations, points = activation_settings(student), point_settings(student)  # before strip_ drops them
    plan = pruned_channels(student)
    state = {k: v.detach().cpu() for k, v in strip_(student).state_dict().items()}
    policy_data = json.loads(policy.to_json())
    extra = {} if plan is None else {"channels": plan.to_json()}  # prune_channels_(model, ChannelPlan.from_json(..))
    torch.save({"state_dict": state, "policy": policy_data, "metrics": metrics, "activations": activations,
                "points": points} | extra, buf)
    return buf.getvalue()


def fusion_line(data: bytes, student: torch.nn.Module, policy: Policy, *, fast: bool) -> str:
    """How onnxruntime runs the exported layers: how many on integer kernels, and the integer-capable ones it
    does not (a slower file, said plainly, with the reason)."""
    fusion = onnx_fusion(data)
    asked = sum(1 for _, s in policy.layers if s.bits is not None and s.act_bits is not None)
    line = (f"onnxruntime runs {fusion['integer']} of {fusion['total']} Conv/Gemm layers on integer kernels "
            f"({asked} have quantized weights and inputs)")
    if fast and len(integer_layers(student)) < asked:
        line += "; torch.fx could not trace the model, so they run in fp32 (rounded as the student rounds)"
    elif fast and fusion["integer"] < asked:
        line += (f"; {asked - fusion['integer']} of those run in fp32 (a layer writing the model's fp32 output, "
                 "or an op after it that onnxruntime cannot fuse)")
    return line


def _record_packed(study: optuna.Study, trial: int, nbytes: int) -> bool:
    """Remember the packed file's size for frandi pareto; False when the study cannot be written."""
    try:
        study.set_user_attr(PACKED, study.user_attrs.get(PACKED, {}) | {str(trial): nbytes})
    except optuna.exceptions.StorageInternalError:
        return False
    return True


def export(
    cfg: StudyConfig, storage: str | None, *, trial: int, out: Path, fmt: str, overwrite: bool, attach_it: bool,
    device: str, tolerance: float,
) -> int:
    """Materialize a finished trial deterministically, check it reproduces the stored OD, write it whole."""
    check_device(device)
    set_threads(cfg.run.threads, 1)
    with open_for(cfg, storage, mode="write" if attach_it else "read") as st:  # a read-only study exports too
        study = open_study(cfg, st)
        (t,) = finished_trials(study, [trial], verb="export")
        folder = artifact_dir(cfg, st) if attach_it else None  # before any work: refused if there is none
        runner = TrialRunner(cfg, st, device=device)
        student, r, moved = rerun(runner, t)
        stored = t.values[0]
        if moved > tolerance:
            raise ExportError(
                f"trial {trial} re-ran to {cfg.study.score} {r.score:.6f}, stored {stored:.6f} (|diff| > {tolerance}); "
                "the model, batches or code changed since; nothing written"
            )
        metrics = result_attrs(r, threads=torch.get_num_threads()) | {"od_stored": stored, "trial": trial}
        data = _export_bytes(fmt, student, TrialRecord.from_trial(t).policy, metrics, runner.heldout)
        write_atomic(out, data, overwrite=overwrite)
        unrecorded = fmt == "packed" and not _record_packed(study, trial, len(data))
        attached = attach(st, study, t, folder, out.name, data) if folder else None
    print(
        f"trial {trial}: OD {r.od:.6f} (stored {stored:.6f}), ratio {r.ratio:.2f}, density {r.density:.3f} -> "
        f"{out} ({fmt}, {len(data)} bytes; size objective {r.size_bits // 8} bytes)"
        + (f"; attached to the trial as artifact {attached}" if attached else "")
        + ("; the study is read-only: frandi pareto will not show this size" if unrecorded else "")
    )
    return 0


def _check_address(host: str, port: int) -> None:
    """Bind ``host:port`` once, as the dashboard's server will (reusing the address), so a port in use or a
    host that does not resolve is one line, not a traceback after the server's banner."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as e:
        why = e.strerror or str(e)
        raise UsageError(f"cannot serve on {host}:{port} ({why}); choose another --port or --host") from None


def dashboard(cfg: StudyConfig, storage: str | None, *, host: str, port: int) -> int:
    import optuna_dashboard

    _check_address(host, port)
    with open_for(cfg, storage, mode="read") as st:
        open_study(cfg, st)
        print(f"optuna-dashboard on http://{host}:{port}/ for {st.masked_url} (Ctrl-C to stop)")
        optuna_dashboard.run_server(
            fast_reads(st.optuna), host=host, port=port, artifact_store=artifact_store(cfg, st)
        )
    return 0


def synth(cfg: StudyConfig, storage: str | None, *, png: Path | None, device: str) -> int:
    """Build the cached synthetic batches if missing, describe them, optionally save an image grid."""
    check_device(device)
    teacher = load_model(model_spec(cfg), device=device)  # before the storage is opened (and maybe created)
    with open_for(cfg, storage) as st:
        key, data = cached_batches(cfg, st, teacher, device=device, progress=True)
        info = st.blob_info(key) or {}
    with torch.no_grad():
        for name, x in (("recovery", data.recovery), ("held-out", data.heldout)):
            x = x.to(device)
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(device)
            preds = model_outputs(teacher, x).argmax(1)
            classes = torch.bincount(preds.cpu()).count_nonzero().item()
            print(
                f"{name:>9}: {tuple(x.shape)}, BN-KL {float(bn_kl_loss(teacher, x)):.4g} "
                f"(noise {float(bn_kl_loss(teacher, noise)):.4g}), teacher predicts {classes} classes"
            )
    print(f"cache key {key}, {info.get('size', 0) / 1024:.0f} KiB stored compressed")
    if png is not None and data.recovery.dim() == 4:
        from torchvision.utils import save_image

        x = data.recovery[:64]
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        save_image((x - lo) / (hi - lo + 1e-8), png, nrow=8, padding=1)
        print(f"image grid -> {png}")
    return 0


def sensitivity(cfg: StudyConfig, storage: str | None, *, png: Path | None, device: str) -> int:
    """Measure (once per study) or read the per-layer sensitivity table; print it, optionally as a heatmap."""
    check_device(device)
    teacher, space = check_model(cfg, device)  # before the storage is opened (and maybe created)
    with open_for(cfg, storage) as st:
        key, data = cached_batches(cfg, st, teacher, device=device, progress=True)
        heldout = data.heldout.to(device)
        table = cached_sensitivity(
            st, key, teacher, space, heldout, model_outputs(teacher, heldout), data.recovery.to(device),
            cfg.recovery.calibration, cfg.recovery.weight_clip,
        )
    print(format_table(table))
    acts = f" + {len(table.act_bits)} activation widths" if table.act_bits else ""
    print(f"{len(table.layers)} layers x {len(table.settings)} settings{acts}, measured in {table.seconds:.1f} s")
    if png is not None:
        heatmap(table, str(png))
        print(f"heatmap -> {png}")
    return 0
