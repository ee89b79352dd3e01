"""Storage-test fixtures; drop this file once tests/conftest.py imports them from tests.conftest_pg."""

from tests.conftest_pg import pg_server, storage_url  # noqa: F401
