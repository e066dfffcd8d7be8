"""PostgreSQL servers of the tests' own: initdb in a temp dir, a free port on 127.0.0.1 only,
the Unix socket in that dir too, started and stopped with pg_ctl. Nothing needs to be running
beforehand (`make test` installs Debian's `postgresql` where it is missing), and no test ever
touches a server it did not start (never the default port 5432).

Fixtures (imported by tests/conftest.py):
- `postgres_server` (session): one server for the whole run.
- `postgres_url` (per test): a fresh, empty namespace on it, as a URL with a user and a
  password: a schema `t_<random>` of the database `sora_tests`, made the connections'
  search_path by the URL (`?options=-csearch_path%3Dt_...`), dropped after the test. Sora sees
  an empty database; a schema costs ~20 ms where CREATE DATABASE costs ~500 ms (it copies and
  syncs a template). The URL has a query already: add parameters with `&`.
- `store_backend` (per test, parametrized `sqlite` / `postgresql`): a StoreConfig; for
  PostgreSQL on a fresh database. A test taking it runs once on each backend.
- `module_store_backend` (per module, parametrized the same way): for a module-scoped host
  fixture (one host per backend for the whole module).
- `postgres_server_factory` (per test): `make()` starts a server of the test's own, which it
  may `stop()`, `start()` and `restart()` (a database restart under load); all are stopped at
  the test's end.

initdb refuses to run as root: as root the server runs as the `postgres` user (Debian's
package makes it), or `nobody`.

Each server's temp dir holds `owner`, the pid of the test process that made it. A run that was
killed before its teardown leaves its server running; the next session stops (immediate) and
removes the servers whose owner is dead (`sweep_dead_servers`), never one whose owner lives.
"""
from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

USER = "sora"
START_WAIT_S = 60
DIR_PREFIX = "sora-pg-"


def pg_bin_dir() -> str | None:
    """The newest /usr/lib/postgresql/N/bin holding initdb (Debian's layout), else the
    directory of an `initdb` on PATH."""
    found = []
    for path in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        version = os.path.basename(os.path.dirname(os.path.dirname(path)))
        if version.isdigit():
            found.append((int(version), os.path.dirname(path)))
    if found:
        return max(found)[1]
    on_path = shutil.which("initdb")
    return os.path.dirname(os.path.realpath(on_path)) if on_path else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> tuple[list[str], int | None, int | None]:
    """The command prefix, uid and gid the server's programs run as (root: another user)."""
    if os.geteuid() != 0:
        return [], None, None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"], entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root, and neither a `postgres` nor a `nobody` user exists "
                       "to run initdb as (initdb refuses root)")


