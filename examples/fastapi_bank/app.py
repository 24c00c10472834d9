"""Acme Bank on FastAPI, protected by Stepguard in embedded mode (see README.md).

    STEPGUARD_CONFIG=stepguard.yaml uvicorn --factory app:from_env --port 9091

The middleware decides every request by path (here: sign-in for everything, a recent second
factor for the statement export); the `approve_transfer` dependency decides the transfer again
as the action `payments.transfer` with the amount and payee only the application knows, so a
large transfer needs a single-use approval bound to exactly that amount and payee.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, Field
from starlette.types import ASGIApp

from stepguard.asgi import (
    StepguardMiddleware,
    StepguardState,
    StepUpRequired,
    from_json,
    require_step_up,
    step_up_exception_handler,
)
from stepguard.config.load import load_config
from stepguard.service.runtime import Runtime, build_runtime


class TransferIn(BaseModel):
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2)
    payee: str = Field(min_length=1, max_length=64)


approve_transfer = require_step_up("payments.transfer", amount=from_json("amount"),
                                   payee=from_json("payee"))


def who(state: StepguardState) -> dict[str, Any]:
    subject = state.subject
    return {"user": subject.username if subject else None, "level": state.level,
            "amr": list(state.amr), "auth_time": state.auth_time}


def create_bank(runtime: Runtime) -> ASGIApp:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        runtime.close()  # flushes the audit queue: no entry is lost on shutdown

    bank = FastAPI(title="Acme Bank (FastAPI + Stepguard)", lifespan=lifespan)
    bank.add_exception_handler(StepUpRequired, step_up_exception_handler)
    sent: list[dict[str, Any]] = []

    @bank.get("/")
    async def home(request: Request) -> dict[str, Any]:
        return {"bank": "Acme", **who(request.state.stepguard), "transfers": sent}

    @bank.post("/transfers")
    async def transfer(body: TransferIn,
                       approval: StepguardState = Depends(approve_transfer)) -> dict[str, Any]:
        record = {"amount": str(body.amount), "payee": body.payee,
                  "approved_by_grant": approval.grant.id if approval.grant else None}
        sent.append(record)
        return {"status": "sent", **record, **who(approval)}

    @bank.get("/statements/export")
    async def export(request: Request) -> dict[str, Any]:
        return {"statement": "2026-11.csv", **who(request.state.stepguard)}

    @bank.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return StepguardMiddleware(bank, mode="embedded", runtime=runtime)


def from_env() -> ASGIApp:
    """The app for `uvicorn --factory app:from_env` (config from STEPGUARD_CONFIG)."""
    return create_bank(build_runtime(load_config(os.environ.get("STEPGUARD_CONFIG",
                                                                "stepguard.yaml"))))
