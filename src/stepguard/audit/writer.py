"""The audit writer: entries leave the request's hot path but are never dropped.

`submit` puts an event on a bounded queue and returns; a background thread drains the queue in
batches through the sink's `append_many` (sealing happens there, in that thread). Events built
with `AuditEvent.unchecked` (the per-request decisions) are submitted with `checked=False`: the
thread applies their checks and redaction before anything is sealed, spilled or logged. With an
`AllowSummary`, the thread also turns each closed interval of plain allows into one entry (a
flush or a clean stop closes the open ones). When the queue is full, `submit` blocks (the request
waits rather than losing its audit entry). When the store is down, the thread keeps the batch and
retries with capped exponential back-off until the store returns; `flush` and `close` wait for
everything submitted to be written, and say so (raise) if it was not.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from stepguard.audit.ledger import AuditEntry, AuditEvent, AuditKind
from stepguard.audit.summary import AllowSummary
from stepguard.core.errors import StoreUnavailable

log = logging.getLogger("stepguard.audit")


class AuditSink(Protocol):
    """Where the writer puts batches (`SqlAuditLog` is one): all events in one transaction."""

    def append_many(self, events: Sequence[AuditEvent]) -> list[AuditEntry]: ...


def _log_error(error: Exception, retry_in: float) -> None:
    # The error's class only: driver messages may quote statements or parameters.
    log.warning("audit write failed (%s); retrying in %.2fs", type(error).__name__, retry_in)


class AuditWriter:
    """A bounded queue plus one background thread that writes batches to an `AuditSink`."""

    def __init__(
        self,
        sink: AuditSink,
        *,
        capacity: int = 10_000,
        batch_size: int = 256,
        retry_initial: float = 0.05,
        retry_max: float = 5.0,
        linger: float = 0.02,
        on_error: Callable[[Exception, float], None] = _log_error,
        summary: AllowSummary | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if capacity < 1 or batch_size < 1:
            raise ValueError("capacity and batch_size must be at least 1")
        self._sink = sink
        self._capacity = capacity
        self._batch_size = batch_size
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._linger = linger
        self._flushing = 0
        self._on_error = on_error
        self.summary = summary
        self._clock = clock
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._progress = threading.Condition(self._lock)
        self._queue: deque[AuditEvent | _Unchecked] = deque()
        self._in_flight: list[AuditEvent | _Unchecked] = []
        self._submitted = 0
        self._written = 0
        self._closing = False
        self._abandoned = threading.Event()
        self._last_error: Exception | None = None
        self._holders: list[Callable[[], None]] = []  # see `counts_held_by`
        self._thread = threading.Thread(target=self._run, name="stepguard-audit", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producers

    def submit(self, event: AuditEvent, *, timeout: float | None = None,
               checked: bool = True) -> None:
        """Queue the event; block while the queue is full (raise `StoreUnavailable` on timeout).
        `checked=False`: an `AuditEvent.unchecked` event, checked in the writer's thread."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._not_full:
            while self._accepting() and len(self._queue) >= self._capacity:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise StoreUnavailable("the audit queue is full and not draining")
                self._not_full.wait(remaining)
            self._enqueue(event if checked else _Unchecked(event))

    async def asubmit(self, event: AuditEvent) -> None:
        """`submit` for async code: never blocks the event loop, even when the queue is full."""
        with self._lock:
            if self._accepting() and len(self._queue) < self._capacity:
                self._enqueue(event)
                return
        await asyncio.to_thread(self.submit, event)

    def _accepting(self) -> bool:
        if self._closing:
            raise StoreUnavailable("the audit writer is closed")
        return True

    def _enqueue(self, event: AuditEvent | _Unchecked) -> None:
        self._queue.append(event)
        self._submitted += 1
        # Wake the writer only when it may be idle (the first entry) or its batch is full: a
        # lingering writer woken by every entry costs a thread switch per decision.
        if len(self._queue) == 1 or len(self._queue) >= self._batch_size:
            self._not_empty.notify()

    # ------------------------------------------------------------------ waiting

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything submitted so far is written; raise `StoreUnavailable` if not."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._close_summaries()
        with self._progress:
            target = self._submitted
            self._flushing += 1
            self._not_empty.notify_all()  # stop lingering: write what is queued now
            try:
                while self._written < target and not self._abandoned.is_set():
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self._progress.wait(remaining)
            finally:
                self._flushing -= 1
            missing = target - self._written
        if missing > 0:
            raise StoreUnavailable(f"{missing} audit entries are not written yet")

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting events and write everything queued.

        If that does not finish within `timeout` (the store stays down), the thread stops and
        `StoreUnavailable` is raised; the events that were not written stay in `unwritten()`.
        """
        self._close_summaries()
        with self._lock:
            self._closing = True
            self._not_empty.notify_all()
            self._not_full.notify_all()
        try:
            self.flush(timeout)
        except StoreUnavailable:
            self._abandoned.set()
            with self._lock:
                self._not_empty.notify_all()
            self._thread.join()
            raise StoreUnavailable(
                f"{len(self.unwritten())} audit entries could not be written"
            ) from None
        self._thread.join()

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ state

    @property
    def backlog(self) -> int:
        """Events submitted but not yet written (read without the lock: a threshold check on
        every decision, where a count one write old is as good)."""
        return self._submitted - self._written

    @property
    def last_error(self) -> Exception | None:
        """The error of the most recent failed write, or None once a write succeeds again."""
        return self._last_error

    def unwritten(self) -> list[AuditEvent]:
        """Events not (yet) written, oldest first: after a failed `close`, what must be saved."""
        with self._lock:
            pending = [*self._in_flight, *self._queue]
        return [_ready(item) for item in pending]

    # ------------------------------------------------------------------ summaries

    def wake(self) -> None:
        """Have the thread look at the summary now (counts arrived for an interval that may
        have closed while they were held)."""
        with self._not_empty:
            self._not_empty.notify_all()

    def counts_held_by(self, hand_over: Callable[[], None]) -> None:
        """Register a holder of allow counts not yet given to the summary (the database
        door's loop turn holds them up to a second): every flush and close calls `hand_over`
        first, on its own thread, so what it holds is in the entries they write."""
        self._holders.append(hand_over)

    def _close_summaries(self) -> None:
        """Queue an entry for every open summary interval (a flush or a clean stop), after
        the holders of counts handed theirs over."""
        for hand_over in list(self._holders):
            hand_over()
        if self.summary is not None:
            self._queue_summaries(self.summary.drain())

    def _due_summaries(self) -> None:
        if self.summary is not None:
            self._queue_summaries(self.summary.due(self._clock()))

    def _queue_summaries(self, events: list[AuditEvent]) -> None:
        if not events:
            return
        with self._lock:
            if self._closing and self._abandoned.is_set():
                return
            for event in events:
                self._enqueue(event)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch or not self._write(batch):
                return
            with self._lock:
                self._in_flight = []
                self._written += len(batch)
                self._progress.notify_all()

    def _take(self) -> list[AuditEvent | _Unchecked]:
        self._due_summaries()
        with self._not_empty:
            while not self._queue and not self._closing:
                if not self._not_empty.wait(self._until_summary()):
                    self._not_empty.release()  # write the intervals that closed meanwhile
                    try:
                        self._due_summaries()
                    finally:
                        self._not_empty.acquire()
            # Linger briefly so that a busy gateway writes many entries per transaction (one
            # entry per transaction costs ~1 ms; a batch ~60 µs an entry). A flush or close
            # does not wait.
            deadline = time.monotonic() + self._linger
            while (len(self._queue) < self._batch_size and not self._closing
                   and not self._flushing and (left := deadline - time.monotonic()) > 0):
                self._not_empty.wait(left)
            if self._abandoned.is_set():
                return []
            count = min(self._batch_size, len(self._queue))
            self._in_flight = [self._queue.popleft() for _ in range(count)]
            self._not_full.notify_all()
            return list(self._in_flight)

    def _until_summary(self) -> float | None:
        """How long the idle thread may sleep: until the oldest open interval closes (or one
        interval, to see intervals opened meanwhile)."""
        if self.summary is None:
            return None
        due = self.summary.next_due()
        if due is None:
            return self.summary.interval
        return min(self.summary.interval, max(0.01, due - self._clock()))

    def _write(self, pending: list[AuditEvent | _Unchecked]) -> bool:
        """Write the batch, retrying until it succeeds; False if the writer was abandoned."""
        batch = [_ready(item) for item in pending]
        delay = self._retry_initial
        while not self._abandoned.is_set():
            try:
                self._sink.append_many(batch)
            except Exception as error:  # any failure: keep the batch and try again
                self._last_error = error
                self._report(error, delay)
                self._abandoned.wait(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            self._last_error = None
            return True
        return False

    def _report(self, error: Exception, delay: float) -> None:
        try:
            self._on_error(error, delay)
        except Exception:  # a failing callback must not stop the writer
            log.exception("audit writer error callback failed")


class _Unchecked:
    """An `AuditEvent.unchecked` event waiting for its checks (done in the writer's thread)."""

    __slots__ = ("event",)

    def __init__(self, event: AuditEvent) -> None:
        self.event = event


def _ready(item: AuditEvent | _Unchecked) -> AuditEvent:
    """The event as it may be sealed: checked, or (when it breaks a rule) an entry saying so."""
    if isinstance(item, AuditEvent):
        return item
    try:
        return item.event.checked()
    except (ValueError, TypeError) as error:
        log.error("audit event refused by its checks (%s); recorded as unrecordable",
                  type(error).__name__)
        at = item.event.at if isinstance(item.event.at, float) else 0.0
        return AuditEvent(at=at if at == at and abs(at) != float("inf") else 0.0,
                          kind=AuditKind.DECISION, outcome="unrecordable",
                          detail={"error": type(error).__name__})
