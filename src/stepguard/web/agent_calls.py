"""What the step-up page shows of an agent's held tool call (the MCP door's challenges)."""

from __future__ import annotations

import json
from typing import Any

from stepguard.core.toolcall import canonical_json, flatten_arguments
from stepguard.service.stepup import delegated
from stepguard.storage.records import ChallengeRecord


def agent_call_view(challenge: ChallengeRecord) -> dict[str, Any] | None:
    """The agent, server, tool, its description and every argument (bound ones marked), or
    None for a challenge that holds no agent call."""
    if not delegated(challenge):
        return None
    try:
        held = json.loads(challenge.held_body)
    except ValueError:
        return None
    bound = {name for name, _ in challenge.bound_values}
    arguments = [(name[5:], value if isinstance(value, str) else canonical_json(value),
                  name in bound)
                 for name, value in flatten_arguments(held.get("arguments") or {}).items()]
    return {"client": held.get("client", ""), "server": held.get("server", ""),
            "tool": held.get("tool", ""), "title": held.get("title", ""),
            "description": held.get("description", ""), "listed": held.get("listed", False),
            "arguments": arguments}
