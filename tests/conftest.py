"""Suite-wide fixtures: one throwaway PostgreSQL server per session (``pg_server``) and ``storage_url``.

Imported here, once, so the storage and reliability tests share a single server.
"""

from tests.conftest_pg import pg_server, storage_url  # noqa: F401
