"""A real PostgreSQL server for tests: private data dir, loopback port, stopped by its own command.

Follows /work/shared/TOOLING.md: root cannot run PostgreSQL, so as root every server command runs
as the `postgres` user (`runuser`) on a temp dir it owns. If no server binaries are installed, they
are installed with apt (as CI needs). `STEPGUARD_TEST_POSTGRES_URL` points the tests at an
existing server instead (its user must be allowed to create databases).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

EXTERNAL_URL_VARIABLE = "STEPGUARD_TEST_POSTGRES_URL"
_RUN_AS = "postgres"


@dataclass(frozen=True)
class PostgresServer:
    """One running server: its binaries, data directory and loopback port."""

    bindir: Path
    base: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"


def create_database(url: str, *, prefix: str = "stepguard", template: str | None = None) -> str:
    """Create a fresh database on the server of `url` (optionally copied from `template`).

    Returns the new database's URL. Names are random, so tests never share a database.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    source = f" TEMPLATE {_identifier(template)}" if template else ""
    with _admin_connection(url) as connection:
        connection.execute(f"CREATE DATABASE {_identifier(name)}{source}")
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop the database of `url` (closing any connection still open to it)."""
    name = make_url(url).database or ""
    with _admin_connection(url) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {_identifier(name)} WITH (FORCE)")


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a private PostgreSQL on a free loopback port; stop it and remove its files after."""
    bindir = ensure_installed()
    base = Path(tempfile.mkdtemp(prefix="sg-pg-"))
    try:
        _hand_over(base)
        server = PostgresServer(bindir=bindir, base=base, port=_free_port())
        _initdb(server)
        _pg_ctl(server, "start")
        try:
            yield server
        finally:
            _pg_ctl(server, "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def postgres_for_tests() -> Iterator[str]:
    """URL of a database for this test session: on `STEPGUARD_TEST_POSTGRES_URL`, or a private
    server started here."""
    external = os.environ.get(EXTERNAL_URL_VARIABLE)
    if external:
        url = create_database(external, prefix="stepguard_session")
        try:
            yield url
        finally:
            drop_database(url)
        return
    with running_postgres() as server:
        yield create_database(server.url(), prefix="stepguard_session")


def ensure_installed() -> Path:
    """The newest installed PostgreSQL `bin` directory, installing the server with apt if none."""
    found = _bindirs()
    if not found:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
            check=True,
            env=env,
            capture_output=True,
        )
        found = _bindirs()
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found after installing postgresql")
    return found[-1]


def _bindirs() -> list[Path]:
    paths = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    return sorted((Path(path).parent for path in paths), key=lambda p: int(p.parent.name))


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", _RUN_AS, "--", *command] if os.geteuid() == 0 else command


def _hand_over(base: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(base, _RUN_AS, _RUN_AS)


def _initdb(server: PostgresServer) -> None:
    command = [
        str(server.bindir / "initdb"),
        "-D",
        str(server.base / "data"),
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--locale=C.UTF-8",
    ]
    subprocess.run(_as_server_user(command), check=True, capture_output=True)


def _pg_ctl(server: PostgresServer, action: str) -> None:
    command = [str(server.bindir / "pg_ctl"), "-D", str(server.base / "data"), "-w"]
    if action == "start":
        options = (
            f"-p {server.port} -k {server.base} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        command += ["-l", str(server.base / "log"), "-t", "30", "-o", options, "start"]
    else:
        command += ["-m", "fast", "stop"]
    result = subprocess.run(_as_server_user(command), capture_output=True, text=True)
    if result.returncode != 0:
        log = server.base / "log"
        detail = log.read_text() if log.exists() else result.stderr
        raise RuntimeError(f"pg_ctl {action} failed: {result.stderr}\n{detail}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _admin_connection(url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    parsed = make_url(url)
    connection = psycopg.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username or "postgres",
        password=parsed.password,
        dbname="postgres",
        autocommit=True,
    )
    try:
        yield connection
    finally:
        connection.close()


def _identifier(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"unsafe database name {name!r}")
    return f'"{name}"'
