"""`frandi evaluate --data fashion --root DIR`: Fashion-MNIST as published (the four *-idx?-ubyte.gz files in DIR,
read in place, nothing written there) and in torchvision's layout (DIR/FashionMNIST/raw/); anything else is one
line saying what --root expects. Tiny IDX files stand in for the real ones."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from search import FASHION_ROOT, labeled_data

N = 20  # images per split in the tiny files
FILES = {"images": ("t10k-images-idx3-ubyte", "train-images-idx3-ubyte"),
         "labels": ("t10k-labels-idx1-ubyte", "train-labels-idx1-ubyte")}  # fmt: skip


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format: two zero bytes, 0x08 (unsigned bytes), the number of dims, the dims big-endian, the data."""
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


def arrays(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (N, 28, 28), dtype=np.uint8), rng.integers(0, 10, N, dtype=np.uint8)


def write(folder: Path, *, gz: bool) -> None:
    """A tiny Fashion-MNIST: both splits (test from seed 0, train from seed 1), gzipped as published or not."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (images, labels) in enumerate((arrays(0), arrays(1))):
        for name, data in ((FILES["images"][seed], images), (FILES["labels"][seed], labels)):
            raw = idx_bytes(data)
            (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)


@pytest.fixture
def published(tmp_path: Path) -> Path:
    write(tmp_path / "fashion-mnist", gz=True)
    return tmp_path / "fashion-mnist"


@pytest.fixture
def torchvision_layout(tmp_path: Path) -> Path:
    write(tmp_path / "data" / "FashionMNIST" / "raw", gz=False)
    return tmp_path / "data"


def _listing(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_both_layouts_give_the_same_normalized_tensors(published: Path, torchvision_layout: Path) -> None:
    images, labels = arrays(0)
    for root in (published, torchvision_layout):
        x, y = labeled_data("fashion", "test", root).tensors
        assert x.shape == (N, 1, 28, 28) and torch.equal(y, torch.from_numpy(labels).long())
        expected = (torch.from_numpy(images).float().unsqueeze(1) / 255 - 0.2860) / 0.3530
        assert torch.allclose(x, expected, atol=1e-6)
    assert torch.equal(labeled_data("fashion", "train", published).tensors[1], torch.from_numpy(arrays(1)[1]).long())


@pytest.mark.parametrize("layout", ["published", "torchvision_layout"])
def test_evaluate_reads_either_layout_and_writes_nothing_there(
    tiny_study: Callable[..., Path], frandi: Callable[..., tuple[int, str, str]], request, layout: str
) -> None:
    root = request.getfixturevalue(layout)
    before = _listing(root)
    root.chmod(0o555)  # read-only, as /usr/share/datasets is (root ignores it: the listing is the check)
    try:
        study = tiny_study(n_trials=1)
        assert frandi("search", study, "--no-progress")[0] == 0
        code, out, err = frandi("evaluate", study, "--data", "fashion", "--root", root)
    finally:
        root.chmod(0o755)
    assert code == 0, err
    assert f"top-1 on fashion ({N} samples)" in out
    assert _listing(root) == before


@pytest.mark.parametrize("bad", ["empty", "other files", "only the train split", "not gzip", "not idx", "a file"])
def test_anything_else_is_one_line_saying_what_root_expects(
    tiny_study: Callable[..., Path], frandi: Callable[..., tuple[int, str, str]], published: Path, bad: str
) -> None:
    if bad == "empty":
        for f in published.iterdir():
            f.unlink()
    elif bad == "other files":
        for f in published.iterdir():
            f.rename(f.with_name("x" + f.name))
    elif bad == "only the train split":
        for f in published.glob("t10k-*"):
            f.unlink()
    elif bad == "a file":
        published = published / (FILES["images"][0] + ".gz")
    else:
        target = published / (FILES["images"][0] + ".gz")
        target.write_bytes(b"plain bytes" if bad == "not gzip" else gzip.compress(b"\x00\x00\x0d\x03 not IDX"))
    study = tiny_study(n_trials=1)
    code, _, err = frandi("evaluate", study, "--data", "fashion", "--root", published)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert str(published) in err and FASHION_ROOT in err and "Traceback" not in err
