"""A throwaway PostgreSQL server for the tests: loopback only, a free port, a temporary data folder.

Lifecycle: ``PgServer.start(root) -> PgServer`` (``initdb`` + ``pg_ctl start``; as ``postgres``
through ``runuser`` when running as root, since PostgreSQL refuses to run as root) -> ``.url``
(an SQLAlchemy URL for Optuna's ``RDBStorage``) -> ``.stop()`` (``pg_ctl stop -m fast``).

From the shell (``scripts/postgres.sh`` uses this)::

    python -m tests.pg start DIR   # prints ``export AMC_TEST_POSTGRES_URL=...`` lines
    python -m tests.pg stop DIR

In pytest, ``server_url()`` (a session fixture's body) gives ``$AMC_TEST_POSTGRES_URL``, else a
server of its own, else skips; with ``AMC_REQUIRE_POSTGRES=1`` it fails instead of skipping.

The binaries are looked up on ``PATH`` and in Debian's ``/usr/lib/postgresql/<version>/bin``.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ENV_URL = "AMC_TEST_POSTGRES_URL"  # the tests read the server's URL from here
USER = "amc"  # the database superuser initdb creates (trust auth: loopback only, throwaway data)
DATABASE = "postgres"  # the default database initdb creates
START_TIMEOUT_S = 60  # pg_ctl -w waits this long for the server to accept connections


def bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                    key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return debian[-1].parent if debian else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))  # port 0: the kernel picks a free one
        return s.getsockname()[1]


def _as_owner(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run as the ``postgres`` system user then."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("running as root and runuser is missing: cannot start PostgreSQL as postgres")
    return [runuser, "-u", "postgres", "--", *cmd]


def _chown_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        for p in [path, *path.rglob("*")]:
            os.chown(p, pw.pw_uid, pw.pw_gid)


@dataclass
class PgServer:
    root: Path  # a folder postgres can reach (tempfile.mkdtemp); holds data/ (cluster + socket), port, log
    port: int
    bindir: Path

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    @classmethod
    def start(cls, root: str | os.PathLike) -> PgServer:
        bindir = bin_dir()
        if bindir is None:
            raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found; apt-get install postgresql")
        root = Path(root).resolve()
        data = root / "data"
        root.mkdir(parents=True, exist_ok=True)
        _chown_to_postgres(root)
        subprocess.run(_as_owner([str(bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust",
                                  "--encoding=UTF8", "--no-sync"]),
                       check=True, capture_output=True, text=True)
        port = free_port()
        opts = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={data} "
                "-c fsync=off -c max_connections=200")  # fsync off: throwaway data, faster tests;
        # 200 connections: every Optuna storage the suite opens holds a small pool until it is collected
        (root / "port").write_text(str(port))
        subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"),
                                  "-o", opts, "-w", "-t", str(START_TIMEOUT_S), "start"]),
                       check=True, capture_output=True, text=True)
        return cls(root, port, bindir)

    def stop(self) -> None:
        subprocess.run(_as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast",
                                  "-w", "stop"]), check=False, capture_output=True)


def wait_ready(url: str, timeout: float = 10.0) -> None:
    """Block until ``url`` accepts an SQL connection (raises the last error after ``timeout`` s)."""
    import sqlalchemy

    t_end = time.monotonic() + timeout
    while True:
        try:
            engine = sqlalchemy.create_engine(url)
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("select 1"))
            engine.dispose()
            return
        except Exception:
            if time.monotonic() > t_end:
                raise
            time.sleep(0.2)  # poll every 200 ms


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python -m tests.pg start|stop DIR", file=sys.stderr)
        return 2
    root = Path(argv[1])
    if argv[0] == "start":
        try:
            server = PgServer.start(root)
        except (RuntimeError, subprocess.CalledProcessError) as e:
            detail = getattr(e, "stderr", "") or ""
            print(f"cannot start PostgreSQL: {e} {detail.strip()}", file=sys.stderr)
            return 1
        print(f"export {ENV_URL}={server.url}")
        return 0
    bindir = bin_dir()
    if bindir is not None and (root / "data").exists():
        PgServer(root.resolve(), int((root / "port").read_text()), bindir).stop()
    return 0


def fresh_database(url: str, name: str) -> str:
    """Create an empty database ``name`` on the server of ``url`` and return its URL (the same
    server and user): each test gets tables of its own, created by its own workers."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")  # CREATE DATABASE needs it
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return sqlalchemy.engine.make_url(url).set(database=name).render_as_string(hide_password=False)


@contextmanager
def server_url() -> Iterator[str]:
    """A PostgreSQL URL for the tests (see the module doc); a server it started is stopped at the end."""
    import pytest

    url = os.environ.get(ENV_URL)
    if url:
        importlib.import_module("psycopg2")  # a URL was given: the driver must be there
        wait_ready(url)
        yield url
        return
    required = os.environ.get("AMC_REQUIRE_POSTGRES") == "1"  # CI: these tests must run, not skip
    skip = pytest.fail if required else pytest.skip
    if required:
        importlib.import_module("psycopg2")  # an ImportError, not a skip
    pytest.importorskip("psycopg2", reason="the PostgreSQL driver: pip install -e '.[dev]'")
    if bin_dir() is None:
        skip(f"PostgreSQL is not installed and {ENV_URL} is unset (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="amc-pg-"))  # under /tmp: the postgres user can reach it
    try:
        server = PgServer.start(root)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        shutil.rmtree(root, ignore_errors=True)
        skip(f"cannot start PostgreSQL here: {e}")
    try:
        wait_ready(server.url)
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
