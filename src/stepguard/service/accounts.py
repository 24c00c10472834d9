"""Users, sign-in, sessions and factor enrolment — each operation one transaction, audited."""

from __future__ import annotations

from dataclasses import dataclass

from stepguard.audit.ledger import request_summary
from stepguard.core.context import AuthEvent, RequestContext
from stepguard.core.decision import Decision, Outcome, Requirement
from stepguard.core.errors import StepguardError, VerificationFailed
from stepguard.core.levels import FACTOR_AMR, Level
from stepguard.core.throttle import client_network, plan_attempt
from stepguard.factors import webauthn as wa
from stepguard.factors.password import OWASP, hash_password, verify_dummy, verify_password
from stepguard.factors.recovery import generate_recovery_codes, hash_recovery_code
from stepguard.factors.secretbox import open_sealed, seal, seed_aad
from stepguard.factors.totp import new_totp_secret, provisioning_uri, qr_svg, verify_totp
from stepguard.service.attempts import (
    abandoned,
    failed,
    reserve,
    succeeded,
    trust_client,
    unknown_subject,
)
from stepguard.service.runtime import Runtime, hash_token, new_id, new_token
from stepguard.service.stepup import StepUp, ceremony_data, ceremony_from
from stepguard.storage.records import (
    ChallengeRecord,
    FactorRecord,
    Reserved,
    SessionRecord,
    UserRecord,
)

FRESH_FOR_ENROLMENT = 600.0  # seconds: adding or removing a factor needs a proof this recent


class NeedsFreshProof(StepguardError):
    """Changing factors needs a recent strong proof (ASVS V7.5.1): step up first."""


@dataclass(frozen=True)
class SignedIn:
    session: SessionRecord
    token: str
    user: UserRecord


@dataclass(frozen=True)
class TotpEnrolment:
    factor_id: str
    secret: str
    uri: str
    svg: str


