"""`stepguard demo`: Acme Bank behind the gateway on 127.0.0.1, seeded users, a walk-through."""

from __future__ import annotations

import base64
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyotp
import uvicorn

from stepguard.cli.server_cmd import UVICORN_OPTIONS
from stepguard.config.load import load_config
from stepguard.demo import postgres as db
from stepguard.demo.bank import create_bank
from stepguard.gateway import create_app
from stepguard.service.accounts import Accounts
from stepguard.service.runtime import build_runtime

POLICY = Path(__file__).parents[3] / "examples" / "policy.yaml"
SQL_POLICY = POLICY.with_name("postgres-policy.yaml")
USERS = [("alice", "Alice Admin", ["admins"]), ("bob", "Bob Teller", ["tellers"])]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(data: Path, *, port: int, bank_port: int, idp: str = "",
                 extra: str = "") -> Path:
    """A complete config in the data folder (kept across runs, secrets generated once)."""
    data.mkdir(parents=True, exist_ok=True)
    secrets_file = data / "secrets.env"
    if not secrets_file.exists():
        secrets_file.write_text(
            f"{secrets.token_urlsafe(32)}\n{base64.b64encode(secrets.token_bytes(32)).decode()}\n"
        )
        secrets_file.chmod(0o600)
    cookie, totp = secrets_file.read_text().split()
    policy = data / "policy.yaml"
    policy.write_text(_policy_text())
    config = data / "stepguard.yaml"
    config.write_text(f"""# Written by `stepguard demo`.
policy: policy.yaml
server: {{host: 127.0.0.1, port: {port}, public_url: "http://localhost:{port}"}}
store: {{url: "sqlite:///stepguard.db"}}
secrets: {{cookie_key: "{cookie}", totp_keys: {{k1: "{totp}"}}, totp_current: k1}}
webauthn: {{rp_id: localhost, rp_name: Acme Bank, origins: ["http://localhost:{port}"]}}
portal: {{title: Acme Bank, protected_domains: [localhost, 127.0.0.1]}}
upstreams:
  - host: "*"
    url: "http://127.0.0.1:{bank_port}"
    routes:
      - paths: ["/transfers"]
        action: payments.transfer
        attributes: {{amount: "form:amount", payee: "form:payee"}}
""" + idp + extra)
    return config


def idp_config(issuer: str, secret: str) -> str:
    """The bundled OpenID provider as the sign-in source (`stepguard demo --idp`)."""
    from stepguard.demo.idp import ACR_LEVELS

    levels = ", ".join(f'"{acr}": {level}' for acr, level in ACR_LEVELS.items())
    return f"""oidc:
  providers:
    - name: demo-idp
      label: "Sign in with the demo identity provider"
      issuer: "{issuer}"
      client_id: acme-bank
      client_secret: "{secret}"
      algorithms: [ES256]
      groups_claim: groups
      acr_levels: {{{levels}}}
      step_up: either
"""


def start_idp(port: int) -> tuple[str, str]:
    """Run the bundled OpenID provider on a free port; its issuer and the client secret."""
    from stepguard.demo.idp import Client, DemoIdp, ThreadServer, User

    idp_port, secret = free_port(), secrets.token_urlsafe(24)
    idp = DemoIdp(f"http://127.0.0.1:{idp_port}")
    base = f"http://localhost:{port}"
    idp.add_client(Client("acme-bank", secret, [f"{base}/oidc/demo-idp/callback"],
                          [f"{base}/login"], f"{base}/oidc/demo-idp/backchannel-logout"))
    idp.add_user(User("idp-carol", "carol", "carol@acme.example", "Carol (IdP)", ["admins"]))
    idp.add_user(User("idp-dan", "dan", "dan@acme.example", "Dan (IdP)", ["tellers"]))
    ThreadServer(idp.app, idp_port).start()
    return idp.issuer, secret


def _policy_text() -> str:
    text = POLICY.read_text() if POLICY.exists() else ""
    if not text:
        from importlib.resources import files

        text = (files("stepguard.demo") / "policy.yaml").read_text()
    if SQL_POLICY.exists():  # the database door's rules first (they match statements only)
        import yaml

        document, sql = yaml.safe_load(text), yaml.safe_load(SQL_POLICY.read_text())
        document["rules"] = [*sql["rules"], *document.get("rules", [])]
        text = yaml.safe_dump(document, sort_keys=False)
    return text


def seed(accounts: Accounts) -> list[tuple[str, str, str]]:
    """Users with a password and a TOTP secret each (printed: this is a demo)."""
    seeded = []
    for username, name, groups in USERS:
        if accounts.rt.store.users.by_username(username) is not None:
            continue
        password = secrets.token_urlsafe(9)
        user = accounts.add_user(
            username,
            password=password,
            display_name=name,
            email=f"{username}@acme.example",
            groups=tuple(groups),
        )
        secret = pyotp.random_base32(32)
        accounts.add_totp_secret(user, secret)
        seeded.append((username, password, secret))
    return seeded


