"""Build a real Stepguard runtime for tests: temp config, SQLite store, a seeded user, a clock."""

from __future__ import annotations

import base64
import secrets
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp

from stepguard.config.load import load_config
from stepguard.service.accounts import Accounts
from stepguard.service.runtime import Runtime, build_runtime
from stepguard.storage.records import UserRecord

EXAMPLE_POLICY = Path(__file__).parents[2] / "examples" / "policy.yaml"


@dataclass
class Clock:
    """A settable clock for the shell (the core never reads one)."""

    now: float = field(default_factory=lambda: 1_900_000_000.0)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Seeded:
    user: UserRecord
    password: str
    totp_secret: str

    def code(self, at: float) -> str:
        return pyotp.TOTP(self.totp_secret).at(at)


def write_config(folder: Path, *, extra: str = "", store_url: str = "sqlite:///stepguard.db",
                 public_url: str = "http://localhost:9091", policy: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policy.yaml").write_text(policy or EXAMPLE_POLICY.read_text())
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    config = folder / "stepguard.yaml"
    config.write_text(textwrap.dedent(f"""\
        policy: policy.yaml
        server: {{public_url: "{public_url}", trusted_proxies: [127.0.0.1/32]}}
        store: {{url: "{store_url}"}}
        secrets: {{cookie_key: "{secrets.token_urlsafe(32)}", totp_keys: {{k1: "{key}"}},
                   totp_current: k1}}
        webauthn: {{rp_id: localhost, origins: ["{public_url}"]}}
        portal: {{protected_domains: [localhost, app.test, "*.app.test"]}}
        """) + extra)
    return config


def make_runtime(folder: Path, *, clock: Clock | None = None, **kwargs: str) -> Runtime:
    config = write_config(folder, **kwargs)
    return build_runtime(load_config(config), clock=clock or Clock())


def seed_user(runtime: Runtime, username: str = "alice", *, groups: tuple[str, ...] = ("admins",),
              with_totp: bool = True) -> Seeded:
    password = secrets.token_urlsafe(12)
    accounts = Accounts(runtime)
    user = accounts.add_user(username, password=password, display_name=username.title(),
                             email=f"{username}@example.com", groups=groups)
    secret = pyotp.random_base32(32)
    if with_totp:
        accounts.add_totp_secret(user, secret)
    return Seeded(user, password, secret)


def shown(client: Any, response: Any, headers: dict[str, str] | None = None) -> Any:
    """What the browser shows after a form: a failed form answers 303 back to its page (post/
    redirect/get) and that GET carries the error and its status; anything else as it is."""
    location = response.headers.get("location", "")
    if response.status_code == 303 and "stepguard_flash" in response.headers.get("set-cookie", ""):
        return client.get(location, headers=headers or {})
    return response
