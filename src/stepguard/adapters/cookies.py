"""Stepguard's cookies as every door reads them: the session cookie and the signed device cookie.

The session cookie is read in one place (`SessionCookie`) by forward-auth, the reverse proxy,
the portal and the ASGI middleware. Its names follow the portal's `cookie_attributes`: on https
the portal sets `__Host-<name>` (no domain) or `__Secure-<name>` (with a domain), and only those
are read — a plain `<name>` cookie there could have been planted by a sibling subdomain or over
plain http (cookie tossing, session fixation), which is what the prefixes exist to rule out. On
http only the plain name exists. A door that cannot know the portal's scheme (the middleware in
remote mode) reads the prefixed names first, then the plain one.

The device cookie is a signed value (`runtime.sign`); `DeviceCookies` checks its HMAC once per
distinct value and remembers the answer (bounded): a browser sends the same cookie on every
request, and the HMAC is the most expensive step of reading it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from starlette.requests import cookie_parser

from stepguard.adapters.memo import Memo
from stepguard.config.schema import StepguardConfig
from stepguard.service.runtime import unsign

DEVICE_COOKIE = "stepguard_device"
DEVICE_COOKIE_LIMIT = 256  # characters: a longer value is no cookie Stepguard signed


def parse_cookies(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Every cookie of raw ASGI headers, parsed like Starlette's `Request.cookies` (several
    `Cookie` headers are read in order; for a name given twice, the last value)."""
    cookies: dict[str, str] = {}
    for name, value in headers:
        if name == b"cookie":
            cookies.update(cookie_parser(value.decode("latin-1")))
    return cookies


class SessionCookie:
    """Which cookie names carry the session token, and reading it."""

    def __init__(self, name: str, *, https: bool | None) -> None:
        prefixed = (f"__Host-{name}", f"__Secure-{name}")
        self.names: tuple[str, ...] = (
            prefixed if https else (name,) if https is False else (*prefixed, name))

    @classmethod
    def of(cls, config: StepguardConfig) -> SessionCookie:
        """The names the portal of this configuration sets (see `cookie_attributes`)."""
        return cls(config.session.cookie_name,
                   https=config.server.public_url.startswith("https://"))

    def token(self, cookies: Mapping[str, str]) -> str | None:
        """The session token, or None when no accepted cookie holds one."""
        for name in self.names:
            value = cookies.get(name)
            if value:
                return value
        return None

    def __contains__(self, name: str) -> bool:
        return name in self.names


class DeviceCookies:
    """Verified device ids of signed device-cookie values, memoised (bounded).

    The key is fixed per instance, so a value's answer never changes: a forged value stays ""
    and a genuine one keeps its id. Only values up to `DEVICE_COOKIE_LIMIT` characters are
    checked or remembered (anything longer is not a cookie Stepguard set)."""

    def __init__(self, key: bytes, *, size: int = 4096) -> None:
        self.key = key
        self._known: Memo[str, str] = Memo(size)

    def device_id(self, signed: str | None) -> str:
        if not signed or len(signed) > DEVICE_COOKIE_LIMIT:
            return ""
        known = self._known.get(signed)
        if known is None:
            known = unsign(self.key, signed)
            self._known.put(signed, known)
        return known
