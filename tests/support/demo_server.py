"""`stepguard demo` as a real server for browser tests: Acme Bank behind the gateway.

`DemoServer(workdir).start()` runs `python -m stepguard.cli.main demo --data WORKDIR/data --port P`
as its own process (its own session, stopped by its PID; see `tests.support.servers.Process`),
waits until `/healthz` answers, then reads the seeded users from `users.txt`. `base_url` uses
`localhost` (the WebAuthn RP id) although the server binds 127.0.0.1: browsers must map
`localhost` to 127.0.0.1 (`CHROMIUM_HOST_RULES`). On a start failure `ServerStartError` carries the
tail of the server's output; `log_tail()` shows it after a failed test.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from stepguard.demo import postgres as demo_postgres
from tests.support.servers import REPO_ROOT, Process, free_port, python_env

CHROMIUM_HOST_RULES = "--host-resolver-rules=MAP localhost 127.0.0.1"


@dataclass(frozen=True)
class DemoUser:
    username: str
    password: str
    totp_secret: str


class DemoServer(Process):
    """The demo gateway + bank on 127.0.0.1:port with an embedded SQLite store in `workdir/data`."""

    def __init__(self, workdir: Path, *, port: int | None = None,
                 ready_timeout: float = 30.0) -> None:
        port = port or free_port()
        self.data = Path(workdir) / "data"
        super().__init__(
            [sys.executable, "-u", "-m", "stepguard.cli.main", "demo", "--data", str(self.data),
             "--port", str(port)],
            port=port, workdir=Path(workdir), name="stepguard-demo", env=python_env(),
            cwd=REPO_ROOT, ready_path="/healthz", ready_timeout=ready_timeout,
        )
        self.users: dict[str, DemoUser] = {}

    @property
    def base_url(self) -> str:
        return f"http://localhost:{self.port}"

    def start(self) -> Self:
        super().start()
        self.users = read_users(self.data / "users.txt")
        return self

    def stop(self) -> None:
        """Stop the demo, then its PostgreSQL cluster if the demo did not get to (a demo killed
        before its own clean-up would leave the cluster running), and remove the cluster's
        folder when it lies outside the test's own (as root: under the temp dir)."""
        super().stop()
        found, folder = demo_postgres.bindir(), demo_postgres.cluster_folder(self.data)
        if found is not None and (folder / "data" / "postmaster.pid").exists():
            demo_postgres.Cluster(found, folder, 0).stop()
        if not folder.is_relative_to(self.data.resolve()):
            shutil.rmtree(folder, ignore_errors=True)

    @property
    def postgres_port(self) -> int | None:
        """The demo's database door, when the demo could start a PostgreSQL."""
        found = self.data / "postgres.txt"
        return int(found.read_text().strip().rsplit(":", 1)[1]) if found.exists() else None

    def user(self, username: str) -> DemoUser:
        try:
            return self.users[username]
        except KeyError:
            raise KeyError(f"no seeded user {username!r} in {self.data / 'users.txt'}") from None


def read_users(path: Path) -> dict[str, DemoUser]:
    """`username password totp_secret` per line, as `stepguard demo` writes it."""
    users = {}
    for line in path.read_text().splitlines():
        if line.strip():
            username, password, secret = line.split()
            users[username] = DemoUser(username, password, secret)
    return users
