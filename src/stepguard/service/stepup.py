"""Step-up: a decision becomes a challenge; a verified factor turns the challenge into a grant.

Each verification reserves its attempt with the throttle first (`service.attempts`), then is
one transaction: verify (pure, in `factors/`), save the
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
from stepguard.core.throttle import plan_attempt, user_factor_key
from stepguard.factors import push as push_factor
from stepguard.factors import webauthn as wa
from stepguard.factors.recovery import verify_recovery_code
from stepguard.factors.secretbox import open_sealed, seed_aad
from stepguard.factors.totp import verify_totp
from stepguard.service.attempts import (
    abandoned,
    failed,
    reserve,
    succeeded,
    trust_client,
)
from stepguard.service.runtime import Runtime, hash_token, new_id, new_token
from stepguard.storage.records import (
    HELD_BODY_LIMIT,
    ChallengeRecord,
    FactorKind,
    FactorRecord,
    PushRecord,
    Reserved,
    SessionRecord,
)

# The level one proof of each factor reaches (with the password already in the session).
FACTOR_LEVEL = {
    "password": Level.AAL1,
    "totp": Level.AAL2,
    "recovery": Level.AAL2,
    "push": Level.AAL2,
    "webauthn": Level.AAL3,
}


PUSH_SETTINGS = push_factor.PushSettings()


def reaches(factor: FactorRecord, level: Level) -> bool:
    """Whether `factor` can prove `level`: a passkey registered as syncable (backup-eligible)
    proves aal2 at most (NIST SP 800-63B rev 4); every other factor proves FACTOR_LEVEL."""
    if factor.kind == "webauthn" and factor.data.get("backup_eligible"):
        return level <= Level.AAL2
    return FACTOR_LEVEL.get(factor.kind, Level.AAL1) >= level


def passkey_event(accepted: wa.AssertionAccepted, factor: FactorRecord, *,
                  now: float) -> AuthEvent:
    """The authentication event of an accepted passkey assertion: aal3 only device-bound."""
    level, amr = wa.proof_of(accepted, registered_backup_eligible=bool(
        factor.data.get("backup_eligible")))
    return AuthEvent(factor="webauthn", amr=amr, level=level, at=now)

# The held method of a challenge for an agent's tool call (the MCP door): the agent's session
# holds it, the human answers it from any browser session of the same user, and the grant goes
# to the agent's session, single use and bound to the call (see `delegated`).
AGENT_CALL = "MCP"


def delegated(challenge: ChallengeRecord) -> bool:
    """Whether this challenge is answered in another session than the one that holds it."""
    return challenge.held_method == AGENT_CALL


class ChallengeGone(StepguardError):
    """The challenge does not exist, expired, was passed already, or is not this session's."""


