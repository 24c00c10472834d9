"""One exception tree for the whole project; decisions are values, failures raise."""

from __future__ import annotations

from dataclasses import dataclass


class StepguardError(Exception):
    """Root of every error Stepguard raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One configuration or policy problem: where (file, path, line, column) and what was wanted."""

    file: str
    path: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.file or "<input>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        at = f" at {self.path}" if self.path else ""
        return f"{where}{at}: {self.message}"


class ConfigError(StepguardError):
    """Invalid configuration or policy; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PolicyError(ConfigError):
    """Invalid policy file."""


class ExpressionError(StepguardError):
    """A `when` expression that does not parse or type-check; line/column are 1-based."""

    def __init__(self, message: str, line: int, column: int) -> None:
        self.message = message
        self.line = line
        self.column = column
        super().__init__(f"{line}:{column}: {message}")


class EvaluationError(StepguardError):
    """A `when` expression that could not be evaluated for this request (e.g. missing value)."""


class BadRequest(StepguardError):
    """An ambiguous or malformed request (400): encoded slash, NUL, bad UTF-8, dot segments."""


class VerificationFailed(StepguardError):
    """A factor's proof was wrong, replayed, expired or otherwise refused."""

    def __init__(self, reason: str, *, code: str = "invalid") -> None:
        self.reason = reason
        self.code = code
        super().__init__(reason)


class ReplayDetected(VerificationFailed):
    """A one-time value (OTP step, challenge, recovery code) used a second time."""

    def __init__(self, reason: str = "This code or challenge was already used.") -> None:
        super().__init__(reason, code="replay")


class CloneDetected(VerificationFailed):
    """A WebAuthn sign counter went backwards: the authenticator may have been cloned."""

    def __init__(self, reason: str = "the authenticator's sign counter went backwards") -> None:
        super().__init__(reason, code="clone")


class Throttled(StepguardError):
    """Too many failures: retry after `retry_after` seconds (or locked for good)."""

    def __init__(self, retry_after: float, *, locked: bool = False) -> None:
        self.retry_after = retry_after
        self.locked = locked
        super().__init__("locked" if locked else f"retry after {retry_after:.0f}s")


class StoreUnavailable(StepguardError):
    """The store cannot be reached; callers must fail closed."""


class SecretBoxError(VerificationFailed):
    """A sealed secret could not be opened: tampered, malformed, or sealed with an unknown key."""

    def __init__(
        self, reason: str = "the sealed secret could not be opened", *, code: str = "sealed"
    ) -> None:
        super().__init__(reason, code=code)


class Conflict(StepguardError):
    """A record with the same identity already exists (user id or username, factor, credential)."""


class AuditIntegrityError(StepguardError):
    """The audit ledger (or an export of it) is malformed or its hash chain does not verify."""


class CsrfRejected(StepguardError):
    """A state-changing request without a valid CSRF token, or from a foreign or `null` origin."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class InvalidToken(VerificationFailed):
    """A bearer token that is malformed, wrongly signed, expired, not yet valid, or meant for
    another issuer or audience (RFC 6750 `invalid_token`; `invalid_request` when the header
    itself is malformed). The reason is safe to show and never contains the token."""

    def __init__(self, reason: str, *, code: str = "invalid_token") -> None:
        super().__init__(reason, code=code)


class IssuerUnavailable(StoreUnavailable):
    """The token issuer's discovery document or key set cannot be fetched: callers fail closed."""


class DecisionUnavailable(StoreUnavailable):
    """A remote decision API could not be reached or gave no valid answer; callers fail closed."""
