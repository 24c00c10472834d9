"""Step-up: a decision becomes a challenge; a verified factor turns the challenge into a grant.

Each verification is one transaction: throttle check, verify (pure, in `factors/`), save the
factor's state change with a compare-and-set, mark the challenge passed exactly once, add the
authentication event, store the grant, rotate the session token — and one audit entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from stepguard.audit.ledger import request_summary
from stepguard.core.context import AuthEvent, RequestContext
from stepguard.core.decision import Decision
from stepguard.core.errors import ReplayDetected, StepguardError, Throttled, VerificationFailed
from stepguard.core.grant import Grant
from stepguard.core.levels import FACTOR_AMR, Level
from stepguard.factors import push as push_factor
from stepguard.factors import webauthn as wa
from stepguard.factors.recovery import verify_recovery_code
from stepguard.factors.secretbox import open_sealed, seed_aad
from stepguard.factors.totp import verify_totp
from stepguard.service.attempts import attempt_keys, check_attempt, count_failure
from stepguard.service.runtime import Runtime, hash_token, new_id, new_token
from stepguard.service.throttle import user_factor_key
from stepguard.storage.records import HELD_BODY_LIMIT, ChallengeRecord, FactorRecord, SessionRecord

# The level one proof of each factor reaches (with the password already in the session).
FACTOR_LEVEL = {
    "password": Level.AAL1,
    "totp": Level.AAL2,
    "recovery": Level.AAL2,
    "push": Level.AAL2,
    "webauthn": Level.AAL3,
}


class ChallengeGone(StepguardError):
    """The challenge does not exist, expired, was passed already, or is not this session's."""


@dataclass(frozen=True)
class HeldRequest:
    method: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True)
class Passed:
    """A passed challenge: the new session token, the grant, where to go next."""

    challenge: ChallengeRecord
    token: str
    grant: Grant | None


