"""A tiny Fashion-MNIST in the published IDX format (and torchvision's layout), for the data-reading tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

N = 20  # images per split in the tiny files
FILES = {"images": ("t10k-images-idx3-ubyte", "train-images-idx3-ubyte"),
         "labels": ("t10k-labels-idx1-ubyte", "train-labels-idx1-ubyte")}  # fmt: skip


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format: two zero bytes, 0x08 (unsigned bytes), the number of dims, the dims big-endian, the data."""
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


def arrays(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (N, 28, 28), dtype=np.uint8), rng.integers(0, 10, N, dtype=np.uint8)


def write_fashion(folder: Path, *, gz: bool) -> None:
    """A tiny Fashion-MNIST: both splits (test from seed 0, train from seed 1), gzipped as published or not."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (images, labels) in enumerate((arrays(0), arrays(1))):
        for name, data in ((FILES["images"][seed], images), (FILES["labels"][seed], labels)):
            raw = idx_bytes(data)
            (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
