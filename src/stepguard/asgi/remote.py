"""Remote mode: ask a Stepguard server's decision API over HTTP, and fail closed on any error.

One `httpx.AsyncClient` per decider (created on first use, inside the running event loop) keeps
connections alive between requests; each call has a total deadline (default 0.5 s) enforced
around the whole exchange, whatever the transport. Anything but a valid
`200` answer — a timeout, a refused connection, a 5xx, a 401 for a wrong API key, a body that
does not match the schema — raises `DecisionUnavailable`, which the middleware turns into a 503.
A `400` (the request itself is ambiguous, e.g. an encoded slash) raises `BadRequest`.
"""

from __future__ import annotations

import anyio
import httpx
from pydantic import ValidationError

from stepguard.adapters.decision_api import DECIDE_PATH, DecideRequest, DecideResponse
from stepguard.core.errors import BadRequest, DecisionUnavailable


class RemoteDecider:
    """`await decider.decide(request)` against `POST {url}/api/v1/decide`."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 0.5,
                 max_connections: int = 64, forward_bearer: bool = False,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        base = url.rstrip("/")
        self.url = base if base.endswith(DECIDE_PATH) else base + DECIDE_PATH
        self.forward_bearer = forward_bearer
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._timeout = httpx.Timeout(timeout)
        self._deadline = timeout
        self._limits = httpx.Limits(max_connections=max_connections,
                                    max_keepalive_connections=max_connections)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:  # never show the API key
        return f"RemoteDecider({self.url!r})"

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient(timeout=self._timeout, limits=self._limits,
                                             transport=self._transport, headers=self._headers)
        return self._client

    async def decide(self, request: DecideRequest) -> DecideResponse:
        body = request.model_dump_json(exclude_none=True)
        try:
            with anyio.fail_after(self._deadline):  # a total deadline, whatever the transport
                answer = await self.client.post(self.url, content=body,
                                                headers={"Content-Type": "application/json"})
        except (httpx.HTTPError, TimeoutError) as exc:
            raise DecisionUnavailable(f"decision API unreachable ({type(exc).__name__})") from None
        if answer.status_code == 400:
            raise BadRequest("the decision API refused the request as malformed")
        if answer.status_code != 200:
            raise DecisionUnavailable(f"decision API answered {answer.status_code}")
        try:
            return DecideResponse.model_validate_json(answer.content)
        except ValidationError:
            raise DecisionUnavailable("decision API answer does not match its schema") from None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
