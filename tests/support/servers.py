"""Real servers for tests and benchmarks: nginx, Caddy, Redis and Python ASGI apps under uvicorn.

Each server is its own process (its own session, so the whole process group is stopped by the
PID kept here), bound to 127.0.0.1 on a free port, with its config and log in a work directory.
`start()` waits until the server answers and raises `ServerStartError` with the log's tail when
it does not; `stop()` uses the server's own stop command, then SIGTERM, then SIGKILL; anything
still running when the interpreter exits is stopped by an `atexit` hook. Follows
/work/shared/TOOLING.md.

`nginx_conf()` and `caddyfile()` return the files users copy from `deploy/`, with only the
ports and the host name substituted, so the tests exercise exactly what the docs tell users to
install.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-system-packages"
IDENTITY_HEADERS = (
    "Remote-User",
    "Remote-Groups",
    "Remote-Email",
    "Remote-Name",
    "Stepguard-Acr",
    "Stepguard-Amr",
)
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin", "/usr/local/bin")
_running: set[Process] = set()


class ServerStartError(RuntimeError):
    """A server did not start or did not answer in time; the message carries its log's tail."""


class PackageUnavailable(RuntimeError):
    """A binary is missing and `scripts/install-system-packages` could not install it."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def find_binary(name: str) -> str | None:
    """The path of an executable on PATH or in the sbin directories (nginx is /usr/sbin/nginx)."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def ensure_packages(*names: str) -> dict[str, str]:
    """Paths of the named binaries, running `scripts/install-system-packages` if any is missing.

    Raises PackageUnavailable (with the script's output) if a binary is still missing after.
    """
    missing = [name for name in names if find_binary(name) is None]
    detail = ""
    if missing:
        result = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900
        )
        detail = (result.stdout + result.stderr).strip()
    paths = {name: find_binary(name) for name in names}
    still_missing = [name for name, path in paths.items() if path is None]
    if still_missing:
        raise PackageUnavailable(
            f"not installed and could not be installed: {', '.join(still_missing)}"
            + (f"\n{detail}" if detail else "")
        )
    return {name: path for name, path in paths.items() if path is not None}


def require_binaries(*names: str) -> dict[str, str]:
    """In a test: `ensure_packages(*names)`, skipping the test if they cannot be installed —
    except on CI (`CI` set), where a missing server fails the test instead of hiding it."""
    import pytest

    try:
        return ensure_packages(*names)
    except PackageUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have these servers: {exc}")
        pytest.skip(str(exc))


def python_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the repository's `src` and root on PYTHONPATH."""
    paths = [str(REPO_ROOT / "src"), str(REPO_ROOT)]
    inherited = os.environ.get("PYTHONPATH")
    if inherited:
        paths.append(inherited)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **(extra or {})}


class Process:
    """One server process: started in its own session, stopped by its PID (or its stop command).

    `env` replaces the environment (None: inherit this one). Readiness: the TCP port accepts a
    connection and, when `ready_path` is given, an HTTP GET of it gets any response.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        port: int,
        workdir: Path,
        name: str = "server",
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        ready_path: str | None = None,
        ready_timeout: float = 20.0,
        stop_argv: Sequence[str] | None = None,
        stop_timeout: float = 10.0,
    ) -> None:
        self.argv = list(argv)
        self.port = port
        self.workdir = Path(workdir)
        self.name = name
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.ready_path = ready_path
        self.ready_timeout = ready_timeout
        self.stop_argv = list(stop_argv) if stop_argv else None
        self.stop_timeout = stop_timeout
        self.log_path = self.workdir / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        if self.running:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        _running.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            self._ask_to_stop(process)
            if not _wait_exit(process, self.stop_timeout):
                _signal_group(process.pid, signal.SIGTERM)
                if not _wait_exit(process, 5.0):
                    _signal_group(process.pid, signal.SIGKILL)
                    process.wait(5.0)
        if process is not None:
            _signal_group(process.pid, signal.SIGKILL)  # stray children (uvicorn workers)
        if self._log is not None:
            self._log.close()
            self._log = None
        _running.discard(self)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def _ask_to_stop(self, process: subprocess.Popen[bytes]) -> None:
        if self.stop_argv is None:
            process.send_signal(signal.SIGTERM)
            return
        try:
            subprocess.run(self.stop_argv, capture_output=True, timeout=self.stop_timeout)
        except (OSError, subprocess.TimeoutExpired):
            process.send_signal(signal.SIGTERM)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            code = self._process.poll()
            if code is not None:
                raise ServerStartError(self._failure(f"exited with status {code}"))
            if self._answers():
                return
            time.sleep(0.05)
        raise ServerStartError(self._failure(f"did not answer within {self.ready_timeout:.0f} s"))

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
        except OSError:
            return False
        if self.ready_path is None:
            return True
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2.0)
        try:
            connection.request("GET", self.ready_path)
            connection.getresponse().read()
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()
        return True

    def _failure(self, what: str) -> str:
        command = " ".join(self.argv)
        return (
            f"{self.name} {what} (port {self.port}, workdir {self.workdir})\n"
            f"command: {command}\n--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )


def _wait_exit(process: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # our own session: pgid == the PID we started


@atexit.register
def _stop_everything() -> None:
    for process in list(_running):
        process.stop()


# --- nginx ----------------------------------------------------------------------------------

_NGINX_MAIN = """\
# Generated by tests/support/servers.py: a private nginx; everything it writes is in {dir}.
{user}worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log {log_level};