def run(data: Path = Path("data"), port: int = 9091, *, idp: bool = False) -> None:
    bank_port = free_port()
    provider = idp_config(*start_idp(port)) if idp else ""
    cluster, door_port = _database(data)
    extra = (db.config_text(listen_port=door_port, upstream_port=cluster.port)
             if cluster is not None else "")
    config = write_config(data, port=port, bank_port=bank_port, idp=provider, extra=extra)
    runtime = build_runtime(load_config(config))
    if cluster is not None:
        db.serve_in_thread(runtime, data)
        (data / "postgres.txt").write_text(f"127.0.0.1:{door_port}\n")
    seeded = seed(Accounts(runtime))
    (data / "users.txt").open("a").writelines(f"{u} {p} {s}\n" for u, p, s in seeded)
    bank = uvicorn.Server(
        uvicorn.Config(create_bank(), host="127.0.0.1", port=bank_port, log_level="warning")
    )
    threading.Thread(target=bank.run, daemon=True).start()
    _walkthrough(port, data, door_port if cluster is not None else None)
    if idp:
        print("  Identity provider: press \"Sign in with the demo identity provider\" and pick "
              "carol or dan;\n  how you sign in there (password, one-time code, passkey) sets "
              "the level Stepguard starts from.\n", flush=True)
    # uvicorn stops gracefully on SIGTERM, then raises the signal again with the handler it
    # found: make that an exit, so that the `finally` below still stops the database (the
    # default handler would end the process at once and leave PostgreSQL running).
    signal.signal(signal.SIGTERM, _exit)
    try:
        uvicorn.run(create_app(runtime), host="127.0.0.1", port=port, **UVICORN_OPTIONS)
    finally:
        if cluster is not None:
            cluster.stop()


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def current_code(data: Path, username: str, *, now: float | None = None) -> str:
    """A seeded user's authenticator code right now, with the seconds it stays valid."""
    for line in (data / "users.txt").read_text().splitlines():
        user, _, secret = line.split()
        if user == username:
            at = time.time() if now is None else now
            left = 30 - int(at) % 30
            return f"{pyotp.TOTP(secret).at(at)}   (valid for {left} more second" + (
                "s)" if left != 1 else ")")
    raise SystemExit(f"no demo user {username!r} in {data / 'users.txt'}")


def _database(data: Path) -> tuple[db.Cluster | None, int]:
    """A private PostgreSQL with Acme's tables, when the server binaries are installed."""
    found = db.bindir()
    if found is None:
        return None, 0
    cluster = db.Cluster(found, db.cluster_folder(data), db.free_port())
    try:
        cluster.start()
        cluster.seed()
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"(no database door: PostgreSQL did not start: {exc})")
        return None, 0
    return cluster, db.free_port()


def _walkthrough(port: int, data: Path, door_port: int | None = None) -> None:
    url = f"http://localhost:{port}"
    # The commands below are printed with this installation's own paths: they work as printed.
    stepguard = Path(sys.argv[0]).resolve() if Path(sys.argv[0]).name == "stepguard" else None
    command = f"{stepguard}" if stepguard else f"{sys.executable} -m stepguard.cli.main"
    print(f"\nAcme Bank behind Stepguard: {url}   (store: {data / 'stepguard.db'})\n")
    print("Users (username password totp-secret) — also in", data / "users.txt")
    for line in (data / "users.txt").read_text().splitlines():
        user, password, secret = line.split()
        print(f"  {user:6} {password:14} {secret}")
    print(
        f"""
Walk-through:
  1. Open {url}/ and sign in as alice: the dashboard needs only the password (aal1).
  2. {url}/transfers: send 50 to Bob (passes), then 5000 to Bob — Stepguard holds the POST,
     asks for a code, shows "Approve a transfer of 5000 to Bob", then replays it once.
  3. {url}/customers/export needs a passkey (aal3): add one at {url}/account first.
  4. {url}/admin shows users, sessions and the hash-chained audit ledger.
  5. Push approval: in a second browser, sign in and add it at {url}/account/push-device; then
     on a step-up page choose "Send a push" and pick the number in that second browser.
  A current code for alice (run it when you need one; codes change every 30 s):
    {command} demo-code alice --data {data}
  Verify the ledger:
    {command} audit verify -c {data / "stepguard.yaml"}
""",
        flush=True,
    )
    if door_port:
        print(f"""  6. The database door (PostgreSQL, database acme) on 127.0.0.1:{door_port}: at
     {url}/account/db-tokens issue a token (after a code), run the psql line it shows, then
     DELETE FROM customers WHERE id = 1 — psql shows a link; approve it in the browser and the
     statement runs once. SELECT number FROM cards needs the same; SELECT name FROM customers
     does not. (docs/databases.md)
""", flush=True)  # noqa: S608 - text for people, not a query
    time.sleep(0)
