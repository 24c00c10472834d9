"""The factors package: a curated public API, keyword-only verifiers, no clock reads."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import stepguard.factors as factors

PACKAGE = Path(factors.__file__).parent

EXPECTED = {
    "OWASP",
    "AssertionAccepted",
    "Ceremony",
    "Keyring",
    "NewCredential",
    "PasswordCheck",
    "PasswordPool",
    "PasswordSettings",
    "PushAnswered",
    "PushRequest",
    "PushSettings",
    "RecoveryUsed",
    "RelyingParty",
    "StoredCredential",
    "TotpAccepted",
    "answer_push",
    "begin_authentication",
    "begin_registration",
    "binding_challenge",
    "check_push_rate",
    "credential_id_of",
    "finish_authentication",
    "finish_registration",
    "generate_recovery_codes",
    "hash_password",
    "hash_recovery_code",
    "needs_reseal",
    "new_key",
    "new_totp_secret",
    "open_sealed",
    "provisioning_uri",
    "qr_svg",
    "approval_message",
    "push_digest",
    "DeviceKey",
    "reseal",
    "seal",
    "seed_aad",
    "start_push",
    "totp_at",
    "user_handle",
    "verify_dummy",
    "verify_password",
    "verify_recovery_code",
    "verify_totp",
}

VERIFIERS = [
    factors.verify_password,
    factors.verify_totp,
    factors.verify_recovery_code,
    factors.finish_registration,
    factors.finish_authentication,
    factors.begin_registration,
    factors.begin_authentication,
    factors.answer_push,
    factors.approval_message,
    factors.push_digest,
    factors.start_push,
    factors.check_push_rate,
    factors.seal,
    factors.open_sealed,
    factors.reseal,
]


def test_public_api_is_exactly_the_curated_list() -> None:
    assert set(factors.__all__) == EXPECTED
    assert len(factors.__all__) == len(EXPECTED)
    for name in factors.__all__:
        assert getattr(factors, name) is not None


def test_verifiers_take_keyword_arguments_only() -> None:
    for function in VERIFIERS:
        for parameter in inspect.signature(function).parameters.values():
            assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, (function, parameter)


def test_results_are_frozen() -> None:
    for cls in (
        factors.PasswordCheck,
        factors.TotpAccepted,
        factors.RecoveryUsed,
        factors.NewCredential,
        factors.AssertionAccepted,
        factors.PushAnswered,
        factors.PushRequest,
        factors.Ceremony,
        factors.StoredCredential,
    ):
        assert cls.__dataclass_params__.frozen, cls  # type: ignore[attr-defined]


def test_no_module_reads_the_clock() -> None:
    forbidden = {
        ("time", "time"),
        ("time", "monotonic"),
        ("datetime", "now"),
        ("datetime", "utcnow"),
        ("date", "today"),
    }
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert (node.value.id, node.attr) not in forbidden, (path.name, node.attr)
            if isinstance(node, ast.ImportFrom) and node.module in ("time", "datetime"):
                raise AssertionError(f"{path.name} imports from {node.module}")


def test_package_doc_explains_why_there_is_no_sms() -> None:
    doc = factors.__doc__ or ""
    assert "SMS" in doc and "800-63B" in doc and "SIM" in doc
