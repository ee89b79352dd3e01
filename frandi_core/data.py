"""Labeled data and top-1 accuracy, for training reference models and for the optional accuracy check.

The method never needs labels; this module is for checking it. One home for the presets' splits and normalization
constants: the reference models are trained on what ``labeled_data`` returns, and ``frandi evaluate`` checks them
on the same.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from ._errors import DataError, MissingDependency


@dataclass(frozen=True)
class Preset:
    """A named labeled set and the normalization its reference models were trained with."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


PRESETS = {
    "digits": Preset((0.3054,), (0.3800,)),  # of the 8x8 digit pixels scaled to [0, 1] (training split)
    "fashion": Preset((0.2860,), (0.3530,)),
}
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist: the files as published
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_ROOT = (  # what --root must hold for Fashion-MNIST, in every help text and error about it
    "a folder holding the four Fashion-MNIST *-idx?-ubyte.gz files as published (e.g. "
    f"{DEBIAN_FASHION} from Debian's dataset-fashion-mnist), or torchvision's FashionMNIST/raw/ layout"
)


def digits(split: str = "test", seed: int = 0) -> TensorDataset:
    """scikit-learn's 1,797 8x8 digits, normalized, split 80/20 by a fixed permutation."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MissingDependency("--data digits needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    idx = perm[:cut] if split == "train" else perm[cut:]
    p = PRESETS["digits"]
    return TensorDataset((x[idx] - p.mean[0]) / p.std[0], y[idx])


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian dims, then unsigned bytes), gzipped or not."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # not gzip, cut short, unreadable
        raise DataError(f"cannot read '{path}': {e}; --root expects {FASHION_ROOT}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DataError(f"'{path}' is not an IDX file of unsigned bytes; --root expects {FASHION_ROOT}")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"'{path}' is truncated: {data.size} bytes for dims {dims}")
    return data.reshape(dims)


def _find(root: Path, name: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw"):
        for path in (folder / f"{name}.gz", folder / name):
            if path.is_file():
                return path
    return None


def fashion_arrays(split: str, root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images (N, 28, 28, uint8) and labels of a split, read in place from ``root`` (default: the
    Debian folder), never written anywhere: a read-only folder is fine."""
    folder = DEBIAN_FASHION if root is None else Path(root)
    paths = [_find(folder, name) for name in FASHION_FILES[split]]
    if None in paths:
        raise DataError(f"--root '{folder}' holds no Fashion-MNIST {split} split; it expects {FASHION_ROOT}")
    images, labels = (torch.from_numpy(read_idx(p).copy()) for p in paths if p is not None)
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise DataError(f"--root '{folder}': images {tuple(images.shape)} and labels {tuple(labels.shape)} do "
                          f"not pair up; it expects {FASHION_ROOT}")
    return images, labels.long()


def fashion(split: str = "train", root: str | Path | None = None) -> TensorDataset:
    """Fashion-MNIST (60,000 train / 10,000 test 28x28 images), normalized, as tensors in memory."""
    images, labels = fashion_arrays(split, root)
    p = PRESETS["fashion"]
    return TensorDataset((images.float().unsqueeze(1) / 255.0 - p.mean[0]) / p.std[0], labels)


def labeled_data(name: str, split: str, root: str | Path | None = None) -> TensorDataset:
    """A preset by name, 'digits' or 'fashion', normalized as its reference models were trained."""
    if name == "digits":
        return digits(split)
    if name == "fashion":
        return fashion(split, root)
    raise DataError(f"unknown data set '{name}'; use digits or fashion")


class _FashionImages(Dataset):
    """Fashion-MNIST as torchvision's FashionMNIST serves it (a PIL image and its label), from our reader."""

    def __init__(self, split: str, root: str, transform: Any) -> None:
        self.images, self.labels = fashion_arrays(split, root)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i].numpy(), mode="L")), int(self.labels[i])


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"--{what} must be comma-separated numbers, got '{text}'") from None


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
        raise DataError(f"--limit must be >= 1, got {limit}")
    ds = digits("test") if data == "digits" else _image_set(
        data, root, input_shape, _floats(mean, "mean"), _floats(std, "std"), limit
    )
    if limit is not None and limit < len(ds):
        ds = TensorDataset(*(t[:limit] for t in ds.tensors))
    if tuple(ds.tensors[0].shape[1:]) != tuple(input_shape):
        raise DataError(
            f"--data {data} gives inputs of shape {tuple(ds.tensors[0].shape[1:])}, the study's model takes "
            f"{tuple(input_shape)}"
        )
    return ds


def _image_set(
    data: str,
    root: str | None,
    input_shape: Sequence[int],
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    limit: int | None,
) -> TensorDataset:
    import torchvision
    from torchvision import transforms

    preset = PRESETS.get(data)
    name = data.removeprefix("torchvision:")
    if data not in ("folder", "fashion") and not data.startswith("torchvision:"):
        raise DataError(
            f"--data '{data}' is unknown; use digits, fashion, folder, or torchvision:CLASS "
            "(a class of torchvision.datasets, e.g. torchvision:FashionMNIST)"
        )
    cls = getattr(torchvision.datasets, name, None) if data.startswith("torchvision:") else None
    if data.startswith("torchvision:") and not isinstance(cls, type):
        raise DataError(f"--data '{data}': torchvision.datasets has no data set class '{name}'")
    expects = f"; it expects {FASHION_ROOT}" if data == "fashion" else ""
    if root is None:
        raise DataError(f"--data {data} needs --root, the folder holding the data set{expects}")
    if not Path(root).is_dir():
        raise DataError(f"--root '{root}' is not a folder{expects}")
    if preset is not None:
        mean, std = mean or preset.mean, std or preset.std
    if len(input_shape) != 3:
        raise DataError(f"image data needs a model input shape [C, H, W], the study has {list(input_shape)}")
    channels, h, w = input_shape
    steps: list[Any] = [transforms.Grayscale(1) if channels == 1 else transforms.Lambda(_rgb)]
    steps += [transforms.Resize((h, w)), transforms.ToTensor()]
    if mean is not None or std is not None:
        steps.append(transforms.Normalize(mean or (0.0,) * channels, std or (1.0,) * channels))
    tf = transforms.Compose(steps)
    try:
        if data == "fashion":
            ds: Any = _FashionImages("test", root, tf)  # its own one-line errors say what --root expects
        elif cls is None:
            ds = torchvision.datasets.ImageFolder(root, transform=tf)
        else:
            try:
                ds = cls(root, train=False, download=False, transform=tf)
            except TypeError:  # data sets named by split rather than train=True/False (SVHN, ...)
                ds = cls(root, split="test", download=False, transform=tf)
    except DataError:
        raise
    except (RuntimeError, OSError, TypeError, ValueError) as e:
        raise DataError(f"cannot read --data {data} under '{root}': {e}") from None
    if len(ds) == 0:
        raise DataError(f"--data {data} under '{root}' holds no samples")
    n = len(ds) if limit is None else min(limit, len(ds))
    xs, ys = zip(*(ds[i] for i in range(n)), strict=True)
    return TensorDataset(torch.stack(xs), torch.tensor(ys))


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: TensorDataset, *, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent of ``model`` (eval mode) on a labeled TensorDataset, on the model's device."""
    model.eval()
    x, y = data.tensors
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        pred = model(x[i : i + batch_size].to(device)).argmax(1).cpu()
        correct += int((pred == y[i : i + batch_size]).sum())
    return 100.0 * correct / len(x)