events {{
    worker_connections 4096;
}}

http {{
    access_log {access_log};
    client_body_temp_path {dir}/client_body_temp;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;
    default_type application/octet-stream;

    include {dir}/site.conf;
}}
"""


class Nginx(Process):
    """A private nginx: `conf_text` is what goes inside `http { }` (a conf.d file, e.g. the one
    `nginx_conf()` returns). pid, logs and every temp path live in `workdir`."""

    def __init__(
        self,
        conf_text: str,
        workdir: Path,
        *,
        port: int | None = None,
        workers: int = 1,
        access_log: bool = True,
        log_level: str = "notice",
    ) -> None:
        binary = ensure_packages("nginx")["nginx"]
        workdir = Path(workdir)
        self.conf_text = conf_text
        self.main_text = _NGINX_MAIN.format(
            dir=workdir,
            # As root, workers would run as `nobody`, which cannot enter a 0700 temp dir.
            user="user root root;\n" if os.geteuid() == 0 else "",
            workers=workers,
            log_level=log_level,
            access_log=f"{workdir}/access.log" if access_log else "off",
        )
        base = [binary, "-p", str(workdir), "-c", str(workdir / "nginx.conf")]
        super().__init__(
            [*base, "-g", "daemon off;"],
            port=port if port is not None else _listen_port(conf_text, r"listen\s+"),
            workdir=workdir,
            name="nginx",
            stop_argv=[*base, "-s", "quit"],
        )
        self._test_argv = [*base, "-t", "-q"]

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "site.conf").write_text(self.conf_text)
        (self.workdir / "nginx.conf").write_text(self.main_text)
        check = subprocess.run(self._test_argv, capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise ServerStartError(
                f"nginx rejected its config ({self.workdir / 'site.conf'}):\n{check.stderr}"
            )
        return super().start()

    def error_log(self) -> str:
        path = self.workdir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _listen_port(text: str, prefix: str) -> int:
    match = re.search(prefix + r"(?:[\d.]+:)?(\d+)", _without_comments(text))
    if match is None:
        raise ValueError("no listen port found in the config; pass port=")
    return int(match.group(1))


# --- Caddy ----------------------------------------------------------------------------------

_CADDY_GLOBALS = """\
# Generated by tests/support/servers.py: a private Caddy; its state is in {dir}.
{{
\tadmin off
\tauto_https off
\tstorage file_system {dir}/storage
}}

