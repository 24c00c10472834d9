"""The MCP door's copy of an agent's state behind the version board (`service.agent_tokens`):
used without reading the store only while nothing that could change a decision was written —
by this process or another one opening the same SQLite file — and never for a wrong secret, an
expired token, a dead store (after `STORE_CONTACT_EVERY`) or a due last-used write."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stepguard.audit.memory import MemoryAuditLog
from stepguard.config.load import load_config
from stepguard.core.errors import VerificationFailed
from stepguard.core.grant import Grant
from stepguard.core.levels import Level
from stepguard.service.agent_tokens import TOUCH_EVERY, AgentTokens
from stepguard.service.guard import STORE_CONTACT_EVERY
from stepguard.service.runtime import Runtime, build_runtime
from stepguard.storage.memory import MemoryStore
from tests.support.gateway import Clock, Seeded, make_runtime, seed_user, write_config


@dataclass
class Two:
    """Two runtimes on one SQLite file: the door's process and another (CLI, portal)."""

    door: Runtime
    other: Runtime
    clock: Clock
    alice: Seeded
    token: str

    def agents(self) -> AgentTokens:
        return AgentTokens(self.door)


@pytest.fixture()
def two(tmp_path: Path) -> Iterator[Two]:
    clock = Clock()
    door = make_runtime(tmp_path, clock=clock)
    other = build_runtime(load_config(tmp_path / "stepguard.yaml"), clock=clock)
    alice = seed_user(door)
    token = AgentTokens(other).create(alice.user.id, "agent", ttl=3600).token
    yield Two(door, other, clock, alice, token)
    other.close()
    door.close()


def warm(agents: AgentTokens, token: str) -> None:
    agents.authenticate(token)
    assert agents.cached(token) is not None


def test_a_warm_copy_is_used_until_another_process_revokes_the_token(two: Two) -> None:
    agents = two.agents()
    assert agents.cached(two.token) is None  # nothing read yet
    warm(agents, two.token)
    token_id = two.token.split("_")[1]
    AgentTokens(two.other).revoke(token_id, user_id=None)
    assert agents.cached(two.token) is None
    with pytest.raises(VerificationFailed):
        agents.authenticate(two.token)


@pytest.mark.parametrize("change", ["disable", "revoke_all", "groups"])
def test_user_changes_elsewhere_drop_the_copy(two: Two, change: str) -> None:
    agents = two.agents()
    warm(agents, two.token)
    users, now = two.other.store.users, two.clock.now
    if change == "disable":
        users.set_disabled(two.alice.user.id, True, now=now)
    elif change == "revoke_all":
        two.other.store.agent_tokens.revoke_all_for_user(two.alice.user.id, now=now)
    else:
        users.set_groups(two.alice.user.id, ["auditors"])
    assert agents.cached(two.token) is None
    if change == "groups":
        assert agents.authenticate(two.token).user.groups == frozenset({"auditors"})


def test_a_grant_added_or_spent_elsewhere_is_seen_by_the_next_decision(two: Two) -> None:
    agents = two.agents()
    warm(agents, two.token)
    agent = agents.cached(two.token)
    assert agent is not None and agents.loaded_cached(agent) is not None
    grant = Grant(id="g1", subject_id=two.alice.user.id, session_id=agent.session_id,
                  scope="rule:x", level=Level.AAL2, amr=("otp",), granted_at=two.clock.now,
                  expires_at=two.clock.now + 300, single_use=True, binding="d" * 64,
                  factor="totp")
    two.other.store.grants.add(grant)
    assert agents.loaded_cached(agent) is None
    assert [g.id for g in agents.loaded(agent).grants] == ["g1"]
    warm(agents, two.token)
    agent = agents.cached(two.token)
    assert agent is not None and [g.id for g in agents.loaded(agent).grants] == ["g1"]
    assert two.other.store.grants.consume("g1", session_id=agent.session_id, now=two.clock.now)
    assert agents.loaded_cached(agent) is None
    assert agents.loaded(agent).grants == ()


def test_a_wrong_secret_never_rides_a_warm_copy(two: Two) -> None:
    agents = two.agents()
    warm(agents, two.token)
    forged = two.token[:-4] + ("AAAA" if not two.token.endswith("AAAA") else "BBBB")
    assert agents.cached(forged) is None
    with pytest.raises(VerificationFailed):
        agents.authenticate(forged)
    assert agents.cached(two.token) is not None


def test_the_copy_expires_with_the_token_and_with_store_contact(two: Two) -> None:
    agents = two.agents()
    warm(agents, two.token)
    two.clock.advance(STORE_CONTACT_EVERY)  # no read reached the store for a while: read
    assert agents.cached(two.token) is None
    warm(agents, two.token)
    two.clock.advance(TOUCH_EVERY)  # a last-used write is due: the thread path does it
    assert agents.cached(two.token) is None
    two.clock.advance(3600)  # the token itself expired
    with pytest.raises(VerificationFailed):
        agents.authenticate(two.token)
    assert agents.cached(two.token) is None


def test_without_a_version_board_every_request_reads(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    runtime = build_runtime(load_config(config), clock=Clock(), store=MemoryStore(),
                            audit_log=MemoryAuditLog())
    try:
        alice = seed_user(runtime)
        agents = AgentTokens(runtime)
        token = agents.create(alice.user.id, "agent", ttl=3600).token
        agents.authenticate(token)
        assert agents.cached(token) is None
    finally:
        runtime.close()
