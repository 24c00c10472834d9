"""`TrustedProxies.client_ip`: X-Forwarded-For counts only from trusted peers; garbage refused."""

from __future__ import annotations

import pytest

from stepguard.adapters.http_context import TrustedProxies
from stepguard.core.errors import BadRequest

PROXIES = TrustedProxies.parse(["127.0.0.1/32", "10.0.0.0/8"])


@pytest.mark.parametrize("peer, header, expected", [
    ("203.0.113.5", "10.20.0.7", "203.0.113.5"),  # untrusted peer: its header is ignored
    ("203.0.113.5", "garbage", "203.0.113.5"),  # ... even garbage: never read
    ("127.0.0.1", None, "127.0.0.1"),
    ("127.0.0.1", "", "127.0.0.1"),
    ("127.0.0.1", "198.51.100.9", "198.51.100.9"),
    ("127.0.0.1", "192.0.2.1, 198.51.100.9", "198.51.100.9"),  # rightmost untrusted hop
    ("127.0.0.1", "198.51.100.9, 10.1.2.3", "198.51.100.9"),  # through a trusted hop
    ("127.0.0.1", "10.1.2.3", "127.0.0.1"),  # only trusted hops: the peer
    ("127.0.0.1", "garbage, 198.51.100.9", "198.51.100.9"),  # left of the client: not read
    ("127.0.0.1", "2001:db8::1", "2001:db8::1"),
])
def test_client_ip(peer: str, header: str | None, expected: str) -> None:
    assert PROXIES.client_ip(peer, header) == expected


@pytest.mark.parametrize("header", ["not-an-ip", "198.51.100.9, <script>", "999.1.1.1",
                                    "198.51.100.9,,", "1.2.3.4 5.6.7.8", "198.51.100.9:443",
                                    "[2001:db8::1]", "unknown", "198.51.100.9, 10.1.2.3, x"])
def test_garbage_from_a_trusted_peer_is_refused(header: str) -> None:
    with pytest.raises(BadRequest):
        PROXIES.client_ip("127.0.0.1", header)


def test_a_peer_that_is_not_an_ip_address_is_never_trusted() -> None:
    """A Unix-socket or test peer name is no address: even trusting everything, its
    X-Forwarded-For is not believed."""
    everyone = TrustedProxies.parse(["0.0.0.0/0", "::/0"])
    assert not everyone.trusts("unix:/run/stepguard.sock")
    assert everyone.client_ip("testclient", "203.0.113.9") == "testclient"
