"""TLS to clients (SSLRequest) and to the upstream, `require_tls`, the account page's database
tokens, `stepguard db-login` and `stepguard postgres serve`."""

from __future__ import annotations

import asyncio
import datetime
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from psycopg.conninfo import make_conninfo
from typer.testing import CliRunner

from stepguard.cli.main import app
from stepguard.core.context import AuthEvent
from stepguard.core.levels import Level
from tests.pgdoor.conftest import Door, make_door, stop_door
from tests.support.postgres import PostgresServer
from tests.support.servers import free_port

pytestmark = pytest.mark.postgres


def write_cert(folder: Path, name: str = "server") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture()
def tls_door(tmp_path: Path, postgres_server: PostgresServer) -> Iterator[Door]:
    write_cert(tmp_path)
    made = make_door(tmp_path, postgres_server, extra=(
        "      tls_cert: server.crt\n      tls_key: server.key\n      require_tls: true\n"))
    yield made
    stop_door(made)


def until_reloaded(loaded: Callable[[], bool], timeout: float = 10.0) -> None:
    """pg_reload_conf() only signals the server: wait until new connections see the change."""
    deadline = time.monotonic() + timeout
    while not loaded():
        assert time.monotonic() < deadline, "PostgreSQL did not load its new configuration"
        time.sleep(0.05)


def _show(server: PostgresServer, setting: str) -> str:
    with psycopg.connect(server.url().replace("+psycopg", ""), autocommit=True) as fresh:
        return str(fresh.execute(f"SHOW {setting}").fetchone()[0])  # type: ignore[index]


def _refuses(server: PostgresServer, role: str, password: str) -> bool:
    """A wrong password is refused (the server's `trust` no longer applies to `role`)."""
    conninfo = make_conninfo(server.url().replace("+psycopg", ""), user=role, password=password)
    try:
        psycopg.connect(conninfo).close()
    except psycopg.OperationalError:
        return True
    return False


def test_tls_to_the_client_and_require_tls(tls_door: Door) -> None:
    with psycopg.connect(tls_door.url().replace("sslmode=disable", "sslmode=require"),
                         autocommit=True) as connection:
        assert connection.pgconn.ssl_in_use
        assert connection.execute("SELECT count(*) FROM customers").fetchone() == (10,)
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(tls_door.url())  # sslmode=disable
    assert "requires TLS" in str(caught.value)
    result = subprocess.run(["psql", tls_door.url().replace("sslmode=disable", "sslmode=require"),
                             "-X", "-At", "-c", "SELECT ssl FROM pg_stat_ssl "
                             "WHERE pid = pg_backend_pid()"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_tls_to_the_upstream(tmp_path: Path, postgres_server: PostgresServer) -> None:
    """The upstream asks for TLS (`tls: require`): Stepguard's own connection is encrypted."""
    data = postgres_server.base / "data"
    cert, key = write_cert(tmp_path, "pg")
    for source, target in ((cert, data / "server.crt"), (key, data / "server.key")):
        shutil.copy(source, target)
        if os.geteuid() == 0:
            shutil.chown(target, "postgres", "postgres")
        os.chmod(target, 0o600)
    admin = psycopg.connect(postgres_server.url().replace("+psycopg", ""), autocommit=True)
    admin.execute("ALTER SYSTEM SET ssl = on")
    admin.execute("SELECT pg_reload_conf()")
    until_reloaded(lambda: _show(postgres_server, "ssl") == "on")
    door = make_door(tmp_path / "door", postgres_server, database_extra=", tls: require")
    try:
        assert door.runtime.config.postgres.listeners[0].databases[0].tls == "require"
        with door.connect() as connection:
            assert connection.execute("SELECT ssl FROM pg_stat_ssl "
                                      "WHERE pid = pg_backend_pid()").fetchone() == (True,)
    finally:
        stop_door(door)
        admin.execute("ALTER SYSTEM RESET ssl")
        admin.execute("SELECT pg_reload_conf()")
        admin.close()


def test_the_account_page_issues_a_token_after_a_fresh_proof(door: Door) -> None:
    from stepguard.gateway import create_app

    app_ = create_app(door.runtime)
    cookie = {"stepguard_session": door.token}
    transport = httpx.ASGITransport(app=app_)

    async def run() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost:9091",
                                     cookies=cookie) as client:
            page = await client.get("/account/db-tokens")
            token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
            stale = await client.post("/account/db-tokens", data={
                "csrf_token": token, "database": "app"},
                headers={"Origin": "http://localhost:9091"})
            door.runtime.store.sessions.add_event(door.session.id, AuthEvent(
                factor="totp", amr=("otp",), level=Level.AAL2, at=door.clock.now))
            fresh = await client.post("/account/db-tokens", data={
                "csrf_token": token, "database": "app"},
                headers={"Origin": "http://localhost:9091"})
            return page, stale, fresh

    page, stale, fresh = asyncio.run(run())
    assert page.status_code == 200 and "Issue a database token" in page.text
    assert stale.status_code == 303 and "/step-up/" in stale.headers["location"]
    assert fresh.status_code == 200 and 'psql "postgresql://alice.' in fresh.text
    assert fresh.headers["cache-control"] == "no-store"
    url = fresh.text.split('psql "')[1].split('"')[0].replace("&amp;", "&")
    url = url.replace("localhost:", "127.0.0.1:").replace("sslmode=prefer", "sslmode=disable")
    with psycopg.connect(url, autocommit=True) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)
    token_id = url.split("://alice.")[1].split(":")[0]

    async def revoke() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost:9091",
                                     cookies=cookie) as client:
            page = await client.get("/account/db-tokens")
            csrf = page.text.split('name="csrf_token" value="')[1].split('"')[0]
            return await client.post("/account/db-tokens/revoke", data={
                "csrf_token": csrf, "token_id": token_id},
                headers={"Origin": "http://localhost:9091"})

    assert asyncio.run(revoke()).status_code == 303
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url)


