"""The level a passkey proves (NIST SP 800-63B rev 4, docs/security.md "Synced passkeys").

A syncable authenticator — a passkey whose backup-eligible (BE) flag is set — is AAL2 at most;
only a device-bound credential (BE clear) with user verification reaches AAL3. Real py_webauthn
verification of software-authenticator payloads (tests/support/soft_authenticator.py), through
the step-up service and passkey-first sign-in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepguard.core.context import RequestContext
from stepguard.core.errors import VerificationFailed
from stepguard.core.levels import Level
from stepguard.service.accounts import Accounts
from stepguard.service.passkey_sign_in import PasskeySignIn
from stepguard.service.stepup import StepUp
from stepguard.storage.records import SessionRecord
from tests.integration.test_binding import decide_all
from tests.integration.test_decision_api import Env, make_env, open_session
from tests.support.soft_authenticator import SoftAuthenticator

POLICY = """\
rules:
  - name: export
    match: {paths: ["/customers/export"]}
    require: {level: aal3, max_age: 15m, methods: [webauthn], reason: "Exporting customers"}
  - name: roles
    match: {paths: ["/admin/roles"]}
    require: {level: aal2, max_age: 5m, methods: [webauthn], reason: "Changing roles"}
default: {level: aal1}
"""
BASE = "http://localhost:9091"


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    env = make_env(tmp_path, policy=POLICY)
    yield env
    env.runtime.close()


def ask(env: Env, path: str, token: str) -> dict[str, object]:
    body = {"method": "GET", "host": "app.test", "path": path, "session_token": token}
    return asyncio.run(decide_all(env, [body]))[0].model_dump()


def enrol(env: Env, *, synced: bool) -> tuple[SoftAuthenticator, str, SessionRecord]:
    """A passkey for alice (synced or device-bound), and a fresh password-only session."""
    token, session = open_session(env, level=Level.AAL2)  # adding a passkey needs fresh aal2
    authenticator = SoftAuthenticator(origin=BASE, synced=synced)
    accounts = Accounts(env.runtime)
    options, enrolment = accounts.begin_passkey(session, env.alice.user)
    accounts.finish_passkey(session, enrolment, authenticator.create(options), "key")
    env.clock.advance(1)
    token, session = open_session(env)
    return authenticator, token, session


def challenge_id(answer: dict[str, object]) -> str:
    assert answer["decision"] == "step_up", answer
    return str(answer["challenge_url"]).rsplit("/", 1)[1]


def test_a_device_bound_passkey_reaches_aal3(env: Env) -> None:
    authenticator, token, session = enrol(env, synced=False)
    stored = env.runtime.store.factors.for_user(env.alice.user.id, kind="webauthn")
    assert stored[0].data["backup_eligible"] is False
    cid = challenge_id(ask(env, "/customers/export", token))
    stepup = StepUp(env.runtime)
    assert stepup.methods_for(stepup.live(cid, session), env.alice.user.id) == ["webauthn"]
    passed = stepup.finish_webauthn(
        cid, session, authenticator.get(stepup.begin_webauthn(cid, session)), client_ip="")
    allowed = ask(env, "/customers/export", passed.token)
    assert allowed["decision"] == "allow" and allowed["level"] == "aal3"
    assert allowed["subject"]["amr"] == ["hwk", "user"]  # type: ignore[index]


def test_a_synced_passkey_is_aal2_and_never_passes_an_aal3_step_up(env: Env) -> None:
    authenticator, token, session = enrol(env, synced=True)
    stored = env.runtime.store.factors.for_user(env.alice.user.id, kind="webauthn")
    assert stored[0].data["backup_eligible"] is True
    stepup = StepUp(env.runtime)
    # aal3: not offered (the page says none of the ways is set up) ...
    cid = challenge_id(ask(env, "/customers/export", token))
    assert stepup.methods_for(stepup.live(cid, session), env.alice.user.id) == []
    # ... nor can a passkey ceremony start for it (an assertion that came anyway is refused:
    # test_the_assertion_flag_counts_even_when_the_registration_did_not_say).
    with pytest.raises(VerificationFailed, match="cannot be used"):
        stepup.begin_webauthn(cid, session)
    # aal2: offered and passed, proving aal2 with `swk` (a software-secured key).
    env.clock.advance(10)  # past the back-off of the refusal
    cid = challenge_id(ask(env, "/admin/roles", token))
    assert stepup.methods_for(stepup.live(cid, session), env.alice.user.id) == ["webauthn"]
    passed = stepup.finish_webauthn(
        cid, session, authenticator.get(stepup.begin_webauthn(cid, session)), client_ip="")
    allowed = ask(env, "/admin/roles", passed.token)
    assert allowed["decision"] == "allow" and allowed["level"] == "aal2"
    assert allowed["subject"]["amr"] == ["swk", "user"]  # type: ignore[index]
    assert ask(env, "/customers/export", passed.token)["decision"] == "step_up"


def test_the_assertion_flag_counts_even_when_the_registration_did_not_say(env: Env) -> None:
    """A passkey stored before its BE flag was recorded (or whose flag changed): the
    assertion's own BE flag decides, and a synced answer is aal2."""
    authenticator, token, session = enrol(env, synced=False)
    authenticator.synced = True  # its provider now syncs it
    cid = challenge_id(ask(env, "/customers/export", token))
    stepup = StepUp(env.runtime)
    options = stepup.begin_webauthn(cid, session)
    with pytest.raises(VerificationFailed, match="synced"):
        stepup.finish_webauthn(cid, session, authenticator.get(options), client_ip="")
    assert ask(env, "/customers/export", token)["decision"] == "step_up"  # no grant, no event


@pytest.mark.parametrize(("synced", "level"), [(False, Level.AAL3), (True, Level.AAL2)])
def test_passkey_first_sign_in_proves_the_passkeys_level(env: Env, synced: bool,
                                                         level: Level) -> None:
    authenticator, _, _ = enrol(env, synced=synced)
    sign_in = PasskeySignIn(Accounts(env.runtime))
    options, ceremony = sign_in.begin("pre-session-1")
    context = RequestContext(method="POST", host="localhost", path="/login/passkey/finish",
                             client_ip="127.0.0.1", device_id="d1")
    signed = sign_in.finish("pre-session-1", ceremony, authenticator.get(options), context)
    assert signed.session.events[-1].level == level


def test_a_passkey_sign_in_without_the_browsers_pre_session_is_refused(env: Env) -> None:
    """The ceremony is bound to the browser's pre-session: without one there is nothing to bind
    it to, so no options are handed out."""
    with pytest.raises(VerificationFailed, match="Reload the page"):
        PasskeySignIn(Accounts(env.runtime)).begin("")
