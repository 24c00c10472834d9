"""Password factor: argon2id hashing at OWASP parameters, checked off the event loop.

`verify_password` raises `VerificationFailed` on a wrong password and returns a `PasswordCheck`
whose `rehash` is a new hash to store when the stored one uses outdated parameters.
`verify_dummy` spends the same time for an unknown user and fails the same way, so the answer
does not reveal whether the account exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import NoReturn, TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from stepguard.core.errors import Throttled, VerificationFailed

REFUSAL = "wrong user name or password"  # the same words for unknown user and wrong password
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PasswordSettings:
    """argon2id cost parameters; defaults are OWASP's (m=19456 KiB, t=2, p=1)."""

    memory_cost: int = 19456  # KiB
    time_cost: int = 2
    parallelism: int = 1
    hash_len: int = 32
    salt_len: int = 16
    max_length: int = 1024  # characters; longer input is refused before hashing


OWASP = PasswordSettings()


@dataclass(frozen=True, slots=True)
class PasswordCheck:
    """A password that matched; `rehash` is a new hash to save when parameters changed."""

    rehash: str | None = None


def hash_password(password: str, *, settings: PasswordSettings = OWASP) -> str:
    """Hash a new password with argon2id (PHC string: algorithm, parameters, salt, hash)."""
    _check_length(password, settings)
    return _hasher(settings).hash(password)


def verify_password(
    *, stored_hash: str, password: str, settings: PasswordSettings = OWASP
) -> PasswordCheck:
    """Check `password` against `stored_hash`; raise `VerificationFailed` when it does not match."""
    _check_length(password, settings)
    hasher = _hasher(settings)
    try:
        hasher.verify(stored_hash, password)
    except InvalidHashError as exc:  # a corrupt stored hash: same answer, its own code
        raise VerificationFailed(REFUSAL, code="invalid_hash") from exc
    except VerificationError as exc:
        raise VerificationFailed(REFUSAL, code="wrong_password") from exc
    if hasher.check_needs_rehash(stored_hash):
        return PasswordCheck(rehash=hasher.hash(password))
    return PasswordCheck()


def verify_dummy(password: str, *, settings: PasswordSettings = OWASP) -> NoReturn:
    """Spend one verification's time for an unknown user, then fail like a wrong password."""
    _check_length(password, settings)
    with contextlib.suppress(VerificationError, InvalidHashError):
        _hasher(settings).verify(_dummy_hash(settings), password)
    raise VerificationFailed(REFUSAL, code="wrong_password")


def _check_length(password: str, settings: PasswordSettings) -> None:
    if not password:
        raise VerificationFailed("the password is empty", code="empty_password")
    if len(password) > settings.max_length:
        raise VerificationFailed(
            f"the password is longer than {settings.max_length} characters", code="too_long"
        )


@functools.lru_cache(maxsize=8)
def _hasher(settings: PasswordSettings) -> PasswordHasher:
    return PasswordHasher(
        time_cost=settings.time_cost,
        memory_cost=settings.memory_cost,
        parallelism=settings.parallelism,
        hash_len=settings.hash_len,
        salt_len=settings.salt_len,
        type=Type.ID,
    )


@functools.lru_cache(maxsize=8)
def _dummy_hash(settings: PasswordSettings) -> str:
    # A hash of a random value nobody knows; only its cost matters.
    return _hasher(settings).hash(secrets.token_urlsafe(32))


class PasswordPool:
    """Runs argon2id in a bounded thread pool so the event loop never blocks on a hash.

    At most `max_workers` hashes run at once and at most `max_queued` calls wait for a worker;
    beyond that a call raises `Throttled` at once instead of queueing without bound.
    """

    def __init__(
        self,
        *,
        settings: PasswordSettings = OWASP,
        max_workers: int = 2,
        max_queued: int = 32,
        retry_after: float = 1.0,
    ) -> None:
        if max_workers < 1 or max_queued < max_workers:
            raise ValueError("need max_workers >= 1 and max_queued >= max_workers")
        self.settings = settings
        self.retry_after = retry_after
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="argon2")
        self._slots = asyncio.Semaphore(max_queued)

    async def verify(self, *, stored_hash: str, password: str) -> PasswordCheck:
        """`verify_password` on a worker thread."""
        call = functools.partial(
            verify_password, stored_hash=stored_hash, password=password, settings=self.settings
        )
        return await self._run(call)

    async def verify_dummy(self, password: str) -> None:
        """`verify_dummy` on a worker thread (always raises `VerificationFailed`)."""
        await self._run(functools.partial(verify_dummy, password, settings=self.settings))

    async def hash(self, password: str) -> str:
        """`hash_password` on a worker thread."""
        return await self._run(functools.partial(hash_password, password, settings=self.settings))

    def shutdown(self) -> None:
        """Wait for running hashes and stop the workers."""
        self._executor.shutdown(wait=True)

    def __enter__(self) -> PasswordPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    async def _run(self, call: functools.partial[T]) -> T:
        if self._slots.locked():
            raise Throttled(self.retry_after)
        async with self._slots:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, call)
