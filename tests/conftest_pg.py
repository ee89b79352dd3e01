"""A throwaway PostgreSQL server for tests, plus a ``storage_url`` fixture over both backends.

Import the fixtures from ``tests/conftest.py``: ``from tests.conftest_pg import pg_server, storage_url``.
PostgreSQL refuses to run as root, so under root the server runs as ``nobody`` (or a created ``frandi-pg``).
Missing binaries skip the PostgreSQL tests, except under CI (``CI=true``) where they fail.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["PgNotFound", "PgServer", "find_pg_bindir", "pg_server", "start_pg_server", "storage_url"]

_FALLBACK_USER = "frandi-pg"
_SETTINGS = {"max_connections": "50", "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def find_pg_bindir() -> Path | None:
    """Directory holding initdb/pg_ctl: ``pg_config --bindir``, else the newest /usr/lib/postgresql/*/bin."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(out.stdout.strip()))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += [Path(p) for p in sorted(versions, key=lambda p: int(p.split("/")[-2]), reverse=True)]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()), None)


def _server_user() -> tuple[str, bool]:
    """(OS user to run the server as, whether we must switch to it with runuser)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name, False
    for name in ("nobody", _FALLBACK_USER):
        try:
            pwd.getpwnam(name)
            return name, True
        except KeyError:
            continue
    useradd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _FALLBACK_USER]
    subprocess.run(useradd, check=True)
    return _FALLBACK_USER, True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgServer:
    """A PostgreSQL cluster in a temporary directory, listening on 127.0.0.1:``port`` with trust auth."""

    bindir: Path
    root: Path
    user: str
    switch_user: bool
    port: int = 0
    database: str = "frandi"

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        """URL of the default test database."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.switch_user:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(command, cwd=self.root, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            logfile = self.root / "server.log"
            log = logfile.read_text()[-2000:] if logfile.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed: {result.stderr.strip()}\n{log}")
        return result

    def init(self, settings: dict[str, str] | None = None) -> None:
        """initdb with trust auth, then test-friendly settings (no fsync, bounded connections) and ``settings``."""
        self._run("initdb", "-D", str(self.datadir), "-U", self.user, "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")  # fmt: skip
        lines = [f"{key} = {value}" for key, value in (_SETTINGS | (settings or {})).items()]
        lines += ["listen_addresses = '127.0.0.1'", f"unix_socket_directories = '{self.root}'"]
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write("\n" + "\n".join(lines) + "\n")

    def start(self) -> None:
        """Start (or restart after ``stop()``) on the same port; waits until it accepts connections."""
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.root / "server.log"),
                  "-o", f"-p {self.port}", "-w", "-t", "30", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: smart, fast or immediate); clients see their connections drop."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "30", "stop")

    def is_running(self) -> bool:
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "status"]
        if self.switch_user:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, check=False).returncode == 0

    def destroy(self) -> None:
        """Stop the server at once and delete its files."""
        if self.is_running():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def _admin(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user={self.user} dbname={database}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.encode())

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database and return its URL (about half a second: PostgreSQL copies a template)."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def create_schema(self, name: str | None = None) -> str:
        """Create a fresh schema in the default database; the URL puts it first on the search_path (fast)."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE SCHEMA "{name}"', self.database)
        return f"{self.url}?options=-csearch_path%3D{name}"


class PgNotFound(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def start_pg_server(settings: dict[str, str] | None = None) -> PgServer:
    """initdb, start on a free port (127.0.0.1 only), create the default database; ``settings`` override the
    test settings (e.g. ``{"max_connections": "100"}``). Raises PgNotFound without server binaries."""
    bindir = find_pg_bindir()
    if bindir is None:
        raise PgNotFound("PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql")
    user, switch_user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="frandi-pg-"))
    if switch_user:
        shutil.chown(root, user=user)
    server = PgServer(bindir=bindir, root=root, user=user, switch_user=switch_user)
    try:
        server.init(settings)
        for attempt in range(3):  # a free port can be taken between probing and binding
            server.port = _free_port()
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        server.create_database(server.database)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the whole session; stopped and deleted at the end (skipped, or failed on CI,
    without server binaries)."""
    try:
        server = start_pg_server()
    except PgNotFound as e:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(str(e))
        pytest.skip(str(e))
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store per test: a SQLite file, or a new schema on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'storage.db'}"
    server: PgServer = request.getfixturevalue("pg_server")
    return server.create_schema()
