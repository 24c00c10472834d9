"""loads_json's refusal says what is wrong with the body: the words a client of the decision
API and the MCP door reads in its 400 answer. Found by `make mutate` on `core/canonical.py`."""

from __future__ import annotations

import pytest

from stepguard.core.canonical import loads_json
from stepguard.core.errors import BadRequest


@pytest.mark.parametrize("body", [b"{", b'{"a": 1', b"\xff\xfe{}", b"[" * 100_000])
def test_a_body_that_is_no_json_is_refused_as_not_valid_json(body: bytes) -> None:
    with pytest.raises(BadRequest) as refused:
        loads_json(body)
    assert str(refused.value) == "the body is not valid JSON"
