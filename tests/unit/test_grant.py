"""binding_digest: a stable, documented format (grants are stored and signed over it)."""

from __future__ import annotations

import hashlib

from stepguard.core.grant import binding_digest


def test_the_digest_is_sha256_of_a_canonical_json_document() -> None:
    """Pinned: a change of format would silently void every stored grant and every WebAuthn
    assertion made over a binding, so it must be a deliberate, visible change."""
    attributes = {"amount": 5000.0, "fee": 2.5, "payee": "Zoë", "urgent": True, "ignored": 1}
    expected = (
        '{"a":{"amount":"5000","fee":"2.5","memo":null,"payee":"Zoë","urgent":true},'
        '"m":"POST","p":"/transfers"}'
    )
    digest = binding_digest(method="post", path="/transfers",
                            fields=("urgent", "payee", "memo", "fee", "amount", "amount"),
                            attributes=attributes)
    assert digest == hashlib.sha256(expected.encode("utf-8")).hexdigest()


def test_numbers_bind_by_value_and_text_is_trimmed() -> None:
    def digest(value: object) -> str:
        return binding_digest(method="POST", path="/t", fields=["x"], attributes={"x": value})

    assert digest(1000) == digest(1000.0) == digest("1000") == digest(" 1000.00 ")
    assert digest(0.1) == digest("0.1") != digest(0.10000001)
    assert digest("Bob") == digest(" Bob ") != digest("bob")
    assert digest(True) != digest("true") and digest(None) != digest("None")