class HeldTooLarge(StepguardError):
    """The request's body exceeds what a challenge may hold: refused, never held cut."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body above the {limit}-byte hold limit")
        self.limit = limit


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
        if len(held.body) > self.hold_limit:
            raise HeldTooLarge(self.hold_limit)
        challenge = ChallengeRecord(
            id=new_id(),
            user_id=session.user_id if session else None,
            session_id=session.id if session else None,
            requirement=decision.requirement,
            reasons=decision.reasons,
            reason_texts=decision.reason_texts,
            rule=decision.rule,
            login=decision.login,
            scope=decision.scope,
            binding=decision.binding,
            bound_values=decision.bound_values,
            return_url=return_url,
            held_method=held.method,
            held_headers=held.headers,
            held_body=held.body,
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

    @property
    def hold_limit(self) -> int:
        """Bytes of a request body a challenge may hold (the config's, at most the store's)."""
        return min(HELD_BODY_LIMIT, self.rt.config.challenge.held_body_limit)

    def begin(self, decision: Decision, context: RequestContext,
              session: SessionRecord | None, *, return_url: str,
              held: HeldRequest | None = None) -> str:
        """Begin the step-up a decision asks for and name where it continues: the sign-in page
        when there is no session (or the decision is a sign-in; nothing is stored), else a new
        challenge (stored and audited now) and its page. Called by the flow that decides, before
        the answer is rendered — never while rendering."""
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
        if challenge.session_id and (session is None or not _answers(challenge, session)):
            raise ChallengeGone("This confirmation belongs to another session.")
        return challenge

    def page(self, challenge_id: str, session: SessionRecord | None,
             user_id: str) -> tuple[ChallengeRecord, list[str], PushRecord | None]:
        """What the step-up page shows, read in one snapshot: the live challenge (`live`), the
        methods it can be passed with (`methods_for`) and its waiting push (`current_push`)."""
        with self.rt.store.snapshot():
            challenge = self.live(challenge_id, session)
            return challenge, self.methods_for(challenge, user_id), self.current_push(challenge)

    def passed(self, challenge_id: str, session: SessionRecord) -> ChallengeRecord | None:
        """This session's passed challenge (its held request waits for confirmation), or None."""
        challenge = self.rt.store.challenges.get(challenge_id)
        if challenge is None or challenge.status != "passed" or challenge.session_id != session.id:
            return None
        return challenge

    def settled(self, challenge_id: str, session: SessionRecord) -> bool:
        """Whether this session passed this challenge (its held request sent or not)."""
        challenge = self.rt.store.challenges.get(challenge_id)
        return (challenge is not None and challenge.status in ("passed", "sent")
                and challenge.session_id == session.id)

    def methods_for(self, challenge: ChallengeRecord, user_id: str) -> list[str]:
        """Methods the requirement allows, that reach its level and the user has set up."""
        requirement = challenge.requirement
        kinds = {
            f.kind
            for f in self.rt.store.factors.for_user(user_id)
            if f.created < challenge.created and f.data.get("confirmed", True)
            and reaches(f, requirement.level)
        }
        if self.rt.store.factors.recovery_codes(user_id):
            kinds.add("recovery")
        allowed = requirement.methods or frozenset(FACTOR_LEVEL)
        local: list[str] = [
            m
            for m in ("webauthn", "totp", "push", "recovery")
            if m in allowed and m in kinds and FACTOR_LEVEL[m] >= requirement.level
        ]
        via, provider = self.via(challenge, user_id)
        at_idp = ["idp"] if provider else []
        if via == "idp":
            return at_idp
        return [*local, *at_idp] if via == "either" else local

    def via(self, challenge: ChallengeRecord, user_id: str) -> tuple[str, str]:
        """Where this step-up is proved — `local` (Stepguard's factors), `idp` (a new sign-in at
        the user's identity provider) or `either` — and that provider's name ("" = none): the
        rule's `require.via` wins, else the provider's `step_up`; local users step up locally."""
        providers = {p.name: p for p in self.rt.config.oidc.providers}
        if not providers:
            return (challenge.requirement.via or "local", "")
        linked = [i.provider for i in self.rt.store.identities.for_users([user_id])
                  if i.provider in providers]
        provider = linked[0] if linked else ""
        if challenge.requirement.via:
            return (challenge.requirement.via, provider)
        return (providers[provider].step_up if provider else "local", provider)

    # ------------------------------------------------------------------ factors

    def verify_totp(
        self, challenge_id: str, session: SessionRecord, code: str, *, client_ip: str
    ) -> Passed:
        with self.rt.store.snapshot():
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
            self.rt.store.factors.mark_used(factor.id, now=now)
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
        factors = [f for f in self._factors(session.user_id, "webauthn", challenge)
                   if reaches(f, challenge.requirement.level)]
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

        def check() -> AuthEvent:
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
            event = passkey_event(accepted, factor, now=self.rt.now())
            if event.level < challenge.requirement.level:
                raise VerificationFailed(
                    "This passkey is synced between devices, so it cannot confirm this request. "
                    "Use a security key or a passkey kept on one device.", code="synced_passkey")
            if not self.rt.store.factors.update_sign_count(
                factor.id, expected_old=factor.sign_count, new=accepted.new_sign_count
            ):
                raise ReplayDetected()
            self.rt.store.factors.mark_used(factor.id, now=self.rt.now())
            return event

        return self._attempt(challenge, session, "webauthn", client_ip, check)

    # ------------------------------------------------------------------ push approval

    def start_push(
        self, challenge_id: str, session: SessionRecord, *, client_ip: str, user_agent: str
    ) -> PushRecord:
        """Send a push to the user's enrolled devices (throttled per user against bombing)."""
        challenge = self._usable(challenge_id, session, "push")
        now = self.rt.now()
        pushes = self.rt.store.pushes
        with self.rt.store.transaction():
            push_factor.check_push_rate(
                recent_starts=pushes.starts_for_user(session.user_id, since=now - 3600.0),
                pending=pushes.count_pending(session.user_id, now=now),
                now=now,
                settings=PUSH_SETTINGS,
            )
            request = push_factor.start_push(
                user_id=session.user_id,
                requesting_session_id=session.id,
                digest=_push_digest(challenge),
                now=now,
                settings=PUSH_SETTINGS,
            )
            location = self.rt.locator.locate(client_ip) if client_ip else None
            record = PushRecord(
                id=request.id,
                challenge_id=challenge.id,
                user_id=request.user_id,
                requesting_session_id=session.id,
                number=request.number,
                options=request.options,
                nonce=request.nonce,
                digest=request.digest,
                created=request.created,
                expires=request.expires,
                client_ip=client_ip[:64],
                user_agent=user_agent[:512],
                location=location.place if location else "",
            )
            pushes.add(record)
        self.rt.record(
            kind="verification",
            subject=session.user_id,
            session_id=session.id,
            factor="push",
            outcome="push_sent",
            detail={"challenge": challenge.id, "push": record.id},
        )
        return record

    def current_push(self, challenge: ChallengeRecord) -> PushRecord | None:
        """The challenge's push while it waits for an answer."""
        push = self.rt.store.pushes.latest_for_challenge(challenge.id)
        if push is None or push.status != "pending" or push.expires <= self.rt.now():
            return None
        return push

    def pending_pushes(self, session: SessionRecord) -> list[tuple[PushRecord, ChallengeRecord]]:
        """Pushes from the user's OTHER sessions waiting for an answer, with their challenge."""
        found = []
        now = self.rt.now()
        for push in self.rt.store.pushes.pending_for_user(session.user_id, now=now):
            if push.requesting_session_id == session.id:
                continue
            challenge = self.rt.store.challenges.get(push.challenge_id)
            if challenge is not None and challenge.status == "pending" and challenge.expires > now:
                found.append((push, challenge))
        return found

    def push_devices(self, user_id: str) -> list[FactorRecord]:
        return list(self.rt.store.factors.for_user(user_id, kind="push"))

    def answer_push(
        self,
        push_id: str,
        approver: SessionRecord,
        *,
        picked: int,
        device_id: str,
        signature: bytes,
        client_ip: str,
    ) -> str:
        """Save a device's signed answer; the push status (`approved` / `denied`).

        Only a signature by an enrolled device key of the same user counts; a wrong number,
        a refusal and every invalid answer count as a failed push attempt.
        """
        push = self.rt.store.pushes.get(push_id)
        if push is None or push.user_id != approver.user_id:
            raise ChallengeGone("This approval request is no longer pending.")
        challenge = self.rt.store.challenges.get(push.challenge_id)
        if challenge is None or challenge.status != "pending":
            raise ChallengeGone("This approval request is no longer pending.")
        now = self.rt.now()
        # Reserve, then verify: the answer is counted before its signature is checked.
        attempt = plan_attempt(subject=approver.user_id, factor="push", client_ip=client_ip,
                               device_id=approver.device_id,
                               history=self.rt.store.history.load(approver.user_id))
        reserved = reserve(self.rt, attempt)
        try:
            device = self._push_device(approver.user_id, device_id, challenge)
            answered = push_factor.answer_push(
                push=_push_request(push),
                picked=picked,
                signature=signature,
                device=device,
                approving_session_id=approver.id,
                approving_user_id=approver.user_id,
                now=now,
            )
            with self.rt.store.transaction():
                if not self.rt.store.pushes.answer(
                    push.id, status=answered.status, device_id=device.id, now=now
                ):
                    raise ReplayDetected("This approval request was already answered.")
                self.rt.store.factors.mark_used(device.id, now=now)
        except VerificationFailed as exc:
            self._failed(approver, "push", exc, challenge, reserved)
            raise
        except BaseException:
            abandoned(self.rt, reserved)
            raise
        self.rt.record(
            kind="verification",
            subject=approver.user_id,
            session_id=approver.id,
            factor="push",
            outcome="refused" if answered.refused else answered.status,
            rule=challenge.rule,
            detail={"challenge": challenge.id, "push": push.id, "device": device.id},
        )
        if answered.approved:
            succeeded(self.rt, reserved)
        else:  # a refusal stays counted: pushes the user keeps refusing slow the next ones
            failed(self.rt, user_id=approver.user_id, reserved=reserved, factor="push")
        return answered.status

    def poll_push(
        self, challenge_id: str, session: SessionRecord, *, client_ip: str
    ) -> Passed | str:
        """`Passed` once an enrolled device approved; else the push status text."""
        challenge = self.live(challenge_id, session)
        push = self.rt.store.pushes.latest_for_challenge(challenge.id)
        if push is None or push.requesting_session_id != session.id:
            return "none"
        if push.status == "pending":
            return "expired" if push.expires <= self.rt.now() else "pending"
        if push.status != "approved" or self.rt.store.factors.get(push.device_id) is None:
            return "denied"  # refused, a wrong number, or the device was removed since
        return self._complete(challenge, session, "push", client_ip)

    def _push_device(
        self, user_id: str, device_id: str, challenge: ChallengeRecord
    ) -> push_factor.DeviceKey:
        factor = self.rt.store.factors.get(device_id) if device_id else None
        if factor is None or factor.kind != "push" or factor.user_id != user_id:
            raise VerificationFailed(
                "This browser is not a registered push device.", code="unknown_device"
            )
        if factor.created >= challenge.created:
            raise VerificationFailed(
                "A device added after the request cannot approve it.", code="new_device"
            )
        return push_factor.DeviceKey(
            factor.id, factor.user_id, str(factor.data.get("alg", "")), factor.public_key,
            factor.created,
        )

    # ------------------------------------------------------------------ shared

    def _usable(self, challenge_id: str, session: SessionRecord, method: str) -> ChallengeRecord:
        with self.rt.store.snapshot():
            challenge = self.live(challenge_id, session)
            if challenge.session_id is None:
                raise ChallengeGone("Sign in first.")
            if method not in self.methods_for(challenge, session.user_id):
                raise VerificationFailed(f"{method} cannot be used for this request.")
            return challenge

    def _factors(self, user_id: str, kind: FactorKind,
                 challenge: ChallengeRecord) -> list[FactorRecord]:
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
        """Reserve, then verify: the attempt is counted before the secret is checked."""
        attempt = plan_attempt(subject=session.user_id, factor=factor, client_ip=client_ip,
                               device_id=session.device_id,
                               history=self.rt.store.history.load(session.user_id))
        reserved = reserve(self.rt, attempt)
        try:
            self.rt.store.challenges.record_attempt(challenge.id, now=self.rt.now())
            with self.rt.store.transaction():
                proved = verify()  # a factor whose proof varies returns its AuthEvent
                # Trusted before the pass, whose audit entry is the transaction's last act:
                # nothing after it can roll back a pass already audited.
                trust_client(self.rt, user_id=session.user_id, factor=factor,
                             client_ip=client_ip, device_id=session.device_id)
                passed = self._complete(challenge, session, factor, client_ip,
                                        proved if isinstance(proved, AuthEvent) else None)
        except (VerificationFailed, Throttled) as exc:
            self._failed(session, factor, exc, challenge, reserved, client_ip)
            raise
        except BaseException:
            abandoned(self.rt, reserved)
            raise
        succeeded(self.rt, reserved)
        return passed

    def _failed(
        self,
        session: SessionRecord,
        factor: str,
        exc: Exception,
        challenge: ChallengeRecord,
        reserved: tuple[Reserved, ...] = (),
        client_ip: str = "",
    ) -> None:
        failed(self.rt, user_id=session.user_id, reserved=reserved, factor=factor,
               client_ip=client_ip)
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
        self, challenge: ChallengeRecord, session: SessionRecord, factor: str, client_ip: str,
        proof: AuthEvent | None = None,
    ) -> Passed:
        """Pass the challenge with a local factor, or with `proof` (a passkey's event, whose
        level depends on the credential; an identity provider's answer: its level, amr and
        authentication time, already checked against the rule)."""
        now = self.rt.now()
        with self.rt.store.transaction():
            if not self.rt.store.challenges.mark_passed(challenge.id, now=now):
                raise ChallengeGone("This confirmation was already used.")
            event = proof or AuthEvent(factor=factor, amr=FACTOR_AMR[factor],
                                       level=FACTOR_LEVEL[factor], at=now)
            level = event.level
            self.rt.store.sessions.add_event(session.id, event)
            grant = self._grant(challenge, session, event)
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
        self, challenge: ChallengeRecord, session: SessionRecord, event: AuthEvent
    ) -> Grant | None:
        """The grant a passed challenge earns; it dates from the proof (`event.at`)."""
        requirement = challenge.requirement
        agent = delegated(challenge) and challenge.session_id is not None
        if not requirement.needs_grant and not agent:
            return None
        ttl = requirement.max_age or self.rt.config.challenge.grant_ttl
        grant = Grant(
            id=new_id(),
            subject_id=session.user_id,
            session_id=challenge.session_id if agent and challenge.session_id else session.id,
            scope=challenge.scope,
            level=event.level,
            amr=event.amr,
            granted_at=event.at,
            expires_at=event.at + ttl,
            single_use=requirement.single_use or agent,
            binding=challenge.binding,
            factor=event.factor,
        )
        self.rt.store.grants.add(grant)
        return grant


def _answers(challenge: ChallengeRecord, session: SessionRecord) -> bool:
    """The challenge's own session; for an agent's call, any session of the same user."""
    if session.id == challenge.session_id:
        return not delegated(challenge)  # an agent's own session never answers its own call
    return delegated(challenge) and session.user_id == challenge.user_id


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


def _push_digest(challenge: ChallengeRecord) -> str:
    return push_factor.push_digest(
        challenge_id=challenge.id,
        binding=challenge.binding,
        reasons=challenge.reasons,
        bound_values=challenge.bound_values,
    )


def _push_request(push: PushRecord) -> push_factor.PushRequest:
    return push_factor.PushRequest(
        push.id,
        push.user_id,
        push.requesting_session_id,
        push.number,
        push.options,
        push.nonce,
        push.digest,
        push.created,
        push.expires,
        push.status,
    )
