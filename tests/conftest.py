"""Suite-wide fixtures: one throwaway PostgreSQL server per session (``pg_server``), ``storage_url``, and
``frandi``, the CLI run in-process.

Imported here, once, so the storage and reliability tests share a single server.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest_pg import pg_server, storage_url  # noqa: F401


@pytest.fixture
def frandi(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run the frandi CLI in this process (no start-up cost); returns (exit code, stdout, stderr)."""
    from search.cli import main

    def run(*args: object) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