class StepUp:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    # ------------------------------------------------------------------ challenges

    def start(
        self,
        decision: Decision,
        context: RequestContext,
        session: SessionRecord | None,
        *,
        return_url: str,
        held: HeldRequest | None = None,
    ) -> ChallengeRecord:
        """Store a pending challenge for a step-up (or sign-in) decision."""
        assert decision.requirement is not None
        now = self.rt.now()
        held = held or HeldRequest(context.method)
        limit = min(HELD_BODY_LIMIT, self.rt.config.challenge.held_body_limit)
        body = held.body if len(held.body) <= limit else b""
        challenge = ChallengeRecord(
            id=new_id(),
            user_id=session.user_id if session else None,
            session_id=session.id if session else None,
            requirement=decision.requirement,
            reasons=decision.reasons,
            rule=decision.rule,
            login=decision.login,
            scope=decision.scope,
            binding=decision.binding,
            bound_values=decision.bound_values,
            return_url=return_url,
            held_method=held.method,
            held_headers=held.headers,
            held_body=body,
            created=now,
            expires=now + self.rt.config.challenge.ttl,
        )
        self.rt.store.challenges.add(challenge)
        self.rt.record(
            kind="challenge",
            subject=challenge.user_id or "",
            session_id=challenge.session_id or "",
            rule=decision.rule,
            reasons=decision.reasons,
            decision="step_up",
            outcome="started",
            request=request_summary(context, ip_key=self.rt.ip_key),
            detail={"challenge": challenge.id, "level": decision.requirement.level.label},
        )
        return challenge

    def location(self, decision: Decision, context: RequestContext,
                 session: SessionRecord | None, *, return_url: str,
                 held: HeldRequest | None = None) -> str:
        """The portal path for a step-up decision: the sign-in page when there is no session (or
        the decision is a sign-in), else a new challenge's page."""
        if decision.login or session is None:
            return f"/login?rd={quote(return_url, safe='')}"
        challenge = self.start(decision, context, session, return_url=return_url, held=held)
        return f"/step-up/{challenge.id}"

    def live(self, challenge_id: str, session: SessionRecord | None) -> ChallengeRecord:
        """The pending challenge, if it belongs to this session (or is a sign-in challenge)."""
        challenge = self.rt.store.challenges.get(challenge_id)
        now = self.rt.now()
        if challenge is None or challenge.status != "pending" or challenge.expires <= now:
            raise ChallengeGone("This request for confirmation has expired. Please start again.")
        if challenge.session_id and (session is None or session.id != challenge.session_id):
            raise ChallengeGone("This confirmation belongs to another session.")
        return challenge

    def methods_for(self, challenge: ChallengeRecord, user_id: str) -> list[str]:
        """Methods the requirement allows, that reach its level and the user has set up."""
        requirement = challenge.requirement
        kinds = {
            f.kind
            for f in self.rt.store.factors.for_user(user_id)
            if f.created < challenge.created and f.data.get("confirmed", True)
        }
        if self.rt.store.factors.recovery_codes(user_id):
            kinds.add("recovery")
        if len(self.rt.store.sessions.list_for_user(user_id)) > 1:
            kinds.add("push")
        allowed = requirement.methods or frozenset(FACTOR_LEVEL)
        return [
            m
            for m in ("webauthn", "totp", "push", "recovery")
            if m in allowed and m in kinds and FACTOR_LEVEL[m] >= requirement.level
        ]

    # ------------------------------------------------------------------ factors

    def verify_totp(
        self, challenge_id: str, session: SessionRecord, code: str, *, client_ip: str
    ) -> Passed:
        challenge = self._usable(challenge_id, session, "totp")
        factors = self._factors(session.user_id, "totp", challenge)
        return self._attempt(
            challenge, session, "totp", client_ip, lambda: self._check_totp(factors, code)
        )

    def _check_totp(self, factors: Sequence[FactorRecord], code: str) -> FactorRecord:
        now = self.rt.now()
        for factor in factors:
            secret = open_sealed(
                keyring=self.rt.keyring,
                token=factor.secret,
                aad=seed_aad(user_id=factor.user_id, factor_id=factor.id),
            ).decode()
            try:
                accepted = verify_totp(
                    secret=secret, code=code, now=now, last_step=factor.last_step
                )
            except ReplayDetected:
                raise
            except VerificationFailed:
                continue
            if not self.rt.store.factors.advance_totp_step(factor.id, accepted.step):
                raise ReplayDetected()
            return factor
        raise VerificationFailed("That code is not right. Check your authenticator app's clock.")

    def verify_recovery(
        self, challenge_id: str, session: SessionRecord, code: str, *, client_ip: str
    ) -> Passed:
        challenge = self._usable(challenge_id, session, "recovery")

        def check() -> None:
            hashes = [
                c.code_hash
                for c in self.rt.store.factors.recovery_codes(session.user_id)
                if c.used_at is None
            ]
            used = verify_recovery_code(code=code, stored_hashes=hashes)
            if not self.rt.store.factors.use_recovery_code(
                session.user_id, used.code_hash, now=self.rt.now()
            ):
                raise ReplayDetected()

        return self._attempt(challenge, session, "recovery", client_ip, check)

    def begin_webauthn(self, challenge_id: str, session: SessionRecord) -> str:
        challenge = self._usable(challenge_id, session, "webauthn")
        factors = self._factors(session.user_id, "webauthn", challenge)
        options, ceremony = wa.begin_authentication(
            rp=self.rt.rp,
            user_id=session.user_id,
            credential_ids=[f.credential_id for f in factors],
            session_id=session.id,
            now=self.rt.now(),
            require_uv=True,
            binding=challenge.binding,
        )
        self.rt.store.challenges.set_ceremony(
            challenge.id, ceremony_data(ceremony), now=self.rt.now()
        )
        return options

    def finish_webauthn(
        self, challenge_id: str, session: SessionRecord, credential_json: str, *, client_ip: str
    ) -> Passed:
        challenge = self._usable(challenge_id, session, "webauthn")

        def check() -> None:
            data = self.rt.store.challenges.take_ceremony(challenge.id, now=self.rt.now())
            if data is None:
                raise ReplayDetected("This passkey request was already used or has expired.")
            ceremony = ceremony_from(data)
            factor = self.rt.store.factors.by_credential_id(wa.credential_id_of(credential_json))
            if (
                factor is None
                or factor.user_id != session.user_id
                or factor.created >= challenge.created
            ):
                raise VerificationFailed("This passkey is not registered to your account.")
            accepted = wa.finish_authentication(
                rp=self.rt.rp,
                ceremony=ceremony,
                credential_json=credential_json,
                user_id=session.user_id,
                session_id=session.id,
                now=self.rt.now(),
                stored=wa.StoredCredential(
                    factor.credential_id, factor.public_key, factor.sign_count
                ),
                expected_binding=challenge.binding or None,
            )
            if not self.rt.store.factors.update_sign_count(
                factor.id, expected_old=factor.sign_count, new=accepted.new_sign_count
            ):
                raise ReplayDetected()

        return self._attempt(challenge, session, "webauthn", client_ip, check)

    # ------------------------------------------------------------------ push approval

    def start_push(self, challenge_id: str, session: SessionRecord) -> push_factor.PushRequest:
        challenge = self._usable(challenge_id, session, "push")
        now = self.rt.now()
        previous = challenge.ceremony or {}
        starts = [float(t) for t in previous.get("push_starts", [])]
        push_factor.check_push_rate(
            recent_starts=starts, now=now, settings=push_factor.PushSettings()
        )
        request = push_factor.start_push(
            user_id=session.user_id, requesting_session_id=session.id, now=now
        )
        data = {"push": _push_data(request), "push_starts": [*starts, now][-10:]}
        self.rt.store.challenges.set_ceremony(challenge.id, data, now=now)
        self.rt.record(
            kind="verification",
            subject=session.user_id,
            session_id=session.id,
            factor="push",
            outcome="push_sent",
            detail={"challenge": challenge.id},
        )
        return request

    def pending_pushes(
        self, session: SessionRecord
    ) -> list[tuple[ChallengeRecord, dict[str, Any]]]:
        """Push requests from the user's OTHER sessions that this session may answer."""
        found = []
        now = self.rt.now()
        for other in self.rt.store.sessions.list_for_user(session.user_id):
            if other.id == session.id:
                continue
            for challenge in self.rt.store.challenges.pending_for_session(other.id, now=now):
                data = dict(challenge.ceremony or {}).get("push")
                if data and data["status"] == "pending" and data["expires"] > now:
                    found.append((challenge, data))
        return found

    def answer_push(
        self, challenge_id: str, approver: SessionRecord, picked: int, *, client_ip: str
    ) -> str:
        challenge = self.rt.store.challenges.get(challenge_id)
        if challenge is None or challenge.status != "pending" or not challenge.ceremony:
            raise ChallengeGone("This approval request is no longer pending.")
        data = dict(challenge.ceremony)
        request = _push_from(data["push"])
        answer = (
            push_factor.reject_push(
                push=request,
                approving_session_id=approver.id,
                approving_user_id=approver.user_id,
                now=self.rt.now(),
            )
            if picked == 0
            else push_factor.answer_push(
                push=request,
                picked=picked,
                approving_session_id=approver.id,
                approving_user_id=approver.user_id,
                now=self.rt.now(),
            )
        )
        data["push"] = {**data["push"], "status": answer.status}
        self.rt.store.challenges.set_ceremony(challenge.id, data, now=self.rt.now())
        self.rt.record(
            kind="verification",
            subject=approver.user_id,
            session_id=approver.id,
            factor="push",
            outcome=answer.status,
            detail={"challenge": challenge.id},
        )
        if answer.status != "approved":
            self.rt.store.throttle.record_failure(
                user_factor_key(approver.user_id, "push"), now=self.rt.now()
            )
        return answer.status

    def poll_push(
        self, challenge_id: str, session: SessionRecord, *, client_ip: str
    ) -> Passed | str:
        """`Passed` once the other device approved; else the push status text."""
        challenge = self.live(challenge_id, session)
        data = dict(challenge.ceremony or {}).get("push")
        if not data:
            return "none"
        if data["status"] != "approved":
            return "expired" if data["expires"] <= self.rt.now() else str(data["status"])
        return self._complete(challenge, session, "push", client_ip)

    # ------------------------------------------------------------------ shared

    def _usable(self, challenge_id: str, session: SessionRecord, method: str) -> ChallengeRecord:
        challenge = self.live(challenge_id, session)
        if challenge.session_id is None:
            raise ChallengeGone("Sign in first.")
        if method not in self.methods_for(challenge, session.user_id):
            raise VerificationFailed(f"{method} cannot be used for this request.")
        return challenge

    def _factors(self, user_id: str, kind: str, challenge: ChallengeRecord) -> list[FactorRecord]:
        # A factor added after the challenge started cannot satisfy it (SECURITY.md case 10).
        return [
            f
            for f in self.rt.store.factors.for_user(user_id, kind=kind)
            if f.created < challenge.created and f.data.get("confirmed", True)
        ]

    def _attempt(
        self,
        challenge: ChallengeRecord,
        session: SessionRecord,
        factor: str,
        client_ip: str,
        verify: Callable[[], object],
    ) -> Passed:
        now = self.rt.now()
        keys = attempt_keys(user_id=session.user_id, factor=factor, client_ip=client_ip)
        check_attempt(self.rt, keys)
        self.rt.store.challenges.record_attempt(challenge.id, now=now)
        try:
            with self.rt.store.transaction():
                verify()
                return self._complete(challenge, session, factor, client_ip)
        except (VerificationFailed, Throttled) as exc:
            self._failed(session, factor, keys, exc, challenge)
            raise

    def _failed(
        self,
        session: SessionRecord,
        factor: str,
        keys: list[str],
        exc: Exception,
        challenge: ChallengeRecord,
    ) -> None:
        count_failure(self.rt, keys, user_id=session.user_id)
        code = getattr(exc, "code", "throttled")
        self.rt.record(
            kind="verification",
            subject=session.user_id,
            session_id=session.id,
            factor=factor,
            outcome=f"failed:{code}",
            rule=challenge.rule,
            detail={"challenge": challenge.id},
        )

    def _complete(
        self, challenge: ChallengeRecord, session: SessionRecord, factor: str, client_ip: str
    ) -> Passed:
        now = self.rt.now()
        with self.rt.store.transaction():
            if not self.rt.store.challenges.mark_passed(challenge.id, now=now):
                raise ChallengeGone("This confirmation was already used.")
            level = FACTOR_LEVEL[factor]
            self.rt.store.sessions.add_event(
                session.id, AuthEvent(factor=factor, amr=FACTOR_AMR[factor], level=level, at=now)
            )
            grant = self._grant(challenge, session, factor, level, now)
            token = new_token()
            self.rt.store.sessions.rotate(session.id, hash_token(token), now=now)
            self.rt.store.throttle.reset(user_factor_key(session.user_id, factor))
        self.rt.record(
            kind="verification",
            subject=session.user_id,
            session_id=session.id,
            factor=factor,
            outcome="passed",
            rule=challenge.rule,
            reasons=challenge.reasons,
            detail={
                "challenge": challenge.id,
                "grant": grant.id if grant else "",
                "level": level.label,
                "ip": client_ip and "present",
            },
        )
        return Passed(challenge, token, grant)

    def _grant(
        self,
        challenge: ChallengeRecord,
        session: SessionRecord,
        factor: str,
        level: Level,
        now: float,
    ) -> Grant | None:
        requirement = challenge.requirement
        if not requirement.needs_grant:
            return None
        ttl = requirement.max_age or self.rt.config.challenge.grant_ttl
        grant = Grant(
            id=new_id(),
            subject_id=session.user_id,
            session_id=session.id,
            scope=challenge.scope,
            level=level,
            amr=FACTOR_AMR[factor],
            granted_at=now,
            expires_at=now + ttl,
            single_use=requirement.single_use,
            binding=challenge.binding,
            factor=factor,
        )
        self.rt.store.grants.add(grant)
        return grant


