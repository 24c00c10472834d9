"""Password factor: argon2id at OWASP parameters, rehash on change, bounded pool off the loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from argon2 import extract_parameters

from stepguard.core.errors import Throttled, VerificationFailed
from stepguard.factors.password import (
    OWASP,
    PasswordCheck,
    PasswordPool,
    PasswordSettings,
    hash_password,
    verify_dummy,
    verify_password,
)

# Cheap parameters keep this file fast; one test below runs the real OWASP numbers.
FAST = PasswordSettings(memory_cost=1024, time_cost=1, parallelism=1)


def test_owasp_numbers() -> None:
    assert (OWASP.memory_cost, OWASP.time_cost, OWASP.parallelism) == (19456, 2, 1)
    assert PasswordSettings() == OWASP


def test_real_owasp_hash_is_argon2id_with_those_parameters_and_verifies() -> None:
    stored = hash_password("correct horse battery staple")
    params = extract_parameters(stored)
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert (params.memory_cost, params.time_cost, params.parallelism) == (19456, 2, 1)
    assert verify_password(
        stored_hash=stored, password="correct horse battery staple", settings=OWASP
    ) == PasswordCheck(rehash=None)
    with pytest.raises(VerificationFailed):
        verify_password(stored_hash=stored, password="Correct horse battery staple")


def test_right_password_passes_without_rehash() -> None:
    stored = hash_password("s3cret-enough", settings=FAST)
    assert (
        verify_password(stored_hash=stored, password="s3cret-enough", settings=FAST).rehash is None
    )


def test_wrong_password_raises_without_echoing_it() -> None:
    stored = hash_password("s3cret-enough", settings=FAST)
    with pytest.raises(VerificationFailed) as caught:
        verify_password(stored_hash=stored, password="guess-123", settings=FAST)
    assert caught.value.code == "wrong_password"
    assert "guess-123" not in str(caught.value)


def test_changed_parameters_return_a_rehash_that_verifies_under_the_new_ones() -> None:
    stronger = PasswordSettings(memory_cost=2048, time_cost=2, parallelism=1)
    stored = hash_password("s3cret-enough", settings=FAST)
    check = verify_password(stored_hash=stored, password="s3cret-enough", settings=stronger)
    assert check.rehash is not None and check.rehash != stored
    assert extract_parameters(check.rehash).memory_cost == 2048
    assert (
        verify_password(
            stored_hash=check.rehash, password="s3cret-enough", settings=stronger
        ).rehash
        is None
    )


def test_a_corrupt_stored_hash_fails_closed() -> None:
    with pytest.raises(VerificationFailed) as caught:
        verify_password(stored_hash="not-a-hash", password="whatever", settings=FAST)
    assert caught.value.code == "invalid_hash"


@pytest.mark.parametrize(("password", "code"), [("", "empty_password"), ("x" * 1025, "too_long")])
def test_empty_and_overlong_passwords_are_refused_before_hashing(password: str, code: str) -> None:
    stored = hash_password("s3cret-enough", settings=FAST)
    for call in (
        lambda: verify_password(stored_hash=stored, password=password, settings=FAST),
        lambda: hash_password(password, settings=FAST),
        lambda: verify_dummy(password, settings=FAST),
    ):
        with pytest.raises(VerificationFailed) as caught:
            call()
        assert caught.value.code == code


def test_1024_characters_are_accepted() -> None:
    password = "é" * 1024
    stored = hash_password(password, settings=FAST)
    verify_password(stored_hash=stored, password=password, settings=FAST)


def test_dummy_fails_like_a_wrong_password() -> None:
    stored = hash_password("s3cret-enough", settings=FAST)
    with pytest.raises(VerificationFailed) as wrong:
        verify_password(stored_hash=stored, password="guess", settings=FAST)
    with pytest.raises(VerificationFailed) as unknown:
        verify_dummy("guess", settings=FAST)
    assert (str(unknown.value), unknown.value.code) == (str(wrong.value), wrong.value.code)


def test_dummy_spends_about_the_time_of_a_real_check() -> None:
    settings = PasswordSettings(memory_cost=8192, time_cost=2, parallelism=1)
    stored = hash_password("s3cret-enough", settings=settings)
    with pytest.raises(VerificationFailed):
        verify_dummy("warm", settings=settings)  # builds the cached dummy hash

    def timed(call) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            with pytest.raises(VerificationFailed):
                call()
            best = min(best, time.perf_counter() - start)
        return best

    real = timed(lambda: verify_password(stored_hash=stored, password="guess", settings=settings))
    dummy = timed(lambda: verify_dummy("guess", settings=settings))
    assert 0.5 < dummy / real < 2.0


def test_pool_hashes_and_verifies() -> None:
    async def scenario() -> PasswordCheck:
        with PasswordPool(settings=FAST, max_workers=2) as pool:
            stored = await pool.hash("s3cret-enough")
            check = await pool.verify(stored_hash=stored, password="s3cret-enough")
            with pytest.raises(VerificationFailed):
                await pool.verify(stored_hash=stored, password="guess")
            with pytest.raises(VerificationFailed):
                await pool.verify_dummy("guess")
        return check

    assert asyncio.run(scenario()).rehash is None


def test_the_event_loop_keeps_running_while_a_hash_is_computed() -> None:
    settings = PasswordSettings(memory_cost=16384, time_cost=3, parallelism=1)

    async def scenario() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        with PasswordPool(settings=settings, max_workers=1) as pool:
            task = asyncio.create_task(ticker())
            await pool.hash("s3cret-enough")
            task.cancel()
        return ticks

    assert asyncio.run(scenario()) >= 3


def test_pool_is_bounded_and_throttles_beyond_its_queue() -> None:
    release = threading.Event()
    running = threading.Semaphore(0)

    async def scenario() -> tuple[int, int]:
        pool = PasswordPool(settings=FAST, max_workers=1, max_queued=2)
        original = pool._executor.submit

        def slow_submit(fn, *args, **kwargs):  # hold the worker until released
            def held():
                running.release()
                release.wait(5)
                return fn(*args, **kwargs)

            return original(held)

        pool._executor.submit = slow_submit  # type: ignore[method-assign]
        first = asyncio.create_task(pool.hash("one-password"))
        second = asyncio.create_task(pool.hash("two-password"))
        await asyncio.sleep(0.05)
        with pytest.raises(Throttled):
            await pool.hash("three-password")
        release.set()
        done = await asyncio.gather(first, second)
        pool.shutdown()
        return len(done), len(set(done))

    assert asyncio.run(scenario()) == (2, 2)


def test_pool_rejects_nonsense_sizes() -> None:
    with pytest.raises(ValueError):
        PasswordPool(max_workers=0)
    with pytest.raises(ValueError):
        PasswordPool(max_workers=4, max_queued=2)