"""


class Caddy(Process):
    """A private Caddy: `caddyfile_text` is the site block(s), e.g. from `caddyfile()`; the
    global options (admin off, auto_https off, storage in `workdir`) are prepended here."""

    def __init__(self, caddyfile_text: str, workdir: Path, *, port: int | None = None) -> None:
        binary = ensure_packages("caddy")["caddy"]
        workdir = Path(workdir)
        self.caddyfile_text = _CADDY_GLOBALS.format(dir=workdir) + caddyfile_text
        config = workdir / "Caddyfile"
        super().__init__(
            [binary, "run", "--config", str(config), "--adapter", "caddyfile"],
            port=port if port is not None else _listen_port(caddyfile_text, r"http://[^\s:]+:"),
            workdir=workdir,
            name="caddy",
            env={
                **os.environ,
                "XDG_CONFIG_HOME": str(workdir / "config"),
                "XDG_DATA_HOME": str(workdir / "data"),
                "HOME": str(workdir),
            },
        )

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "Caddyfile").write_text(self.caddyfile_text)
        return super().start()


# --- Redis ----------------------------------------------------------------------------------


class Redis(Process):
    """A private Redis without persistence. `stop()` then `start()` simulates an outage (same
    port, so clients reconnect to the same URL)."""

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        paths = ensure_packages("redis-server", "redis-cli")
        port = port if port is not None else free_port()
        workdir = Path(workdir)
        super().__init__(
            [
                paths["redis-server"],
                "--bind", "127.0.0.1",
                "--port", str(port),
                "--save", "",
                "--appendonly", "no",
                "--dir", str(workdir),
                "--daemonize", "no",
            ],
            port=port,
            workdir=workdir,
            name="redis",
            stop_argv=[paths["redis-cli"], "-p", str(port), "shutdown", "nosave"],
        )

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


# --- Python ASGI apps -----------------------------------------------------------------------


class UvicornServer(Process):
    """`python -m uvicorn APP` (`factory=True` adds `--factory`) with the repository on
    PYTHONPATH; `env` is added to this process's environment."""

    def __init__(
        self,
        app: str,
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        factory: bool = False,
        workers: int = 1,
        ready_path: str = "/",
        extra_args: Sequence[str] = (),
        name: str = "uvicorn",
    ) -> None:
        port = port if port is not None else free_port()
        argv = [
            sys.executable, "-m", "uvicorn", app,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--workers", str(workers),
            "--no-access-log",
            "--log-level", "warning",
            *(["--factory"] if factory else []),
            *extra_args,
        ]
        super().__init__(
            argv,
            port=port,
            workdir=Path(workdir),
            name=name,
            env=python_env(env),
            cwd=REPO_ROOT,
            ready_path=ready_path,
        )


# --- the deploy/ configs, with ports substituted ---------------------------------------------

# Placeholders as written in deploy/: (text, what it stands for).
NGINX_LISTEN = "listen 80;"
NGINX_SERVER_NAME = "server_name app.example.com;"
STEPGUARD_ADDRESS = "127.0.0.1:9091"
APP_ADDRESS = "127.0.0.1:8080"
CADDY_SITE = "app.example.com {"


def nginx_conf(
    *, listen_port: int, stepguard_port: int, upstream_port: int, server_name: str = "app.test"
) -> str:
    """deploy/nginx/stepguard.conf with its listen address, server name and ports substituted."""
    text = (DEPLOY_DIR / "nginx" / "stepguard.conf").read_text()
    return _substitute(
        text,
        [
            (NGINX_LISTEN, f"listen 127.0.0.1:{listen_port};"),
            (NGINX_SERVER_NAME, f"server_name {server_name};"),
            (STEPGUARD_ADDRESS, f"127.0.0.1:{stepguard_port}"),
            (APP_ADDRESS, f"127.0.0.1:{upstream_port}"),
        ],
    )


def caddyfile(
    *, listen_port: int, stepguard_port: int, upstream_port: int, site_name: str = "app.test"
) -> str:
    """deploy/caddy/Caddyfile with its site address (plain HTTP on 127.0.0.1) and ports
    substituted."""
    text = (DEPLOY_DIR / "caddy" / "Caddyfile").read_text()
    return _substitute(
        text,
        [
            (CADDY_SITE, f"http://{site_name}:{listen_port} {{\n\tbind 127.0.0.1"),
            (STEPGUARD_ADDRESS, f"127.0.0.1:{stepguard_port}"),
            (APP_ADDRESS, f"127.0.0.1:{upstream_port}"),
        ],
    )


def _substitute(text: str, replacements: Sequence[tuple[str, str]]) -> str:
    for placeholder, value in replacements:
        if placeholder not in _without_comments(text):
            raise ValueError(f"deploy config no longer contains {placeholder!r}")
        text = "\n".join(
            line if line.lstrip().startswith("#") else line.replace(placeholder, value)
            for line in text.splitlines()
        )
    return text + "\n"


def _without_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
