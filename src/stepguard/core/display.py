"""How the policy's declared attributes are shown to people: a label per language and, for
amounts, a currency (ISO 4217). Pure: parsed from the policy document, read by the portal.

    attributes:
      amount: {type: number, label: {en: Amount, de: Betrag}, currency: EUR}
      payee: {type: string, label: Payee}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DISPLAY_KEYS = frozenset({"type", "label", "currency"})


@dataclass(frozen=True, slots=True)
class AttributeDisplay:
    """Labels by language code ("" = any language) and a currency code ("" = none)."""

    labels: Mapping[str, str] = field(default_factory=dict)
    currency: str = ""

    def label(self, name: str, language: str = "en") -> str:
        """The label in `language`, else the language-free or English one, else the name."""
        return (self.labels.get(language) or self.labels.get("") or self.labels.get("en")
                or name.replace("_", " ").capitalize())


def parse_display(spec: Mapping[str, Any]) -> tuple[AttributeDisplay | None, list[str]]:
    """The display part of an attribute's mapping form, and what is wrong with it."""
    problems = [f"unknown key {key!r} (expected {', '.join(sorted(DISPLAY_KEYS))})"
                for key in spec if key not in DISPLAY_KEYS]
    label = spec.get("label", {})
    labels: dict[str, str] = {}
    if isinstance(label, str):
        labels[""] = label
    elif isinstance(label, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in label.items()):
        labels.update({str(k).lower(): str(v) for k, v in label.items()})
    else:
        problems.append("label: expected text, or a mapping of language codes to text")
    currency = spec.get("currency", "")
    if not (isinstance(currency, str) and (currency == "" or (
            len(currency) == 3 and currency.isalpha() and currency.isupper()))):
        problems.append(f"currency: expected an ISO 4217 code such as EUR, got {currency!r}")
        currency = ""
    if problems:
        return None, problems
    return AttributeDisplay(labels, currency), []
