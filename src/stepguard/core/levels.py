"""Assurance levels (NIST SP 800-63B rev 4) and RFC 8176 `amr` values per factor."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Level(IntEnum):
    """Authenticator assurance level; ordered so that a higher level satisfies a lower one."""

    AAL0 = 0  # anonymous: no session at all
    AAL1 = 1
    AAL2 = 2
    AAL3 = 3

    @property
    def label(self) -> str:
        return f"aal{int(self)}"

    @classmethod
    def parse(cls, text: str) -> Level:
        """Parse `aal1`..`aal3` (or `aal0`); raise ValueError otherwise."""
        value = text.strip().lower()
        if value.startswith("aal") and value[3:].isdigit() and 0 <= int(value[3:]) <= 3:
            return cls(int(value[3:]))
        raise ValueError(f"unknown assurance level {text!r} (expected aal1, aal2 or aal3)")


# RFC 8176 Authentication Method Reference values, per factor.
FACTOR_AMR: dict[str, tuple[str, ...]] = {
    "password": ("pwd",),
    "totp": ("otp",),
    "webauthn": ("hwk", "user"),
    "recovery": ("kba",),
    "push": ("mca",),
}

# The five factors Stepguard offers (SMS is deliberately absent; see docs/security.md).
FACTORS: tuple[str, ...] = tuple(FACTOR_AMR)


@dataclass(frozen=True, slots=True)
class LevelSettings:
    """Per-level acr URI and session lifetimes (seconds)."""

    acr: str
    max_session: float
    idle: float


def default_level_settings() -> dict[Level, LevelSettings]:
    """NIST SP 800-63B rev 4 defaults: aal2 24 h / 1 h idle, aal3 12 h / 15 min idle."""
    return {
        Level.AAL1: LevelSettings("urn:stepguard:aal1", 30 * 86400.0, 30 * 86400.0),
        Level.AAL2: LevelSettings("urn:stepguard:aal2", 24 * 3600.0, 3600.0),
        Level.AAL3: LevelSettings("urn:stepguard:aal3", 12 * 3600.0, 900.0),
    }
