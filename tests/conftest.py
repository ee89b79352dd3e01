"""Suite-wide fixtures: one throwaway PostgreSQL server per session (``pg_server``), ``storage_url``, and
``frandi``, the CLI run in-process, ``tiny_study``, a study file on the bundled
digits ResNet, and a tiny Fashion-MNIST as published (``published``) and in torchvision's layout.

Imported here, once, so the storage and reliability tests share a single server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest_pg import pg_server, storage_url  # noqa: F401
from tests.fashion_files import write_fashion
from tests.tiny_study import study_text

DIGITS_WEIGHTS = Path(__file__).resolve().parents[1] / "studies" / "models" / "resnet_digits.pt"


@pytest.fixture
def frandi(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run the frandi CLI in this process (no start-up cost); returns (exit code, stdout, stderr)."""
    from search.cli import main

    def run(*args: object) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def tiny_study(tmp_path: Path) -> Callable[..., Path]:
    """A tiny study on the bundled (trained) digits ResNet: a few trials of a few FR steps."""

    def write(*, n_trials: int = 4) -> Path:
        p = tmp_path / "tiny.toml"
        p.write_text(
            study_text(
                name="evaluate-tiny", url=f"sqlite:///{tmp_path / 'tiny.db'}", n_trials=n_trials, kwargs="{}",
                weights=DIGITS_WEIGHTS, baselines="[0.2, 0.9]", sparsity="[0.0, 0.9]", bits="[2, 4, 8]", steps=3,
            )
        )  # fmt: skip
        return p

    return write


@pytest.fixture
def published(tmp_path: Path) -> Path:
    write_fashion(tmp_path / "fashion-mnist", gz=True)
    return tmp_path / "fashion-mnist"


@pytest.fixture
def torchvision_layout(tmp_path: Path) -> Path:
    write_fashion(tmp_path / "data" / "FashionMNIST" / "raw", gz=False)
    return tmp_path / "data"
