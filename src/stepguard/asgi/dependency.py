"""`require_step_up`: decide inside a route, with the values only the application knows.

    transfer_guard = require_step_up("payments.transfer", amount=from_json("amount"),
                                     payee=from_json("payee"))

    @app.post("/transfers")
    async def transfer(body: TransferIn, grant: StepguardState = Depends(transfer_guard)): ...

or, from inside the route once the body is parsed:

    await transfer_guard.check(request, amount=body.amount, payee=body.payee)

Either way the request is decided again as the named action with those attributes (policy rules
match it with `match: {actions: [payments.transfer]}`), through the `StepguardMiddleware` that
wraps the app. A step-up or a denial raises `StepUpRequired`, an `HTTPException` carrying the
exact response (303 to the challenge for a browser, RFC 9470 401 for an API client, 403, 503);
register `step_up_exception_handler` to send that response as is (without it the framework's own
HTTPException handler still sends the right status and headers).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from stepguard.asgi.middleware import SCOPE_KEY, StepguardMiddleware, StepguardState, bad_request
from stepguard.core.canonical import form_pairs, loads_json, single_values
from stepguard.core.errors import BadRequest

Getter = Callable[[Request], Any]
_PASSED_HEADERS = ("location", "www-authenticate", "retry-after", "cache-control")


class StepUpRequired(HTTPException):
    """The request may not proceed; `response` is what the client must get."""

    def __init__(self, response: Response) -> None:
        headers = {k: v for k, v in response.headers.items() if k in _PASSED_HEADERS}
        super().__init__(status_code=response.status_code, detail=bytes(response.body).decode(),
                         headers=headers)
        self.response = response


async def step_up_exception_handler(_: Request, exc: Exception) -> Response:
    """Send a `StepUpRequired`'s response unchanged (register it with `add_exception_handler`)."""
    assert isinstance(exc, StepUpRequired)
    return exc.response


class StepUpDependency:
    """A FastAPI/Starlette dependency: `Depends(require_step_up(...))`."""

    def __init__(self, action: str, attributes: Getter | None, getters: Mapping[str, Getter]):
        self.action = action
        self.attributes = attributes
        self.getters = dict(getters)

    async def __call__(self, request: Request) -> StepguardState:
        try:
            values: dict[str, Any] = dict(await _maybe_await(self.attributes(request))) \
                if self.attributes else {}
            for name, getter in self.getters.items():
                values[name] = await _maybe_await(getter(request))
        except BadRequest as exc:  # a field given twice, a JSON key repeated: never guessed
            raise StepUpRequired(bad_request(exc)) from None
        return await self.check(request, **values)

    async def check(self, request: Request, **attributes: Any) -> StepguardState:
        """Decide now with these attributes; return the state or raise `StepUpRequired`."""
        middleware = request.scope.get(SCOPE_KEY)
        if not isinstance(middleware, StepguardMiddleware):
            raise RuntimeError("require_step_up needs StepguardMiddleware around the application")
        outcome = await middleware.evaluate(request.scope, action=self.action,
                                            attributes=attributes)
        if isinstance(outcome, Response):
            raise StepUpRequired(outcome)
        request.scope.setdefault("state", {})["stepguard"] = outcome
        return outcome


def require_step_up(action: str = "", *, attributes: Getter | None = None,
                    **getters: Getter) -> StepUpDependency:
    """A dependency deciding the request as `action` with attributes read from the request.

    `attributes(request)` returns a mapping; each keyword getter returns one value; either may
    be async. `from_json`, `from_form`, `from_query` and `from_path` cover the usual places.
    """
    return StepUpDependency(action, attributes, getters)


def from_json(*keys: str) -> Getter:
    """A getter for `body[k1][k2]…` of a JSON request body (None when absent); a body that
    repeats a key at any level is refused (`BadRequest`), since parsers keep the first or last."""
    async def get(request: Request) -> Any:
        value: Any = loads_json(await request.body())
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value
    return get


def from_form(name: str) -> Getter:
    """A getter for one form field; given more than once (in any spelling) is `BadRequest`."""
    async def get(request: Request) -> Any:
        form = await request.form()
        pairs = [(key, value if isinstance(value, str) else "")
                 for key, value in form.multi_items()]
        value = single_values(pairs, [name]).get(name)
        return value if isinstance(form.get(name), str) else None
    return get


def from_query(name: str) -> Getter:
    """A getter for one query field; given more than once (in any spelling) is `BadRequest`."""
    return lambda request: single_values(form_pairs(request.url.query), [name]).get(name)


def from_path(name: str) -> Getter:
    return lambda request: request.path_params.get(name)


async def _maybe_await(value: Any | Awaitable[Any]) -> Any:
    return await value if inspect.isawaitable(value) else value
