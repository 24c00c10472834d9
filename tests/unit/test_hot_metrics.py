"""The per-request counters and histogram: exposed as prometheus-client exposes its own, and
every thread's counts added up at scrape time (none lost)."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, generate_latest

from stepguard.service.hot_metrics import FastCounter, FastHistogram


def test_counts_from_many_threads_all_arrive() -> None:
    registry = CollectorRegistry()
    counter = FastCounter("demo_total", "Demo", ["result"], registry)

    def work() -> None:
        for _ in range(5000):
            counter.inc("hit")
        counter.inc("miss")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    text = generate_latest(registry).decode()
    assert 'demo_total{result="hit"} 20000.0' in text
    assert 'demo_total{result="miss"} 4.0' in text
    assert "# TYPE demo_total counter" in text and counter.value("hit") == 20000


def test_the_histogram_is_cumulative_with_sum_and_count() -> None:
    registry = CollectorRegistry()
    histogram = FastHistogram("demo_seconds", "Demo", (0.001, 0.01), registry)
    for value in (0.0005, 0.001, 0.005, 2.0):
        histogram.observe(value)
    text = generate_latest(registry).decode()
    for line in ('demo_seconds_bucket{le="0.001"} 2.0', 'demo_seconds_bucket{le="0.01"} 3.0',
                 'demo_seconds_bucket{le="+Inf"} 4.0', "demo_seconds_count 4.0",
                 "demo_seconds_sum 2.0065"):
        assert line in text


def test_a_counter_added_to_at_once_counts_as_many() -> None:
    registry = CollectorRegistry()
    counter = FastCounter("stepguard_test_total", "test", ["outcome"], registry)
    counter.inc("allow")
    counter.add(4, "allow")
    assert counter.value("allow") == 5
