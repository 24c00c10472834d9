"""Review of commit 3c76be5: `trust_client` moved into the step-up pass's transaction, after
`_complete`, which has already queued the `passed` audit entry (and its notification). A store
failure while trusting the client now rolls the pass back (challenge pending, no grant, the
session token not rotated) — but the audit log still says the challenge was passed, with the id
of a grant that was never stored."""

from __future__ import annotations

import pytest

from stepguard.core.errors import StoreUnavailable
from tests.unit.test_stepup_push import LAPTOP_IP, World, entries
from tests.unit.test_stepup_rules import challenge_now, code_now, with_totp, world  # noqa: F401


def test_a_pass_rolled_back_is_never_audited_as_passed(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    secret = with_totp(world)
    challenge = challenge_now(world)

    def store_down(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("the store is unavailable")

    monkeypatch.setattr(world.rt.store.history, "record_trusted", store_down)
    with pytest.raises(StoreUnavailable):
        world.stepup.verify_totp(challenge.id, world.laptop, code_now(world, secret),
                                 client_ip=LAPTOP_IP)
    stored = world.rt.store.challenges.get(challenge.id)
    assert stored is not None and stored.status == "pending"  # the pass was rolled back
    passed = [e for e in entries(world) if e.kind == "verification" and e.outcome == "passed"]
    assert passed == []
