# ruff: noqa: S603 - fixed commands: the installed PostgreSQL binaries and our own arguments
"""The demo's database door: a private PostgreSQL cluster (when the server binaries are installed)
with Acme's `customers` and `cards`, and the postgres door in front of it.

Root cannot run PostgreSQL: as root every server command runs as the `postgres` user on a
folder it owns. The cluster listens on 127.0.0.1 only, trusts local connections (it is a demo)
and is stopped with `pg_ctl stop` when the demo ends.
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from stepguard.service.runtime import Runtime

RUN_AS = "postgres"
ACME = [
    "CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text)",
    "INSERT INTO customers SELECT g, 'Customer ' || g, 'c' || g || '@acme.example' "
    "FROM generate_series(1, 20) g",
    "CREATE TABLE cards (id int PRIMARY KEY, customer int, number text, holder text)",
    "INSERT INTO cards SELECT g, g, '4111 1111 1111 ' || lpad(g::text, 4, '0'), "
    "'Customer ' || g FROM generate_series(1, 20) g",
]


def bindir() -> Path | None:
    """The newest installed PostgreSQL server `bin` folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


def as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", RUN_AS, "--", *command] if os.geteuid() == 0 else command


def cluster_folder(data: Path) -> Path:
    """`data/pg`; as root a folder under the temp dir instead (the `postgres` user cannot
    reach into root's private folders), one per data folder, kept across runs."""
    if os.geteuid() != 0:
        return (data / "pg").resolve()
    digest = hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"stepguard-demo-pg-{digest}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Cluster:
    bin: Path
    folder: Path
    port: int

    def start(self) -> None:
        data = self.folder / "data"
        if os.geteuid() == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.chown(self.folder, RUN_AS, RUN_AS)
        if not (data / "PG_VERSION").exists():
            subprocess.run(as_server_user([str(self.bin / "initdb"), "-D", str(data), "-U",
                                           "postgres", "--auth=trust", "-E", "UTF8",
                                           "--locale=C.UTF-8"]), check=True,
                           capture_output=True)
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        subprocess.run(as_server_user([str(self.bin / "pg_ctl"), "-D", str(data), "-w", "-t",
                                       "30", "-l", str(self.folder / "log"), "-o", options,
                                       "start"]), check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run(as_server_user([str(self.bin / "pg_ctl"), "-D",
                                       str(self.folder / "data"), "-m", "fast", "-w", "stop"]),
                       check=False, capture_output=True)

    def seed(self) -> None:
        """The `acme` database with customers and cards (once)."""
        psql = [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                "postgres", "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        found = subprocess.run([*psql, "-At", "-c",
                                "SELECT 1 FROM pg_database WHERE datname = 'acme'"],
                               capture_output=True, text=True, check=True)
        if found.stdout.strip() == "1":
            return
        subprocess.run([*psql, "-c", "CREATE DATABASE acme"], check=True, capture_output=True)
        for statement in ACME:
            subprocess.run([*psql, "-d", "acme", "-c", statement], check=True,
                           capture_output=True)


def config_text(*, listen_port: int, upstream_port: int) -> str:
    return f"""postgres:
  listeners:
    - listen: "127.0.0.1:{listen_port}"
      databases:
        - {{name: acme, upstream: "127.0.0.1:{upstream_port}", user: postgres}}
"""


def serve_in_thread(runtime: Runtime, base: Path) -> None:
    """The postgres door on its own event loop, beside the demo's HTTP server."""
    from stepguard.pgwire.gateway import PostgresGateway

    def run() -> None:
        asyncio.run(PostgresGateway(runtime, base=base).serve())

    threading.Thread(target=run, name="postgres-door", daemon=True).start()