def test_db_login_prints_a_connection_string_and_postgres_serve_answers(
        door: Door, tmp_path: Path) -> None:
    config = tmp_path / "stepguard.yaml"  # the door's configuration (make_door wrote it)
    runner = CliRunner()
    result = runner.invoke(app, ["db-login", "alice", "--database", "app", "--config",
                                 str(config)])
    assert result.exit_code == 0, result.output
    url = result.output.strip().replace("sslmode=prefer", "sslmode=disable")
    assert url.startswith("postgresql://alice.")
    assert runner.invoke(app, ["db-login", "alice", "--database", "nope", "--config",
                               str(config)]).exit_code == 1
    # the same config served by `stepguard postgres serve` on another port
    port = free_port()
    text = config.read_text().replace(f"127.0.0.1:{door.port}", f"127.0.0.1:{port}")
    served = tmp_path / "served.yaml"
    served.write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-c", "from stepguard.cli.main import app; app()",
                                "postgres", "serve", "--config", str(served)], env=env,
                               cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with psycopg.connect(url.replace(f":{door.port}/", f":{port}/"),
                                     autocommit=True) as connection:
                    assert connection.execute("SELECT 2").fetchone() == (2,)
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize("method", ["scram-sha-256", "md5", "password"])
def test_stepguard_signs_in_upstream_as_the_configured_role(
        tmp_path: Path, postgres_server: PostgresServer, method: str) -> None:
    """The upstream asks the role for SCRAM-SHA-256, MD5 or a cleartext password; the client
    never sees that exchange (it signed in with its token), and a wrong password is a clean
    error, not a hang."""
    role = f"door_{method.replace('-', '_')}"
    hba = postgres_server.base / "data" / "pg_hba.conf"
    line = f"host all {role} 127.0.0.1/32 {method}\n"
    original = hba.read_text()
    admin = psycopg.connect(postgres_server.url().replace("+psycopg", ""), autocommit=True)
    try:
        if line not in original:
            hba.write_text(line + original)
        encryption = "md5" if method == "md5" else "scram-sha-256"
        admin.execute(f"SET password_encryption = '{encryption}'")
        admin.execute(f"DROP ROLE IF EXISTS {role}")
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'role-secret' SUPERUSER")
        admin.execute("SELECT pg_reload_conf()")
        until_reloaded(lambda: _refuses(postgres_server, role, "not-the-role-secret"))
        for password, works in (("role-secret", True), ("wrong", False)):
            folder = tmp_path / f"{method}-{works}"
            door = make_door(folder, postgres_server, user=role,
                             database_extra=f", password: {password}")
            try:
                if works:
                    with door.connect() as connection:
                        assert connection.execute("SELECT current_user").fetchone() == (role,)
                else:
                    with pytest.raises(psycopg.OperationalError) as caught:
                        door.connect()
                    assert "could not reach the database" in str(caught.value)
                    assert "role-secret" not in str(caught.value)
            finally:
                stop_door(door)
    finally:
        hba.write_text(original)
        admin.execute("SELECT pg_reload_conf()")
        admin.close()