class Accounts:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    # ------------------------------------------------------------------ users (admin)

    def add_user(
        self,
        username: str,
        *,
        password: str | None,
        display_name: str = "",
        email: str = "",
        groups: tuple[str, ...] = (),
    ) -> UserRecord:
        user = UserRecord(
            id=new_id(),
            username=username,
            display_name=display_name,
            email=email,
            groups=frozenset(groups),
            # No password: this user signs in with a passkey only (see docs/account-recovery.md).
            password_hash=hash_password(password) if password is not None else "",
            created=self.rt.now(),
        )
        self.rt.store.users.add(user)
        self.rt.record(
            kind="admin", subject=user.id, outcome="user_added", detail={"username": username}
        )
        return user

    def disable_user(self, user_id: str, *, by: str = "cli") -> bool:
        """Disable a user: every session and every agent token ends (re-enabling revives
        neither)."""
        with self.rt.store.transaction():
            changed = self.rt.store.users.set_disabled(user_id, True, now=self.rt.now())
            agents = self._end_agents(user_id)
        self.rt.record(kind="admin", subject=user_id, outcome="user_disabled",
                       detail={"by": by, "agents_revoked": agents})
        return changed

    def end_all_sessions(self, user_id: str, *, except_session: str | None = None,
                         by: str = "cli") -> tuple[int, int]:
        """"Sign out everywhere": end the user's sessions (but `except_session`, the browser
        asking) and revoke every agent token, in one transaction. (sessions, agent tokens)."""
        now = self.rt.now()
        with self.rt.store.transaction():
            sessions = self.rt.store.sessions.revoke_all_for_user(
                user_id, now=now, except_session=except_session)
            agents = self._end_agents(user_id)
        self.rt.record(kind="admin" if by != "owner" else "session", subject=user_id,
                       session_id=except_session or "", outcome="sessions_ended",
                       detail={"by": by, "sessions": sessions, "agents_revoked": agents})
        return sessions, agents

    def _end_agents(self, user_id: str) -> int:
        """Revoke every live agent token of the user (they die with the user's sessions)."""
        return self.rt.store.agent_tokens.revoke_all_for_user(user_id, now=self.rt.now())

    def reset_factors(self, user_id: str, *, by: str = "cli") -> int:
        with self.rt.store.transaction():
            factors = [f for f in self.rt.store.factors.for_user(user_id) if f.kind != "password"]
            for factor in factors:
                self.rt.store.factors.remove(factor.id, user_id=user_id)
            self.rt.store.factors.replace_recovery_codes(user_id, [], now=self.rt.now())
            self.rt.store.sessions.revoke_all_for_user(user_id, now=self.rt.now())
            agents = self._end_agents(user_id)
        self.rt.record(
            kind="admin",
            subject=user_id,
            outcome="factors_reset",
            detail={"by": by, "count": len(factors), "agents_revoked": agents},
        )
        return len(factors)

    def end_sessions(self, user_id: str, *, by: str = "cli") -> int:
        """An operator ends every session and agent token of a user (`end_all_sessions`); the
        number of sessions ended."""
        return self.end_all_sessions(user_id, by=by)[0]

    def set_password(self, user_id: str, password: str, *, by: str = "cli") -> bool:
        """A new password ends every session and agent token of the user (SECURITY.md:
        revoke-all) and lifts any throttle lock (the old password's guesses no longer
        matter)."""
        hashed = hash_password(password)  # before the transaction: no lock held while hashing
        with self.rt.store.transaction():
            changed = self.rt.store.users.set_password_hash(user_id, hashed)
            self.rt.store.sessions.revoke_all_for_user(user_id, now=self.rt.now())
            agents = self._end_agents(user_id)
        self.rt.store.throttle.reset_user(user_id)
        self.rt.record(kind="admin", subject=user_id, outcome="password_set",
                       detail={"by": by, "agents_revoked": agents})
        return changed

    def unlock(self, user_id: str, *, by: str = "cli") -> None:
        """An operator lifts every throttle lock of the user (the way out of a hard lock)."""
        self.rt.store.throttle.reset_user(user_id)
        self.rt.record(kind="admin", subject=user_id, outcome="unlocked", detail={"by": by})

    # ------------------------------------------------------------------ sign-in

    def sign_in(self, username: str, password: str, context: RequestContext) -> SignedIn:
        """Password sign-in: reserve-then-verify throttling, the same work and the same answers
        for unknown users (their attempts are counted under a digest of the name)."""
        with self.rt.store.snapshot():
            user = self.rt.store.users.by_username(username)
            subject = user.id if user else unknown_subject(username)
            history = self.rt.store.history.load(subject)
        attempt = plan_attempt(subject=subject, factor="password", client_ip=context.client_ip,
                               device_id=context.device_id, history=history)
        reserved = reserve(self.rt, attempt)
        try:
            self._check_password(user, password)
            assert user is not None
            signed = self._open_session(user, context)
        except VerificationFailed:
            self._failed(user, context, reserved)
            raise
        except BaseException:
            abandoned(self.rt, reserved)
            raise
        succeeded(self.rt, reserved)
        return signed

    def _check_password(self, user: UserRecord | None, password: str) -> None:
        with self.rt.password_slots:  # bounded: argon2id is memory-hard
            if user is None or user.disabled or not user.password_hash:
                verify_dummy(password)  # raises: the same time and answer as a wrong password
            check = verify_password(
                stored_hash=user.password_hash, password=password, settings=OWASP
            )
        if check.rehash:
            self.rt.store.users.set_password_hash(user.id, check.rehash)

    def _failed(self, user: UserRecord | None, context: RequestContext,
                reserved: tuple[Reserved, ...], factor: str = "password") -> None:
        failed(self.rt, user_id=user.id if user else None, reserved=reserved, factor=factor,
               client_ip=context.client_ip)
        self.rt.record(
            kind="verification",
            subject=user.id if user else "",
            factor=factor,
            outcome="failed:invalid",
            request=request_summary(context, ip_key=self.rt.ip_key),
        )

    def _open_session(self, user: UserRecord, context: RequestContext,
                      event: AuthEvent | None = None) -> SignedIn:
        """A new session whose first authentication event is `event` (default: a password)."""
        now, token = self.rt.now(), new_token()
        event = event or AuthEvent(factor="password", amr=FACTOR_AMR["password"],
                                   level=Level.AAL1, at=now)
        session = SessionRecord(
            id=new_id(),
            token_hash=hash_token(token),
            user_id=user.id,
            created=now,
            last_seen=now,
            ip=context.client_ip,
            user_agent=context.user_agent[:512],
            device_id=context.device_id,
            events=(event,),
        )
        with self.rt.store.transaction():  # one write for the session and what it teaches
            self.rt.store.sessions.add(session)
            novelty = self._novelty(user, context)
            self._remember(user, context)
            trust_client(self.rt, user_id=user.id, factor=event.factor,
                         client_ip=context.client_ip, device_id=context.device_id)
        self.rt.record(
            kind="session",
            subject=user.id,
            session_id=session.id,
            factor=event.factor,
            outcome="signed_in",
            request=request_summary(context, ip_key=self.rt.ip_key),
            detail=novelty,
        )
        return SignedIn(session, token, user)

    def _novelty(self, user: UserRecord, context: RequestContext) -> dict[str, object]:
        """Whether this sign-in comes from a device or country the user has not signed in from
        before (a first sign-in is neither: there is nothing to compare with), and where."""
        history = self.rt.store.history.load(user.id)
        location = self.rt.locator.locate(context.client_ip) if context.client_ip else None
        known = bool(history.known_devices or history.known_countries or history.known_networks)
        country = location.country if location else ""
        return {
            "new_device": known and bool(context.device_id)
            and context.device_id not in history.known_devices,
            "new_location": known and bool(country) and country not in history.known_countries,
            "place": location.place if location else "",
        }

    def _remember(self, user: UserRecord, context: RequestContext) -> None:
        location = self.rt.locator.locate(context.client_ip) if context.client_ip else None
        self.rt.store.history.record_success(
            user.id,
            device_id=context.device_id,
            network_prefix=client_network(context.client_ip),
            country=location.country if location else "",
            location=location,
            at=self.rt.now(),
            hour=int(self.rt.now() // 3600 % 24),
        )

    # ------------------------------------------------------------------ sessions

    def sign_out(self, session: SessionRecord) -> None:
        self.rt.store.sessions.revoke(session.id, now=self.rt.now())
        self.rt.record(
            kind="session", subject=session.user_id, session_id=session.id, outcome="signed_out"
        )

    def revoke_session(
        self, owner: SessionRecord | None, session_id: str, *, admin: str = ""
    ) -> bool:
        target = self.rt.store.sessions.get(session_id)
        if target is None or (not admin and (owner is None or target.user_id != owner.user_id)):
            return False
        done = self.rt.store.sessions.revoke(session_id, now=self.rt.now())
        self.rt.record(
            kind="admin" if admin else "session",
            subject=target.user_id,
            session_id=session_id,
            outcome="revoked",
            detail={"by": admin or "owner"},
        )
        return done

    # ------------------------------------------------------------------ enrolment

    def require_fresh(self, session: SessionRecord, *, first_factor_ok: bool = True) -> None:
        """A factor change needs a proof from the last 10 minutes (aal2 once one exists)."""
        now = self.rt.now()
        wanted = (Level.AAL2 if self._has_second_factor(session.user_id) or not first_factor_ok
                  else Level.AAL1)
        if not any(e.level >= wanted and now - e.at <= FRESH_FOR_ENROLMENT for e in session.events):
            raise NeedsFreshProof("Confirm it's you before changing how you sign in.")

    def _has_second_factor(self, user_id: str) -> bool:
        """A confirmed factor besides the password: one still being set up is none (it cannot
        be used to confirm anything yet)."""
        return any(f.kind != "password" and f.data.get("confirmed", True)
                   for f in self.rt.store.factors.for_user(user_id))

    def fresh_proof_challenge(
        self, session: SessionRecord, context: RequestContext, return_to: str
    ) -> ChallengeRecord | None:
        """A step-up challenge for a factor change, or None when only a new sign-in will do."""
        if not self._has_second_factor(session.user_id):
            return None  # no second factor yet: a fresh password sign-in is the proof
        requirement = Requirement(level=Level.AAL2, max_age=FRESH_FOR_ENROLMENT)
        decision = Decision(
            outcome=Outcome.STEP_UP,
            rule="factor-change",
            reasons=("Confirm it's you before changing how you sign in.",),
            requirement=requirement,
            scope="factor-change",
        )
        return StepUp(self.rt).start(decision, context, session, return_url=return_to)

    def begin_totp(self, session: SessionRecord, user: UserRecord) -> TotpEnrolment:
        self.require_fresh(session)
        secret = new_totp_secret()
        factor_id = self._store_totp(user, secret, label="Authenticator app",
                                     created=self.rt.now(), confirmed=False)
        uri = provisioning_uri(
            secret=secret, account=user.username, issuer=self.rt.config.portal.title
        )
        return TotpEnrolment(factor_id, secret, uri, qr_svg(uri))

    def _store_totp(self, user: UserRecord, secret: str, *, label: str, created: float,
                    confirmed: bool) -> str:
        """Seal the seed under the current key, bound to this user and factor; store it."""
        factor_id = new_id()
        sealed = seal(keyring=self.rt.keyring, plaintext=secret.encode(),
                      aad=seed_aad(user_id=user.id, factor_id=factor_id))
        self.rt.store.factors.add(FactorRecord(
            id=factor_id, user_id=user.id, kind="totp", label=label, created=created,
            secret=sealed, data={} if confirmed else {"confirmed": False}))
        return factor_id

    def confirm_totp(self, session: SessionRecord, factor_id: str, code: str) -> None:
        self.require_fresh(session)
        factor = self.rt.store.factors.get(factor_id)
        if factor is None or factor.user_id != session.user_id or factor.kind != "totp":
            raise VerificationFailed("Start the set-up again.")
        secret = open_sealed(
            keyring=self.rt.keyring,
            token=factor.secret,
            aad=seed_aad(user_id=factor.user_id, factor_id=factor.id),
        ).decode()
        accepted = verify_totp(secret=secret, code=code, now=self.rt.now(), last_step=None)
        with self.rt.store.transaction():
            self.rt.store.factors.remove(factor.id, user_id=factor.user_id)
            self.rt.store.factors.add(
                FactorRecord(
                    id=factor.id,
                    user_id=factor.user_id,
                    kind="totp",
                    label=factor.label,
                    created=self.rt.now(),
                    secret=factor.secret,
                    last_step=accepted.step,
                )
            )
        self._factor_changed(session, "totp", "enrolled")

    def add_totp_secret(
        self, user: UserRecord, secret: str, *, label: str = "Authenticator app"
    ) -> None:
        """Seed a known TOTP secret (demo and import); normal users enrol through the portal.
        It counts as existing before anything that starts at the same instant."""
        self._store_totp(user, secret, label=label, created=self.rt.now() - 1, confirmed=True)

    def begin_passkey(self, session: SessionRecord, user: UserRecord) -> tuple[str, str]:
        """Registration options and the id of the stored, single-use ceremony."""
        self.require_fresh(session)
        existing = [
            f.credential_id for f in self.rt.store.factors.for_user(user.id, kind="webauthn")
        ]
        options, ceremony = wa.begin_registration(
            rp=self.rt.rp,
            user_id=user.id,
            user_name=user.username,
            display_name=user.display_name or user.username,
            exclude_credential_ids=existing,
            session_id=session.id,
            now=self.rt.now(),
            require_uv=True,
        )
        now = self.rt.now()
        record = ChallengeRecord(
            id=new_id(),
            user_id=user.id,
            session_id=session.id,
            requirement=Requirement(),
            rule="enrol-passkey",
            created=now,
            expires=ceremony.expires,
        )
        self.rt.store.challenges.add(record)
        self.rt.store.challenges.set_ceremony(record.id, ceremony_data(ceremony), now=now)
        return options, record.id

    def finish_passkey(
        self, session: SessionRecord, enrolment_id: str, credential_json: str, label: str
    ) -> None:
        self.require_fresh(session)
        record = self.rt.store.challenges.get(enrolment_id)
        data = self.rt.store.challenges.take_ceremony(enrolment_id, now=self.rt.now())
        if record is None or data is None or record.session_id != session.id:
            raise VerificationFailed("Start adding the passkey again.")
        ceremony = ceremony_from(data)
        new = wa.finish_registration(
            rp=self.rt.rp,
            ceremony=ceremony,
            credential_json=credential_json,
            user_id=session.user_id,
            session_id=session.id,
            now=self.rt.now(),
        )
        self.rt.store.factors.add(
            FactorRecord(
                id=new_id(),
                user_id=session.user_id,
                kind="webauthn",
                label=label[:60] or "Passkey",
                created=self.rt.now(),
                credential_id=new.credential_id,
                public_key=new.public_key,
                sign_count=new.sign_count,
                data={"uv": new.uv, "aaguid": new.aaguid,
                      "backup_eligible": new.multi_device},  # synced: aal2 at most
            )
        )
        self._factor_changed(session, "webauthn", "enrolled")

    def remove_password(self, session: SessionRecord) -> bool:
        """Passkey-only from now on: needs a fresh proof and a registered passkey (so the user
        can still sign in); ends the user's other sessions like any factor change."""
        self.require_fresh(session, first_factor_ok=False)
        if not self.rt.store.factors.for_user(session.user_id, kind="webauthn"):
            raise VerificationFailed("Add a passkey first: it is how you will sign in.")
        changed = self.rt.store.users.set_password_hash(session.user_id, "")
        self._factor_changed(session, "password", "removed")
        return changed

    def regenerate_recovery_codes(self, session: SessionRecord) -> list[str]:
        self.require_fresh(session)
        codes = generate_recovery_codes()
        self.rt.store.factors.replace_recovery_codes(
            session.user_id, [hash_recovery_code(c) for c in codes], now=self.rt.now()
        )
        self._factor_changed(session, "recovery", "regenerated")
        return codes

    def remove_factor(self, session: SessionRecord, factor_id: str) -> bool:
        self.require_fresh(session, first_factor_ok=False)
        removed = self.rt.store.factors.remove(factor_id, user_id=session.user_id)
        if removed:
            self._factor_changed(session, "factor", "removed")
        return removed

    def _factor_changed(self, session: SessionRecord, factor: str, what: str) -> None:
        """Any factor change ends the user's other sessions (SECURITY.md: revoke-all)."""
        self.rt.store.sessions.revoke_all_for_user(
            session.user_id, now=self.rt.now(), except_session=session.id
        )
        self.rt.record(
            kind="enrolment",
            subject=session.user_id,
            session_id=session.id,
            factor=factor,
            outcome=what,
        )
