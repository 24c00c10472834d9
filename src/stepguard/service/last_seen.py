"""Last-seen times written behind the request, in batches.

A decision only notes that a session was seen (a dict assignment); a background thread writes
every noted session in one statement each `interval` seconds (`Sessions.touch_many`), and `close`
writes what is left. A crash loses at most `interval` seconds of last-seen updates: the session
then looks idle that much earlier, never later (fail closed). The instance that noted a touch
keeps the new time in its own cache at once.
"""

from __future__ import annotations

import logging
import threading

from stepguard.storage.interfaces import Sessions

log = logging.getLogger("stepguard")

Seen = tuple[str, float, str, str]  # session id, time, client ip, user agent


class LastSeenWriter:
    def __init__(self, sessions: Sessions, *, interval: float = 1.0) -> None:
        self._sessions = sessions
        self._interval = interval
        self._pending: dict[str, Seen] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stepguard-last-seen",
                                        daemon=True)
        self._thread.start()

    def note(self, session_id: str, *, now: float, ip: str, user_agent: str) -> None:
        with self._lock:
            self._pending[session_id] = (session_id, now, ip, user_agent)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        """Write every noted time now (a failure keeps them for the next attempt)."""
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            self._sessions.touch_many(batch.values())
        except Exception:
            with self._lock:  # keep what was not written, unless noted again since
                self._pending = {**batch, **self._pending}
            raise

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except Exception as error:  # the store is down: try again next interval
                log.warning("last-seen write failed (%s)", type(error).__name__)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.flush()
        except Exception as error:  # last-seen is advisory: never block shutdown on it
            log.warning("last-seen times not written at shutdown (%s)", type(error).__name__)
