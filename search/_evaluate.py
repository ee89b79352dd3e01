"""`frandi evaluate`: real top-1 accuracy of chosen trials on a labeled held-out set, against their OD.

Optional: the search itself never needs labels. A user who does have a labeled set can check that OD
ranks policies as accuracy does (Spearman and Kendall) and keep each trial's accuracy in the study.

Where the accuracy is kept: Optuna refuses to change a finished trial's user attributes
(UpdateFinishedTrialError), and Optuna's tables are never written directly, so the accuracies live in one
study user attribute, ``frandi:accuracy``: JSON of trial number -> {"accuracy", "data", "samples"}.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch.utils.data import TensorDataset

from frandi_core import Policy

from ._config import ConfigError, StudyConfig
from ._launch import open_for
from ._report import format_rows, pareto_trials
from ._study import open_study
from ._trial import TrialRunner
from ._worker import check_device, set_threads

ACCURACY = "frandi:accuracy"  # study user attribute: trial number -> real top-1 accuracy (percent)
OD_TOLERANCE = 1e-4  # a re-materialized trial whose OD moves more than this is reported


@dataclass(frozen=True)
class Preset:
    """A named labeled set and the normalization its reference models were trained with."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    torchvision: str | None = None  # a torchvision.datasets class; None for scikit-learn's digits


# The same constants as studies/data.py, which trains the bundled and benchmark reference models.
PRESETS = {
    "digits": Preset((0.3054,), (0.3800,)),
    "fashion": Preset((0.2860,), (0.3530,), "FashionMNIST"),
}


def _digits_heldout() -> TensorDataset:
    """scikit-learn's digits, the 20% held out by studies/data.py (fixed permutation, seed 0)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError("--data digits needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    idx = perm[int(0.8 * len(x)) :]
    p = PRESETS["digits"]
    return TensorDataset((x[idx] - p.mean[0]) / p.std[0], torch.tensor(d.target)[idx])


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--{what} must be comma-separated numbers, got '{text}'") from None


def _rgb(image: Any) -> Any:
    return image.convert("RGB")


def labeled_set(
    data: str,
    root: str | None,
    input_shape: Sequence[int],
    *,
    mean: str | None = None,
    std: str | None = None,
    limit: int | None = None,
) -> TensorDataset:
    """The labeled held-out set: 'digits', 'fashion', 'torchvision:CLASS' (test split under root) or 'folder'.

    Images are converted to the study's input shape (grayscale when it has one channel, resized) and
    normalized by --mean/--std (the presets know their own). ``limit`` keeps the first N samples.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    preset = PRESETS.get(data)
    if data == "digits":
        ds = _digits_heldout()
    else:
        ds = _image_set(data, preset, root, input_shape, _floats(mean, "mean"), _floats(std, "std"), limit)
    if limit is not None and limit < len(ds):
        ds = TensorDataset(*(t[:limit] for t in ds.tensors))
    if tuple(ds.tensors[0].shape[1:]) != tuple(input_shape):
        raise ConfigError(
            f"--data {data} gives inputs of shape {tuple(ds.tensors[0].shape[1:])}, the study's model takes "
            f"{tuple(input_shape)}"
        )
    return ds


def _image_set(
    data: str,
    preset: Preset | None,
    root: str | None,
    input_shape: Sequence[int],
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    limit: int | None,
) -> TensorDataset:
    import torchvision
    from torchvision import transforms

    name = preset.torchvision if preset is not None else data.removeprefix("torchvision:")
    if data != "folder" and preset is None and not data.startswith("torchvision:"):
        raise ConfigError(
            f"--data '{data}' is unknown; use digits, fashion, folder, or torchvision:CLASS "
            "(a class of torchvision.datasets, e.g. torchvision:FashionMNIST)"
        )
    cls = None if data == "folder" else getattr(torchvision.datasets, name or "", None)
    if data != "folder" and not isinstance(cls, type):
        raise ConfigError(f"--data '{data}': torchvision.datasets has no data set class '{name}'")
    if root is None:
        raise ConfigError(f"--data {data} needs --root, the folder holding the data set")
    if not Path(root).is_dir():
        raise ConfigError(f"--root '{root}' is not a folder")
    if preset is not None:
        mean, std = mean or preset.mean, std or preset.std
    if len(input_shape) != 3:
        raise ConfigError(f"image data needs a model input shape [C, H, W], the study has {list(input_shape)}")
    channels, h, w = input_shape
    steps: list[Any] = [transforms.Grayscale(1) if channels == 1 else transforms.Lambda(_rgb)]
    steps += [transforms.Resize((h, w)), transforms.ToTensor()]
    if mean is not None or std is not None:
        steps.append(transforms.Normalize(mean or (0.0,) * channels, std or (1.0,) * channels))
    tf = transforms.Compose(steps)
    try:
        if cls is None:
            ds: Any = torchvision.datasets.ImageFolder(root, transform=tf)
        else:
            try:
                ds = cls(root, train=False, download=False, transform=tf)
            except TypeError:  # data sets named by split rather than train=True/False (SVHN, ...)
                ds = cls(root, split="test", download=False, transform=tf)
    except (RuntimeError, OSError, TypeError, ValueError) as e:
        raise ConfigError(f"cannot read --data {data} under '{root}': {e}") from None
    if len(ds) == 0:
        raise ConfigError(f"--data {data} under '{root}' holds no samples")
    n = len(ds) if limit is None else min(limit, len(ds))
    xs, ys = zip(*(ds[i] for i in range(n)), strict=True)
    return TensorDataset(torch.stack(xs), torch.tensor(ys))


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: TensorDataset, *, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent of ``model`` (eval mode) on a labeled TensorDataset."""
    model.eval()
    x, y = data.tensors
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        pred = model(x[i : i + batch_size].to(device)).argmax(1).cpu()
        correct += int((pred == y[i : i + batch_size]).sum())
    return 100.0 * correct / len(x)


def correlations(od: Sequence[float], acc: Sequence[float]) -> dict[str, float | None]:
    """Spearman's rho and Kendall's tau of OD against accuracy (None when undefined: < 3 points, constant)."""
    try:
        from scipy import stats
    except ImportError:
        raise ConfigError("frandi evaluate needs scipy for the correlations: pip install scipy") from None
    if len(od) < 3 or len(set(od)) < 2 or len(set(acc)) < 2:
        return {"spearman": None, "kendall": None}
    rho = float(stats.spearmanr(od, acc).statistic)
    tau = float(stats.kendalltau(od, acc).statistic)
    return {k: (v if math.isfinite(v) else None) for k, v in (("spearman", rho), ("kendall", tau))}


def choose_trials(study: optuna.Study, numbers: Sequence[int] | None) -> list[FrozenTrial]:
    """The trials asked for by number (each must be COMPLETE), or by default the Pareto front + baselines."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if numbers:
        chosen = []
        for n in numbers:
            t = trials.get(n)
            if t is None:
                raise ConfigError(f"trial {n} does not exist in study '{study.study_name}' (0..{len(trials) - 1})")
            if t.state != TrialState.COMPLETE:
                raise ConfigError(f"trial {n} is {t.state.name}, not COMPLETE; evaluate finished trials")
            chosen.append(t)
        return chosen
    picked = {t.number: t for t in pareto_trials(study)}
    for t in trials.values():
        if t.state == TrialState.COMPLETE and t.user_attrs.get("baseline"):
            picked[t.number] = t
    if not picked:
        raise ConfigError(f"study '{study.study_name}' has no finished trials yet; run frandi search first")
    return [picked[n] for n in sorted(picked)]


