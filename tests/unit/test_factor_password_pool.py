"""Password pool limits: two `argon2_*` workers and 32 waiting calls by default, throttling with
a one-second retry beyond that, shutdown that waits for running hashes, and the pool's own
settings applied to the dummy check."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager

import pytest

from stepguard.core.errors import Throttled, VerificationFailed
from stepguard.factors.password import REFUSAL, PasswordPool, PasswordSettings
from tests.unit.test_factor_password import FAST


@contextmanager
def held_workers(pool: PasswordPool) -> Iterator[list[str]]:
    """Inside the block every job records its worker thread's name and waits; leaving releases."""
    release = threading.Event()
    started: list[str] = []
    submit = pool._executor.submit

    def held_submit(
        fn: Callable[..., object], /, *args: object, **kwargs: object
    ) -> Future[object]:
        def held() -> object:
            started.append(threading.current_thread().name)
            release.wait(5)
            return fn(*args, **kwargs)

        return submit(held)

    pool._executor.submit = held_submit  # type: ignore[method-assign,assignment]
    try:
        yield started
    finally:
        release.set()


async def until(condition: Callable[[], object]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


def test_default_pool_runs_two_argon2_workers_queues_32_and_throttles_the_33rd() -> None:
    async def scenario() -> tuple[list[str], float]:
        pool = PasswordPool(settings=FAST)
        with pool, held_workers(pool) as started:
            tasks = [asyncio.create_task(pool.hash(f"password-{i}")) for i in range(32)]
            await until(lambda: len(started) >= 2)
            await asyncio.sleep(0.1)  # room for a third worker, if there were one
            running = sorted(started)
            with pytest.raises(Throttled) as caught:
                await asyncio.wait_for(pool.hash("one-too-many"), 1)
        await asyncio.gather(*tasks)
        return running, caught.value.retry_after

    assert asyncio.run(scenario()) == (["argon2_0", "argon2_1"], 1.0)


def test_one_worker_means_one_hash_at_a_time() -> None:
    async def scenario() -> list[str]:
        pool = PasswordPool(settings=FAST, max_workers=1, max_queued=3)
        with pool, held_workers(pool) as started:
            tasks = [asyncio.create_task(pool.hash(f"password-{i}")) for i in range(3)]
            await until(lambda: started)
            await asyncio.sleep(0.1)
            running = list(started)
        await asyncio.gather(*tasks)
        return running

    assert asyncio.run(scenario()) == ["argon2_0"]


def test_a_queue_as_long_as_the_worker_count_is_allowed() -> None:
    PasswordPool(settings=FAST, max_workers=2, max_queued=2).shutdown()
    with pytest.raises(ValueError) as caught:
        PasswordPool(max_workers=2, max_queued=1)
    assert str(caught.value) == "need max_workers >= 1 and max_queued >= max_workers"


def test_shutdown_waits_for_a_running_hash() -> None:
    async def scenario() -> tuple[bool, bool]:
        pool = PasswordPool(settings=FAST, max_workers=1, max_queued=1)
        closer = threading.Thread(target=pool.shutdown)
        with held_workers(pool) as started:
            task = asyncio.create_task(pool.hash("s3cret-enough"))
            await until(lambda: started)
            closer.start()
            await asyncio.sleep(0.1)
            waited = closer.is_alive()
        await task
        closer.join(5)
        return waited, closer.is_alive()

    assert asyncio.run(scenario()) == (True, False)


def test_the_pool_dummy_check_fails_like_a_wrong_password_under_the_pool_settings() -> None:
    short = PasswordSettings(memory_cost=1024, time_cost=1, parallelism=1, max_length=8)

    async def scenario() -> list[tuple[str, str]]:
        refusals = []
        with PasswordPool(settings=short) as pool:
            for password in ("guess", "x" * 9):
                with pytest.raises(VerificationFailed) as caught:
                    await pool.verify_dummy(password)
                refusals.append((caught.value.code, caught.value.reason))
        return refusals

    assert asyncio.run(scenario()) == [
        ("wrong_password", REFUSAL),
        ("too_long", "the password is longer than 8 characters"),
    ]
