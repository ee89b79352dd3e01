"""Fixtures for the experiment smoke tests: one shared database (the synthetic-batch cache), the CLI."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def shared_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite database for every smoke test, so the digits synthetic batch is made once."""
    torch.set_num_threads(1)
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'experiments.db'}"
