"""Labeled data (frandi_core.data): Fashion-MNIST as published (the four *-idx?-ubyte.gz files, read in place,
nothing written there) and in torchvision's layout (DIR/FashionMNIST/raw/); anything else is one DataError line
saying what --root expects. Tiny IDX files stand in for the real ones."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from frandi_core import DataError
from frandi_core.data import FASHION_ROOT, labeled_data, labeled_set
from tests.fashion_files import FILES, N, arrays


def test_both_layouts_give_the_same_normalized_tensors(published: Path, torchvision_layout: Path) -> None:
    images, labels = arrays(0)
    for root in (published, torchvision_layout):
        x, y = labeled_data("fashion", "test", root).tensors
        assert x.shape == (N, 1, 28, 28) and torch.equal(y, torch.from_numpy(labels).long())
        expected = (torch.from_numpy(images).float().unsqueeze(1) / 255 - 0.2860) / 0.3530
        assert torch.allclose(x, expected, atol=1e-6)
    assert torch.equal(labeled_data("fashion", "train", published).tensors[1], torch.from_numpy(arrays(1)[1]).long())


@pytest.mark.parametrize("bad", ["empty", "other files", "only the train split", "not gzip", "not idx", "a file"])
def test_anything_else_is_one_data_error_saying_what_root_expects(published: Path, bad: str) -> None:
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
    with pytest.raises(DataError) as e:
        labeled_set("fashion", str(published), (1, 28, 28))
    err = str(e.value)
    assert len(err.splitlines()) == 1 and str(published) in err and FASHION_ROOT in err


FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist: the files as published


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_preset_matches_the_training_data() -> None:
    """evaluate reads Fashion-MNIST through torchvision transforms; the result must equal the training tensors."""
    ours = labeled_set("fashion", str(FASHION), (1, 28, 28), limit=200)
    theirs = labeled_data("fashion", "test", FASHION)
    assert torch.equal(ours.tensors[1], theirs.tensors[1][:200])
    assert torch.allclose(ours.tensors[0], theirs.tensors[0][:200], atol=1e-5)
