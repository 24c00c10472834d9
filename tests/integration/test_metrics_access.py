"""`/metrics` is never served unauthenticated on the public port (issue 9 item 13).

Default: not on the public port at all. `server.metrics_token`: on the public port behind
`Authorization: Bearer <token>`. `server.metrics_listen`: on its own listener (loopback or an
internal address), where the token is required too when one is set.
"""

from __future__ import annotations

import http.client
from pathlib import Path

from starlette.testclient import TestClient

from stepguard.web.app import create_app
from tests.support.gateway import make_runtime
from tests.support.servers import free_port

BASE = "http://localhost:9091"
TOKEN = "m3trics-t0ken-for-the-scraper-only"


def _client(tmp_path: Path, server: str = "") -> TestClient:
    runtime = make_runtime(tmp_path, extra=f"metrics: {{{server}}}\n" if server else "")
    return TestClient(create_app(runtime), base_url=BASE, client=("203.0.113.7", 1000))


def _scrape(port: int, token: str | None = None) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/metrics",
                           headers={"Authorization": f"Bearer {token}"} if token else {})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_by_default_the_public_port_serves_no_metrics(tmp_path: Path) -> None:
    with _client(tmp_path) as client:
        client.get("/healthz")
        answer = client.get("/metrics")
    assert answer.status_code == 404
    assert "stepguard_" not in answer.text


def test_a_token_opens_metrics_on_the_public_port_to_its_holder_only(tmp_path: Path) -> None:
    with _client(tmp_path, f'token: "{TOKEN}"') as client:
        anonymous = client.get("/metrics")
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        in_query = client.get(f"/metrics?token={TOKEN}")
        right = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert anonymous.status_code == wrong.status_code == in_query.status_code == 401
    assert "stepguard_" not in anonymous.text + wrong.text + in_query.text
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert right.status_code == 200 and "stepguard_decisions_total" in right.text


def test_a_separate_listener_serves_metrics_and_the_public_port_does_not(tmp_path: Path) -> None:
    port = free_port()
    with _client(tmp_path, f'listen: "127.0.0.1:{port}"') as client:
        status, text = _scrape(port)
        public = client.get("/metrics")
        other_path = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        other_path.request("GET", "/login")
        other = other_path.getresponse().status
    assert status == 200 and "stepguard_decisions_total" in text
    assert public.status_code == 404
    assert other == 404  # the listener serves metrics only, never the portal


def test_the_separate_listener_also_requires_the_token_when_one_is_set(tmp_path: Path) -> None:
    port = free_port()
    with _client(tmp_path, f'listen: "127.0.0.1:{port}", token: "{TOKEN}"'):
        assert _scrape(port)[0] == 401
        assert _scrape(port, "wrong")[0] == 401
        assert _scrape(port, TOKEN)[0] == 200
