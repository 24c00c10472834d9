"""Metrics (prometheus-client) and structured JSON logs (structlog), both fed from audit events.

Every decision, challenge and verification already becomes one audit event; counting and logging
that same event keeps the three views consistent and puts no second hook on the hot path.
Step-up abandonment is `challenges started - challenges passed` over a window.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter

from stepguard.audit.ledger import AuditEvent
from stepguard.service.hot_metrics import FastCounter

_QUIET_KINDS = frozenset({"decision"})  # one log line per request would drown the rest


class Observer:
    """Counters on a private registry, which the app serves at `/metrics` with its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = FastCounter("stepguard_decisions_total", "Decisions by outcome and rule",
                                     ["outcome", "rule"], self.registry)
        self.challenges = Counter("stepguard_challenges_total",
                                  "Step-up challenges started and passed, by rule",
                                  ["rule", "event"], registry=self.registry)
        self.verifications = Counter("stepguard_verifications_total",
                                     "Factor verifications by factor and outcome",
                                     ["factor", "outcome"], registry=self.registry)
        self.verification_failures = Counter("stepguard_verification_failures_total",
                                             "Failed verifications by factor and reason",
                                             ["factor", "reason"], registry=self.registry)
        self.shadow = FastCounter("stepguard_shadow_decisions_total",
                                  "Report-mode decisions that differ from the enforced one, by "
                                  "what report mode would have done (step_up, deny, login, "
                                  "allow) and rule", ["outcome", "rule"], self.registry)
        self.cache = FastCounter("stepguard_session_cache_total",
                                 "Session cache lookups: hit (versions unchanged) or miss (loaded)",
                                 ["result"], self.registry)
        self.log = structlog.get_logger("stepguard")
        self.debug = False  # set by `configure_logging(level="debug")` callers

    def allowed(self, rule: str, times: int = 1) -> None:
        """Count allows (the per-request path, which builds no checked event)."""
        self.decisions.add(times, "allow", rule or "-")

    def cache_hit(self, times: int = 1) -> None:
        self.cache.add(times, "hit")

    def cache_miss(self) -> None:
        self.cache.inc("miss")

    def shadowed(self, outcome: str, rule: str) -> None:
        """Count one report-mode ("would …") decision beside the enforced one."""
        self.shadow.inc(outcome, rule or "-")

    def event(self, event: AuditEvent) -> None:
        """Count one audit event and log it (decisions only at debug level)."""
        if event.kind == "decision":
            self.decisions.inc(event.decision or event.outcome, event.rule or "-")
        elif event.kind == "challenge":
            self.challenges.labels(event.rule or "-", "started").inc()
        elif event.kind == "verification":
            self._verification(event)
        self.show(event)

    def show(self, event: AuditEvent) -> None:
        """Log one audit event without counting it (allows only at debug level)."""
        if event.kind in _QUIET_KINDS and event.decision == "allow":
            if self.debug:
                self.log.debug(event.kind, **_fields(event))
            return
        self.log.info(event.kind, **_fields(event))

    def _verification(self, event: AuditEvent) -> None:
        factor, outcome = event.factor or "-", event.outcome or "-"
        self.verifications.labels(factor, outcome.split(":", 1)[0]).inc()
        if outcome == "passed":
            self.challenges.labels(event.rule or "-", "passed").inc()
        elif outcome.startswith("failed"):
            self.verification_failures.labels(factor, outcome.partition(":")[2] or "-").inc()


def _fields(event: AuditEvent) -> dict[str, Any]:
    """The event's already-redacted fields (no secrets reach an audit event, nor a log line)."""
    fields: dict[str, Any] = {"subject": event.subject, "session": event.session,
                              "rule": event.rule, "decision": event.decision,
                              "outcome": event.outcome, "factor": event.factor,
                              "reasons": list(event.reasons), **dict(event.request)}
    return {k: v for k, v in fields.items() if v not in ("", [], None)}


class _StderrLogger:
    """Writes each line to whatever `sys.stderr` is now; a closed stream never breaks a request."""

    def msg(self, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def configure_logging(*, level: str = "info", json: bool = True) -> None:
    """JSON lines on standard error (or readable console lines for a terminal)."""
    renderer: Any = (structlog.processors.JSONRenderer() if json
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=lambda *_args: _StderrLogger(),
        cache_logger_on_first_use=True,
    )
