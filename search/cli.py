"""The `frandi` command line: search, worker, status, pareto, export, evaluate, dashboard, sensitivity, synth."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna

from frandi_core import FrandiError
from frandi_core.data import FASHION_ROOT
from storage import StorageError, lost_storage

from . import _commands as commands
from ._config import StudyConfig, load_config, replace
from ._duration import parse_duration
from ._errors import ConfigError, UsageError
from ._evaluate import evaluate
from ._signals import interrupts_raise, stop_code


def _writable(path: str, *, overwrite: bool = True) -> Path:
    """An output path whose folder exists and can be written (checked before any work is done)."""
    p = Path(path)
    parent = p.resolve().parent
    if p.is_dir():
        raise UsageError(f"output path '{p}' is a folder; give a file name")
    if p.exists() and not overwrite:
        raise UsageError(f"'{p}' already exists; pass --overwrite to replace it, or choose another name")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write '{p}': folder '{parent}' does not exist or is not writable")
    return p


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="frandi", description="Data-free compression-policy search (FRanDI).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("study_file", metavar="STUDY.toml", help="the study file")
        c.add_argument(
            "--storage", help="database URL overriding [study] storage (passwords are never printed)"
        )
        return c

    c = cmd("search", "launch or resume a study: the same command continues a stopped one")
    c.add_argument("--workers", type=int, help="worker processes on this machine (default: [run] workers)")
    c.add_argument("--devices", help="comma-separated devices for the workers, e.g. cpu or cuda:0,cuda:1")
    c.add_argument("--threads", type=int, help="torch threads per worker (default: cores / workers)")
    c.add_argument(
        "--n-trials", type=int, help="finished trials the study should hold (default: [study] n_trials)"
    )
    _timeouts(c)
    c.add_argument("--force", action="store_true", help="resume even though the study file changed")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.add_argument(
        "--format", choices=["table", "json", "csv"], default="table", help="how to print the front"
    )

    c = cmd("worker", "join an existing study from this (or any) machine and run trials until it is done")
    c.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    c.add_argument("--threads", type=int, help="torch threads (default: [run] threads; 0 = all cores)")
    _timeouts(c)

    c = cmd("status", "trials done / running / failed and the best OD so far")
    c.add_argument("--format", choices=["table", "json"], default="table")

    c = cmd("pareto", "the Pareto front of OD against model size")
    c.add_argument("--format", choices=["table", "json", "csv"], default="table")

    c = cmd("export", "re-run a trial's compression and recovery, check its OD, save the compressed model")
    c.add_argument("--trial", type=int, required=True, help="trial number (see frandi pareto)")
    c.add_argument("--out", required=True, help="file to write (written whole or not at all)")
    c.add_argument(
        "--format",
        choices=["packed", "onnx", "onnx-packed", "state_dict"],
        default="packed",
        help="packed: safetensors of the bytes the size objective counts (frandi_core.load_packed), the smallest "
        "file; onnx: for speed, the QDQ model onnxruntime runs on integer kernels (layers with quantized weights "
        "and inputs); onnx-packed: the packed weights unpacked in the graph, small but fp32 convolutions; "
        "state_dict: {'state_dict', 'policy', 'metrics', 'activations', 'points'} for torch.load",
    )
    c.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    c.add_argument("--attach", action="store_true", help="also store the file on the trial's dashboard page")
    c.add_argument("--device", default="cpu")
    c.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted |OD - stored OD|")

    c = cmd("evaluate", "real top-1 accuracy of trials on a labeled held-out set, against their OD")
    c.add_argument("--data", required=True, help="digits, fashion, folder (an image folder), or torchvision:CLASS")
    c.add_argument("--root", help=f"folder holding the data set (its test split is used); for fashion: {FASHION_ROOT}")
    c.add_argument("--trials", help="comma-separated trial numbers (default: the Pareto front and baselines)")
    c.add_argument("--limit", type=int, help="evaluate on the first N samples only")
    c.add_argument("--mean", help="per-channel normalization mean, e.g. 0.5 or 0.49,0.48,0.45")
    c.add_argument("--std", help="per-channel normalization std")
    c.add_argument("--device", default="cpu")

    c = cmd("dashboard", "serve optuna-dashboard on the study's storage")
    c.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    c.add_argument("--port", type=int, default=8080)

    c = cmd("sensitivity", "per-layer OD with only that layer compressed at each setting (stored once per study)")
    c.add_argument("--png", help="save the table as a heatmap to this PNG file")
    c.add_argument("--device", default="cpu")

    c = cmd("synth", "build (or show) the study's cached synthetic batches")
    c.add_argument("--png", help="save a grid of the synthetic images to this PNG file")
    c.add_argument("--device", default="cpu")
    return p


def _timeouts(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "--timeout", metavar="DURATION",
        help="no trial starts after this long (e.g. 45s, 90m, 2h; default: [study] timeout); trials in flight "
        "finish, the front is printed, exit 0; the same command resumes",
    )  # fmt: skip
    c.add_argument(
        "--hard-timeout", metavar="DURATION",
        help="after this long, the trials in flight are stopped and queued again (then as --timeout)",
    )  # fmt: skip


def _override(cfg: StudyConfig, section: str, option: str, **change: Any) -> StudyConfig:
    """``cfg`` with one command-line option in its study-file key, checked as the file is: a bad value is one
    line naming the option."""
    try:
        return replace(cfg, section, **change)
    except ConfigError as e:
        (key,) = change
        raise UsageError(str(e).replace(f"{section}.{key}", option)) from None


def _with_timeouts(cfg: StudyConfig, a: argparse.Namespace) -> tuple[StudyConfig, float | None]:
    """The config with --timeout in [study] timeout, and --hard-timeout in seconds (checked: one line, exit 2)."""
    if a.timeout is not None:
        cfg = _override(cfg, "study", "--timeout", timeout=a.timeout)
    hard = None if a.hard_timeout is None else parse_duration(a.hard_timeout, "--hard-timeout")
    soft = None if cfg.study.timeout is None else parse_duration(cfg.study.timeout)
    if hard is not None and soft is not None and hard < soft:
        raise UsageError(f"--hard-timeout {a.hard_timeout} is shorter than the timeout {cfg.study.timeout}; "
                          "make it longer, or leave it out")
    return cfg, hard


def _check_options(args: argparse.Namespace) -> None:
    """Refuse option values out of range before anything is loaded or opened."""
    if getattr(args, "tolerance", None) is not None and not args.tolerance >= 0:  # NaN too
        raise UsageError(f"--tolerance must be a number >= 0, got {args.tolerance}")
    if getattr(args, "port", None) is not None and not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    if getattr(args, "png", None) and Path(args.png).suffix.lower() != ".png":
        raise UsageError(f"--png '{args.png}' must name a .png file")


def _search(cfg: StudyConfig, a: argparse.Namespace) -> int:
    if a.workers is not None:
        cfg = _override(cfg, "run", "--workers", workers=a.workers)
    if a.devices is not None:
        devices = tuple(d.strip() for d in a.devices.split(",") if d.strip())
        cfg = _override(cfg, "run", f"--devices '{a.devices}'", devices=devices)
    if a.threads is not None:
        cfg = _override(cfg, "run", "--threads", threads=a.threads)
    if a.n_trials is not None:
        cfg = _override(cfg, "study", "--n-trials", n_trials=a.n_trials)
    cfg, hard = _with_timeouts(cfg, a)
    return commands.search(cfg, a.storage, force=a.force, progress=not a.no_progress, fmt=a.format, hard_timeout=hard)


def _worker(cfg: StudyConfig, a: argparse.Namespace) -> int:
    if a.threads is not None:
        cfg = _override(cfg, "run", "--threads", threads=a.threads)
    cfg, hard = _with_timeouts(cfg, a)
    return commands.worker(cfg, a.storage, device=a.device, threads=a.threads, hard_timeout=hard)


def _export(cfg: StudyConfig, a: argparse.Namespace) -> int:
    out = _writable(a.out, overwrite=a.overwrite)
    return commands.export(
        cfg, a.storage, trial=a.trial, out=out, fmt=a.format, overwrite=a.overwrite, attach_it=a.attach,
        device=a.device, tolerance=a.tolerance,
    )


def _png(a: argparse.Namespace) -> Path | None:
    return _writable(a.png) if a.png else None


# command -> what it does with the study file's config and the parsed options
COMMANDS: dict[str, Callable[[StudyConfig, argparse.Namespace], int]] = {
    "search": _search,
    "worker": _worker,
    "status": lambda cfg, a: commands.status(cfg, a.storage, fmt=a.format),
    "pareto": lambda cfg, a: commands.pareto(cfg, a.storage, fmt=a.format),
    "export": _export,
    "evaluate": lambda cfg, a: evaluate(
        cfg, a.storage, data=a.data, root=a.root, trials=a.trials, limit=a.limit, mean=a.mean, std=a.std,
        device=a.device,
    ),
    "dashboard": lambda cfg, a: commands.dashboard(cfg, a.storage, host=a.host, port=a.port),
    "sensitivity": lambda cfg, a: commands.sensitivity(cfg, a.storage, png=_png(a), device=a.device),
    "synth": lambda cfg, a: commands.synth(cfg, a.storage, png=_png(a), device=a.device),
}


def run(args: argparse.Namespace) -> int:
    _check_options(args)
    return COMMANDS[args.command](load_config(args.study_file), args)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with interrupts_raise():
        try:  # a recorded SIGTERM / Ctrl-C is exit 143 / 130 with its line, never 0
            return stop_code(_exit_code(args))
        except KeyboardInterrupt as e:  # the stop's exception, wherever it was raised
            return stop_code(0, e)


def _exit_code(args: argparse.Namespace) -> int:
    """Run the command; each kind of error is its one line and exit 2. A stop signal is reported by stop_code."""
    try:
        return run(args)
    except (FrandiError, StorageError) as e:
        print(f"frandi: error: {e}", file=sys.stderr)
    except optuna.exceptions.StorageInternalError as e:  # the database went away for longer than we wait
        print(f"frandi: error: {lost_storage(e)}", file=sys.stderr)
    except json.JSONDecodeError as e:
        print(f"frandi: error: stored data is not valid JSON ({e})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