def stored_accuracy(study: optuna.Study) -> dict[int, dict[str, Any]]:
    """The accuracies ``frandi evaluate`` stored in the study, by trial number."""
    return {int(n): v for n, v in json.loads(study.user_attrs.get(ACCURACY, "{}")).items()}


def store_accuracy(study: optuna.Study, trial: int, record: dict[str, Any]) -> None:
    """Add (or replace) one trial's record in the study's ``frandi:accuracy`` attribute."""
    records = stored_accuracy(study)
    records[trial] = record
    study.set_user_attr(ACCURACY, json.dumps({str(n): records[n] for n in sorted(records)}))


def parse_trials(text: str | None) -> list[int] | None:
    """'1,2,3' -> [1, 2, 3]; None or '' -> None (the default set)."""
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--trials must be comma-separated trial numbers, got '{text}'") from None


def evaluate(
    cfg: StudyConfig,
    storage: str | None,
    *,
    data: str,
    root: str | None,
    trials: str | None = None,
    limit: int | None = None,
    mean: str | None = None,
    std: str | None = None,
    device: str = "cpu",
) -> int:
    """Re-materialize each chosen trial (compress + FR), measure real accuracy, store it, print OD vs accuracy."""
    check_device(device)
    numbers = parse_trials(trials)
    labeled = labeled_set(data, root, cfg.model.input_shape, mean=mean, std=std, limit=limit)
    set_threads(cfg.run.threads, 1)
    rows: list[dict[str, Any]] = []
    with open_for(cfg, storage, mode="write") as st:
        study = open_study(cfg, st)
        chosen = choose_trials(study, numbers)
        runner = TrialRunner(cfg, st, device=device)
        teacher_acc = accuracy(runner.teacher, labeled)
        for t in chosen:
            student, r = runner.student(Policy.from_json(t.user_attrs["policy"]))
            acc = accuracy(student, labeled)
            store_accuracy(study, t.number, {"accuracy": acc, "data": data, "samples": len(labeled)})
            if abs(r.score - t.values[0]) > OD_TOLERANCE:
                print(
                    f"frandi: note: trial {t.number} re-ran to {cfg.study.score} {r.score:.6f}, stored "
                    f"{t.values[0]:.6f}: a different torch thread count (run.threads, --threads) or changed code; "
                    "the table shows the stored value",
                    file=sys.stderr,
                )
            rows.append(
                {
                    "trial": t.number,
                    "od": round(t.values[0], 5),
                    "ratio": round(float(t.user_attrs["ratio"]), 2),
                    "accuracy": round(acc, 2),
                    "baseline": bool(t.user_attrs.get("baseline", False)),
                }
            )
    print(f"original model: {teacher_acc:.2f}% top-1 on {data} ({len(labeled)} samples)")
    print(format_rows(rows, "table"))
    c = correlations([r["od"] for r in rows], [r["accuracy"] for r in rows])
    if c["spearman"] is None:
        print(f"correlation of OD and accuracy: undefined ({len(rows)} trial(s), need 3 with distinct values)")
    else:
        print(
            f"correlation of OD and accuracy over {len(rows)} trials: Spearman {c['spearman']:+.3f}, "
            f"Kendall {c['kendall']:+.3f} (negative: lower OD, higher accuracy)"
        )
    return 0