def ceremony_data(ceremony: wa.Ceremony) -> dict[str, Any]:
    return {
        "webauthn": {
            "challenge": ceremony.challenge.hex(),
            "kind": ceremony.kind,
            "user_id": ceremony.user_id,
            "session_id": ceremony.session_id,
            "created": ceremony.created,
            "expires": ceremony.expires,
            "require_uv": ceremony.require_uv,
            "credential_ids": [c.hex() for c in ceremony.credential_ids],
            "binding": ceremony.binding,
        }
    }


def ceremony_from(data: Any) -> wa.Ceremony:
    w = dict(data).get("webauthn")
    if not w:
        raise ReplayDetected("No passkey request is pending.")
    return wa.Ceremony(
        bytes.fromhex(w["challenge"]),
        w["kind"],
        w["user_id"],
        w["session_id"],
        float(w["created"]),
        float(w["expires"]),
        bool(w["require_uv"]),
        tuple(bytes.fromhex(c) for c in w["credential_ids"]),
        w["binding"],
    )


def _push_data(request: push_factor.PushRequest) -> dict[str, Any]:
    return {
        "id": request.id,
        "user_id": request.user_id,
        "requesting_session_id": request.requesting_session_id,
        "number": request.number,
        "options": list(request.options),
        "created": request.created,
        "expires": request.expires,
        "status": request.status,
    }


def _push_from(data: Any) -> push_factor.PushRequest:
    return push_factor.PushRequest(
        data["id"],
        data["user_id"],
        data["requesting_session_id"],
        int(data["number"]),
        tuple(data["options"]),
        float(data["created"]),
        float(data["expires"]),
        data["status"],
    )