class PostgresServer:
    """One server of the tests' own. `url(db)` is a URL with a password, for Sora;
    `admin()` a psycopg connection (autocommit) to the `postgres` database, for the tests."""

    def __init__(self, max_connections: int = 300):
        bin_dir = pg_bin_dir()
        if bin_dir is None:
            raise RuntimeError("no PostgreSQL found (initdb): `make test` installs Debian's "
                               "postgresql package where it is missing")
        self.bin = bin_dir
        self.prefix, uid, gid = _run_as()
        # Short: the Unix socket's path (dir + .s.PGSQL.PORT) must fit in 107 bytes.
        self.dir = tempfile.mkdtemp(prefix=DIR_PREFIX)
        with open(os.path.join(self.dir, "owner"), "w") as f:
            f.write(str(os.getpid()))
        if uid is not None:
            os.chown(self.dir, uid, gid)
        os.chmod(self.dir, 0o700)
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")
        self.port = _free_port()
        self.password = secrets.token_urlsafe(18)
        self.max_connections = max_connections
        self.running = False
        pwfile = os.path.join(self.dir, "pw")
        with open(pwfile, "w") as f:
            f.write(self.password + "\n")
        if uid is not None:
            os.chown(pwfile, uid, gid)
        os.chmod(pwfile, 0o600)
        self._pg("initdb", "-D", self.data, "-U", USER, f"--pwfile={pwfile}", "-E", "UTF8",
                 "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256",
                 "--no-instructions")
        os.unlink(pwfile)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
            conf.write(f"\n# tests/postgres_server.py\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.dir}'\n"
                       f"max_connections = {max_connections}\nfsync = on\n")

    def _pg(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([*self.prefix, os.path.join(self.bin, program), *args],
                              capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}):\n{done.stdout}"
                               f"{done.stderr}\n{self.server_log()}")
        return done

    def server_log(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def start(self) -> "PostgresServer":
        self._pg("pg_ctl", "-D", self.data, "-l", self.log, "-o", f"-p {self.port}",
                 "-w", "-t", str(START_WAIT_S), "start")
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`immediate`: as a crash would, no shutdown checkpoint)."""
        if self.running:
            self._pg("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", str(START_WAIT_S),
                     "stop", check=False)
            self.running = False

    def restart(self, down_s: float = 0.0, mode: str = "fast") -> None:
        """Stop, stay down `down_s` seconds, start again on the same port."""
        self.stop(mode)
        deadline = time.monotonic() + down_s
        while time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def admin(self):
        import psycopg
        return psycopg.connect(self.url(), autocommit=True)

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its name."""
        name = name or f"t_{secrets.token_hex(6)}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name: expected [a-z_][a-z0-9_]*, got {name!r}")
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return name

    def create_namespace(self, database: str = "sora_tests") -> str:
        """A fresh schema in `database` (made on first use); returns a URL whose connections
        have it as their only search_path."""
        with self.admin() as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (database,)).fetchone() is None:
                conn.execute(f"CREATE DATABASE {database}")
        name = f"t_{secrets.token_hex(6)}"
        import psycopg
        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return f"{self.url(database)}?options=-csearch_path%3D{name}"

    def drop_namespace(self, url: str) -> None:
        from sora.store import backend
        backend.close_pools(lambda pool_url: pool_url.startswith(url))
        if self.running:
            import psycopg
            database, _, query = url.rpartition("/")[2].partition("?")
            name = query.rpartition("%3D")[2]
            with psycopg.connect(self.url(database), autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")

    def drop_database(self, name: str) -> None:
        """Drop it, closing what is still connected (this process's pools first)."""
        from sora.store import backend
        backend.close_pools(lambda url: url.endswith("/" + name))
        if self.running:
            with self.admin() as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def sweep_dead_servers() -> list[str]:
    """Stop and remove the servers of test processes that died before their teardown; returns
    their dirs."""
    swept = []
    for folder in glob.glob(os.path.join(tempfile.gettempdir(), DIR_PREFIX + "*")):
        try:
            with open(os.path.join(folder, "owner")) as f:
                owner = int(f.read().strip())
        except (OSError, ValueError):
            continue
        try:
            os.kill(owner, 0)
            continue                      # its owner lives: not ours to touch
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        bin_dir = pg_bin_dir()
        data = os.path.join(folder, "data")
        if bin_dir and os.path.exists(os.path.join(data, "postmaster.pid")):
            prefix, _, _ = _run_as()
            subprocess.run([*prefix, os.path.join(bin_dir, "pg_ctl"), "-D", data, "-m",
                            "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
        swept.append(folder)
    return swept


@pytest.fixture(scope="session")
def postgres_server():
    sweep_dead_servers()
    try:
        server = PostgresServer().start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.remove()


@pytest.fixture
def postgres_url(postgres_server):
    url = postgres_server.create_namespace()
    yield url
    postgres_server.drop_namespace(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_backend(request):
    """A StoreConfig: SQLite (the state dir's files), or PostgreSQL on a fresh namespace."""
    from sora.config import StoreConfig
    if request.param == "sqlite":
        return StoreConfig()
    url = request.getfixturevalue("postgres_url")
    return StoreConfig(kind="postgresql", url=url, poolSize=4)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_store_backend(request):
    """store_backend for module-scoped fixtures: one namespace for the whole module."""
    from sora.config import StoreConfig
    if request.param == "sqlite":
        yield StoreConfig()
        return
    server = request.getfixturevalue("postgres_server")
    url = server.create_namespace()
    yield StoreConfig(kind="postgresql", url=url, poolSize=4)
    server.drop_namespace(url)


@pytest.fixture
def postgres_server_factory():
    """`make()`: a server of this test's own (started), removed at the test's end."""
    servers: list[PostgresServer] = []

    def make(**options) -> PostgresServer:
        try:
            servers.append(PostgresServer(**options).start())
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
        return servers[-1]
    yield make
    for server in servers:
        server.remove()
