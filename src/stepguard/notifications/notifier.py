"""The notifier: audit events in, notices out on every configured channel, off the hot path.

`offer(event)` (called by `Runtime.record` for each checked audit event) costs a dict lookup for
events that are not notices and a queue put for those that are; each channel (email, each
webhook, syslog) has its own bounded queue and thread, so a slow or failing receiver delays
only itself. A full queue drops the notice (counted and logged): the audit ledger, not the
notices, is the record. Emails to one address about one kind of event are sent at most once per
`EMAIL_QUIET` seconds (no mail bombing through push floods or denied requests); webhooks and
syslog get every notice.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from stepguard.audit.ledger import AuditEvent
from stepguard.config.schema import NotificationsSection, WebhookChannel
from stepguard.notifications import mail
from stepguard.notifications.notice import Notice, notice_for, notice_kind
from stepguard.notifications.syslog import SyslogSink, json_line, rfc5424
from stepguard.notifications.webhook import DeadLetter, Webhook

log = logging.getLogger("stepguard.notifications")
EMAIL_QUIET = 600.0
_STOP = object()


class _Channel:
    """One bounded queue and one thread calling `handle(event_id, notice)` per notice."""

    def __init__(self, name: str, handle: Callable[[str, Notice], None], capacity: int,
                 counter: Any) -> None:
        self.name, self._handle, self._counter = name, handle, counter
        self._queue: queue.Queue[Any] = queue.Queue(capacity)
        self._thread = threading.Thread(target=self._run, name=f"stepguard-notify-{name}",
                                        daemon=True)
        self._thread.start()

    def put(self, item: tuple[str, Notice]) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._counter.labels(self.name, "dropped").inc()
            log.warning("notification queue %s is full: notice dropped", self.name)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                self._handle(*item)
            except Exception as exc:  # a channel never dies of one notice
                self._counter.labels(self.name, "failed").inc()
                log.warning("notification via %s failed (%s)", self.name, type(exc).__name__)
            finally:
                self._queue.task_done()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self, timeout: float) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout)
        self._thread.join(timeout)


class Notifier:
    def __init__(self, settings: NotificationsSection, *, email_of: Callable[[str], str],
                 portal: str, dead_letter: Callable[[DeadLetter], None],
                 registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.enabled = frozenset(settings.events)
        self.counter = Counter("stepguard_notifications_total",
                               "Security notices by channel and result (sent, failed, dropped, "
                               "suppressed, dead_letter)", ["channel", "result"],
                               registry=registry)
        self._email_of, self._portal, self._clock = email_of, portal, clock
        self._dead = dead_letter
        self._sent: dict[tuple[str, str], float] = {}
        self._hostname = socket.gethostname()
        self.channels: list[tuple[_Channel, frozenset[str]]] = []
        capacity = settings.queue
        if settings.email.smtp_host:
            self._add("email", self._email, capacity, self.enabled)
        for i, hook in enumerate(settings.webhooks):
            webhook = self._webhook(hook, sleep)
            self._add(f"webhook{i}", _deliver(webhook, self.counter, f"webhook{i}"), capacity,
                      frozenset(hook.events) or self.enabled)
        self._sinks = [SyslogSink(address, newline=settings.syslog.format == "json")
                       for address in (settings.syslog.address,
                                       f"file:{settings.syslog.file}" if settings.syslog.file
                                       else "") if address]
        if self._sinks:
            self._add("syslog", self._send_syslog, capacity, self.enabled)

    @property
    def active(self) -> bool:
        return bool(self.channels)

    def _add(self, name: str, handle: Callable[[str, Notice], None], capacity: int,
             kinds: frozenset[str]) -> None:
        self.channels.append((_Channel(name, handle, capacity, self.counter), kinds))

    def _webhook(self, hook: WebhookChannel, sleep: Callable[[float], None]) -> Webhook:
        return Webhook(url=hook.url, secret=hook.secret.encode(), timeout=hook.timeout,
                       retries=hook.retries, backoff=hook.backoff, max_backoff=hook.max_backoff,
                       dead=self._dead_letter, sleep=sleep, clock=self._clock)

    # ------------------------------------------------------------------ producers

    def offer(self, event: AuditEvent) -> None:
        """Queue the notice this audit event makes, if any, on every channel that wants it."""
        kind = notice_kind(event)
        if not kind or kind not in self.enabled:
            return
        if event.kind == "admin" and event.outcome == "notification_failed":
            return  # a failed notice is audited, never notified (no loop)
        item = (uuid.uuid4().hex, notice_for(event, kind))
        for channel, kinds in self.channels:
            if kind in kinds:
                channel.put(item)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait (up to `timeout`) until every queued notice was handled."""
        for channel, _ in self.channels:
            channel.join(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        for channel, _ in self.channels:
            channel.stop(1.0)
        for sink in self._sinks:
            sink.close()

    # ------------------------------------------------------------------ channels

    def _email(self, event_id: str, notice: Notice) -> None:
        settings = self.settings.email
        to = list(settings.operators)
        if settings.notify_users and notice.to_user and notice.subject:
            address = self._email_of(notice.subject)
            if address and address not in to:
                to.append(address)
        to = [a for a in to if self._quiet_over(a, notice)]
        if not to:
            self.counter.labels("email", "suppressed").inc()
            return
        mail.send(settings, mail.message(notice, sender=settings.sender, to=to,
                                         portal=self._portal))
        self.counter.labels("email", "sent").inc()

    def _quiet_over(self, address: str, notice: Notice) -> bool:
        key, now = (address, notice.kind), self._clock()
        last = self._sent.get(key)
        if last is not None and now - last < EMAIL_QUIET:
            return False
        if len(self._sent) > 100_000:
            self._sent.clear()
        self._sent[key] = now
        return True

    def _send_syslog(self, event_id: str, notice: Notice) -> None:
        s = self.settings.syslog
        line = (json_line(notice, event_id=event_id, hostname=self._hostname)
                if s.format == "json" else
                rfc5424(notice, facility=s.facility, app_name=s.app_name,
                        hostname=self._hostname, event_id=event_id))
        for sink in self._sinks:
            sink.send(line)
        self.counter.labels("syslog", "sent").inc()

    def _dead_letter(self, letter: DeadLetter) -> None:
        self.counter.labels("webhook", "dead_letter").inc()
        self._dead(letter)


def _deliver(webhook: Webhook, counter: Any, name: str) -> Callable[[str, Notice], None]:
    def handle(event_id: str, notice: Notice) -> None:
        if webhook.deliver(event_id, notice.kind, notice.as_json()):
            counter.labels(name, "sent").inc()
    return handle
