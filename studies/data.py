"""Real labeled data for training reference models and checking accuracy: sklearn digits, Fashion-MNIST.

The search never needs these; they are for the reference models, the tests and the experiments.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

FASHION_DEB = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
DIGITS_MEAN, DIGITS_STD = 0.3054, 0.3800  # of the 8x8 digit pixels scaled to [0, 1] (training split)
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530


def digits(split: str = "train", seed: int = 0) -> TensorDataset:
    """scikit-learn's 1,797 8x8 digits, normalized, split 80/20 by a fixed permutation."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    idx = perm[:cut] if split == "train" else perm[cut:]
    return TensorDataset((x[idx] - DIGITS_MEAN) / DIGITS_STD, y[idx])


def prepare_fashion(root: str | Path = "data") -> Path:
    """Un-gzip the Debian Fashion-MNIST files into ``root/FashionMNIST/raw`` for torchvision; returns root."""
    raw = Path(root) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in FASHION_DEB.glob("*-ubyte.gz"):
        target = raw / gz.name[:-3]
        if not target.exists():  # unpack beside it, then rename: a concurrent reader never sees half a file
            partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
            with gzip.open(gz, "rb") as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(partial, target)
    if not any(raw.iterdir()):
        raise FileNotFoundError(
            f"no Fashion-MNIST files in {FASHION_DEB}; install them: apt-get install dataset-fashion-mnist"
        )
    return Path(root)


def fashion(split: str = "train", root: str | Path = "data") -> TensorDataset:
    """Fashion-MNIST (60,000 train / 10,000 test 28x28 images), normalized, as tensors in memory."""
    from torchvision.datasets import FashionMNIST

    ds = FashionMNIST(str(prepare_fashion(root)), train=split == "train", download=False)
    x = ds.data.float().unsqueeze(1) / 255.0
    return TensorDataset((x - FASHION_MEAN) / FASHION_STD, ds.targets.clone())


def load(name: str, split: str, root: str | Path = "data") -> TensorDataset:
    """A data set by name: 'digits' or 'fashion'."""
    if name == "digits":
        return digits(split)
    if name == "fashion":
        return fashion(split, root)
    raise ValueError(f"unknown data set '{name}'; use digits or fashion")


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: TensorDataset, batch_size: int = 512) -> float:
    """Top-1 accuracy in percent of ``model`` (eval mode) on a labeled TensorDataset."""
    model.eval()
    x, y = data.tensors
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return 100.0 * correct / len(x)
