"""The mapping: each control, the features that meet it, how the evidence is judged, and the
tests that prove the features work (a unit test checks every cited test exists).

A finding is `met` (the configuration and the ledger show the control operating), `gap` (the
configuration in force falls short: say what to change) or `review` (needs an auditor's
judgement, e.g. no activity in the period).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from stepguard.compliance.evidence import Evidence, describe_rule
from stepguard.core.levels import Level

DAY = 86400.0
NIST = {Level.AAL2: (24 * 3600.0, 3600.0), Level.AAL3: (12 * 3600.0, 15 * 60.0)}
MFA_FACTORS = ("totp", "webauthn", "push")


@dataclass
class Finding:
    status: str  # met | gap | review
    configuration: list[tuple[str, str]] = field(default_factory=list)
    counts: list[tuple[str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sample: str = ""  # key of Evidence.samples to show


@dataclass(frozen=True)
class Control:
    framework: str
    id: str
    title: str
    features: str
    tests: tuple[str, ...]
    assess: Callable[[Evidence], Finding]


SAMPLES = {  # key -> (kind, outcome) of the entries sampled for the report
    "step_ups": ("verification", "passed"),
    "failures": ("verification", None),
    "admin": ("admin", None),
    "denies": ("decision", "deny"),
    "enrolments": ("enrolment", None),
    "sessions": ("session", None),
}


def _status(ok: bool, active: bool = True) -> str:
    return "gap" if not ok else ("met" if active else "review")


# --------------------------------------------------------------------------- PCI DSS v4.0.1


def _pci_8_4(e: Evidence) -> Finding:
    rules = e.rules_at(Level.AAL2)
    passed = e.by_factor("passed")
    mfa = sum(n for f, n in passed.items() if f in MFA_FACTORS)
    f = Finding(_status(bool(rules), mfa > 0),
                [("rules requiring aal2 or more", "; ".join(describe_rule(r) for r in rules)
                  or "none")],
                [("step-ups passed with a second factor", mfa),
                 ("step-ups demanded (decisions)", e.count(kind="decision", decision="step_up")),
                 *[(f"passed with {factor}", n) for factor, n in passed.items()]],
                sample="step_ups")
    if not rules:
        f.notes.append("No enforced rule requires aal2: protect the CDE paths with "
                       "`require: {level: aal2}` (see docs/policy.md).")
    return f


def _pci_8_5(e: Evidence) -> Finding:
    report = e.report_rules()
    refused = e.count(kind="verification", prefix="failed:")
    f = Finding("gap" if report or e.policy.report else "met",
                [("policy mode", "report (nothing enforced)" if e.policy.report else "enforce"),
                 ("rules in report mode", ", ".join(r.name for r in report) or "none"),
                 ("one-time codes", "each TOTP step accepted once per user; recovery codes "
                                    "single use; WebAuthn challenges single use, bound to user, "
                                    "session and ceremony")],
                [("failed verifications (replays, wrong codes, expired challenges)", refused)],
                sample="failures")
    if report or e.policy.report:
        f.notes.append("Report-mode rules let requests through without MFA: each must be a "
                       "documented, time-limited exception (PCI DSS 8.5.1 c).")
    return f


def _pci_10_2(e: Evidence) -> Finding:
    every = e.config.audit.allows == "every_request"
    f = Finding("met" if every else "review",
                [("audit.allows", e.config.audit.allows)],
                [("decisions (requests)", e.count(kind="decision", requests=True)),
                 ("denied requests", e.count(kind="decision", decision="deny")),
                 ("invalid access attempts (failed verifications)",
                  e.count(kind="verification", prefix="failed:")),
                 ("administrative actions", e.count(kind="admin")),
                 ("factor changes", e.count(kind="enrolment")),
                 ("sign-ins and sign-outs", e.count(kind="session"))],
                sample="admin")
    if not every:
        f.notes.append("Plain allows are summarised per user, session, rule and minute; for "
                       "individual access to cardholder data (10.2.1.1) set "
                       "`audit.allows: every_request`.")
    return f


def _pci_10_3(e: Evidence) -> Finding:
    chain = e.chain
    f = Finding("met" if chain.ok else "gap",
                [("ledger", "SHA-256 hash chain; signed (Ed25519) retention checkpoints"),
                 ("checkpoint signing key", "configured" if e.config.secrets.audit_signing_key
                  else "not configured")],
                [("entries verified", chain.count)])
    f.notes.append(f"Chain verification: {'intact' if chain.ok else 'BROKEN: ' + str(chain)}.")
    return f


def _pci_10_5(e: Evidence) -> Finding:
    retention = e.config.audit.retention
    ok = retention is None or retention >= 365 * DAY
    f = Finding(_status(ok), [("audit.retention", "keep everything" if retention is None
                               else f"{retention / DAY:.0f} days")])
    if not ok:
        f.notes.append("PCI DSS 10.5.1 asks for at least 12 months of audit history.")
    return f


# --------------------------------------------------------------------------- OWASP ASVS 5.0


def _asvs_v6(e: Evidence) -> Finding:
    t = e.config.throttle
    ok = t.hard_lock_after <= 100
    return Finding(_status(ok, True),
                   [("throttle", f"back-off from {t.base_delay:g}s doubling to "
                                 f"{t.max_delay:g}s; hard lock after {t.hard_lock_after} "
                                 "consecutive failures"),
                    ("TOTP", "30 s step, ±1 step, each step once per user")],
                   [("lockouts", e.count(kind="verification", outcome="locked")),
                    ("failed verifications", e.count(kind="verification", prefix="failed:"))],
                   sample="failures")


def _asvs_v7(e: Evidence) -> Finding:
    sensitive = [r for r in e.policy.rules if r.requirement is not None and not r.report
                 and (r.requirement.needs_grant or r.requirement.max_age is not None)]
    return Finding(_status(bool(sensitive), e.count(kind="verification", outcome="passed") > 0),
                   [("step-up rules (freshness, scope, single use, binding)",
                     "; ".join(describe_rule(r) for r in sensitive) or "none")],
                   [("step-ups passed (session token rotated each time)",
                     e.count(kind="verification", outcome="passed")),
                    ("sessions revoked", e.count(outcome="revoked")),
                    ("factor changes (each behind a fresh step-up)", e.count(kind="enrolment"))],
                   sample="enrolments")


# --------------------------------------------------------------------------- NIST SP 800-63B


def _nist_reauth(e: Evidence) -> Finding:
    configured, ok = [], True
    for level, (absolute, idle) in NIST.items():
        s = e.policy.levels[level]
        configured.append((f"{level.label}", f"re-authenticate after {s.max_session / 3600:g} h,"
                                             f" idle {s.idle / 60:g} min (NIST: "
                                             f"{absolute / 3600:g} h, {idle / 60:g} min)"))
        ok = ok and s.max_session <= absolute and s.idle <= idle
    f = Finding(_status(ok), configured)
    if not ok:
        f.notes.append("A level's lifetime exceeds NIST SP 800-63B rev 4: shorten `levels:`.")
    return f


def _nist_aal3(e: Evidence) -> Finding:
    aal3 = e.rules_at(Level.AAL3)
    weak = [r.name for r in aal3 if r.requirement and r.requirement.methods - {"webauthn"}
            or (r.requirement and not r.requirement.methods)]
    f = Finding("gap" if weak else ("met" if aal3 else "review"),
                [("aal3 rules", "; ".join(describe_rule(r) for r in aal3) or "none"),
                 ("WebAuthn user verification", "required for aal3")],
                [("passkey step-ups passed", e.by_factor("passed").get("webauthn", 0))])
    if weak:
        f.notes.append(f"aal3 rules that allow other methods than passkeys: {', '.join(weak)} "
                       "(AAL3 needs a phishing-resistant, hardware-backed authenticator).")
    return f


def _nist_attempts(e: Evidence) -> Finding:
    limit = e.config.throttle.hard_lock_after
    return Finding(_status(limit <= 100), [("hard lock after", f"{limit} consecutive failures "
                                                               "per account and factor")],
                   [("lockouts", e.count(kind="verification", outcome="locked"))])


# --------------------------------------------------------------------------- GDPR


def _gdpr_pseudonymise(e: Evidence) -> Finding:
    on = e.config.audit.pseudonymise_ips
    f = Finding(_status(on), [("audit.pseudonymise_ips", str(on).lower())],
                [("entries naming a client address", e.ip_named),
                 ("of which pseudonymised", e.ip_pseudonymised)])
    if not on:
        f.notes.append("Client IPs are stored in clear: set `audit.pseudonymise_ips: true` "
                       "(keyed HMAC, Art. 25 and 32).")
    elif e.ip_pseudonymised < e.ip_named:
        f.notes.append("Some entries of the period name clear IPs (written before the setting).")
    return f


def _gdpr_retention(e: Evidence) -> Finding:
    retention = e.config.audit.retention
    f = Finding("met" if retention is not None else "gap",
                [("audit.retention", "not set" if retention is None
                  else f"{retention / DAY:.0f} days, pruned behind signed checkpoints")])
    if retention is None:
        f.notes.append("No retention period: personal data in the ledger is kept forever "
                       "(Art. 5(1)(e)); set `audit.retention` and run `stepguard audit prune`.")
    return f


T = "tests/"
CONTROLS = (
    Control("PCI DSS v4.0.1", "8.4.1–8.4.3", "MFA for access into the cardholder data environment",
            "Per-route step-up rules demand aal2 (two factors) or aal3; the decision is taken on "
            "every request at the proxy (forward-auth), in the app (ASGI) or by the decision API.",
            (T + "integration/test_gateway.py::test_step_up_with_totp_then_allowed_then_stale_again",  # noqa: E501 (test ids)
             T + "integration/test_portal_account.py::test_the_admin_console_needs_the_admins_group_and_a_step_up"),  # noqa: E501 (test ids)
            _pci_8_4),
    Control("PCI DSS v4.0.1", "8.5.1", "MFA not replayable and not bypassable",
            "One-time codes accepted once (atomic), WebAuthn challenges single use and bound, "
            "grants bound to session, scope and transaction, fail closed when a store is down.",
            (T + "unit/test_factor_totp.py::test_the_same_code_twice_fails",
             T + "unit/test_factor_totp.py::test_fifty_concurrent_submissions_with_compare_and_set_give_one_success",  # noqa: E501 (test ids)
             T + "unit/test_factor_webauthn.py::test_replayed_challenge",
             T + "integration/test_binding.py::test_twenty_concurrent_requests_spend_a_single_use_grant_once",  # noqa: E501 (test ids)
             T + "unit/test_guard.py::test_a_store_outage_fails_closed_even_when_cached",
             T + "unit/test_shadow.py::test_a_report_rule_never_weakens_an_enforced_rule_below_it"),
            _pci_8_5),
    Control("PCI DSS v4.0.1", "10.2.1", "Audit logs capture access, failures, admin actions and "
            "credential changes",
            "Every decision (or a per-minute summary of plain allows), challenge, verification, "
            "enrolment, sign-in and admin action is an audit entry; nothing is dropped.",
            (T + "unit/test_guard.py::test_every_request_mode_seals_each_allow",
             T + "unit/test_guard.py::test_plain_allows_are_summarised_and_everything_else_is_its_own_entry",  # noqa: E501 (test ids)
             T + "fleet/test_faults.py::test_an_instance_stopped_under_load_loses_no_audit_entry_and_clients_keep_going"),  # noqa: E501 (test ids)
            _pci_10_2),
    Control("PCI DSS v4.0.1", "10.3.1–10.3.4", "Audit logs protected from change",
            "Hash-chained entries; `stepguard audit verify` names an edited, deleted, inserted "
            "or reordered entry; pruning leaves a signed checkpoint.",
            (T + "unit/test_audit_ledger.py::test_any_single_tampering_is_named_at_its_entry",
             T + "unit/test_audit_ledger.py::test_a_forged_checkpoint_fails"),
            _pci_10_3),
    Control("PCI DSS v4.0.1", "10.5.1", "Audit log history kept at least 12 months",
            "`audit.retention` bounds `stepguard audit prune`; pruned ledgers still verify.",
            (T + "integration/test_operations.py::test_audit_prune_keeps_a_verifiable_ledger",),
            _pci_10_5),
    Control("OWASP ASVS 5.0", "V6.3.1, V6.5.1, V6.5.5", "Brute force, one-time use, TOTP life",
            "Reserve-then-verify throttling with back-off and a hard lock; codes used once.",
            (T + "contract/test_throttle.py::test_concurrent_reservations_never_count_past_the_hard_limit",  # noqa: E501 (test ids)
             T + "integration/test_lockout.py::test_parallel_wrong_passwords_are_counted_before_they_are_verified",  # noqa: E501 (test ids)
             T + "unit/test_factor_totp.py::test_steps_two_or_more_away_fail"),
            _asvs_v6),
    Control("OWASP ASVS 5.0", "V7.2.4, V7.4, V7.5.1, V7.5.3", "Session tokens, termination, "
            "re-authentication and step-up for sensitive transactions",
            "Token rotated on every grant; revocation honoured on the next request; factor "
            "changes behind a fresh step-up; transaction-bound, single-use grants.",
            (T + "integration/test_gateway.py::test_the_pre_rotation_token_is_useless",
             T + "unit/test_guard.py::test_a_revocation_is_honoured_by_the_very_next_request",
             T + "integration/test_portal_account.py::test_recovery_codes_and_factor_removal_need_a_fresh_proof",  # noqa: E501 (test ids)
             T + "integration/test_binding.py::test_a_grant_for_100_to_bob_is_refused_for_10000_to_mallory"),  # noqa: E501 (test ids)
            _asvs_v7),
    Control("NIST SP 800-63B rev 4", "AAL2/AAL3 reauthentication", "Session lifetimes per level",
            "Each level's events expire after its absolute and idle lifetimes (`levels:`).",
            (T + "unit/test_decide.py::test_session_lifetimes_are_inclusive_at_their_limits",
             T + "unit/test_decide.py::test_idle_session_loses_its_level"),
            _nist_reauth),
    Control("NIST SP 800-63B rev 4", "AAL3 authenticators", "Phishing-resistant, verified",
            "aal3 rules accept device-bound passkeys (WebAuthn) with user verification only; "
            "a synced passkey proves aal2.",
            (T + "unit/test_factor_webauthn.py::test_uv_zero_where_required",
             T + "unit/test_factor_webauthn.py::test_wrong_origin",
             T + "integration/test_passkey_levels.py::"
                 "test_a_synced_passkey_is_aal2_and_never_passes_an_aal3_step_up"),
            _nist_aal3),
    Control("NIST SP 800-63B rev 4", "Rate limiting", "At most 100 consecutive failed attempts",
            "The per-account, per-factor ceiling hard-locks at `throttle.hard_lock_after` ≤ 100.",
            (T + "contract/test_throttle.py::test_account_key_hard_locks_at_one_hundred_and_never_forgets",),  # noqa: E501 (test ids)
            _nist_attempts),
    Control("GDPR", "Art. 25, 32", "Pseudonymised client addresses",
            "Client IPs in the ledger replaced by a keyed HMAC (not reversible without the key).",
            (T + "unit/test_audit_ledger.py::test_pseudonymised_ips_are_keyed_stable_and_canonical",),  # noqa: E501 (test ids)
            _gdpr_pseudonymise),
    Control("GDPR", "Art. 5(1)(e)", "Storage limitation",
            "Entries older than `audit.retention` are pruned behind a signed checkpoint.",
            (T + "integration/test_operations.py::test_audit_prune_keeps_a_verifiable_ledger",),
            _gdpr_retention),
)
