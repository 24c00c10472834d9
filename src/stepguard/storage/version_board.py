"""The version board: a shared-memory hint that lets a cached session skip its per-request read.

On one host (a SQLite store: every process that opens the database file is on this machine) the
decision's per-request read of a session's versions (`session_states`) can be replaced by a few
loads from shared memory. The board is a file beside the database (`<db>-stepguard-board`,
mapped by every process that opens the store) of `SLOTS` slots; a session id and a user id each
hash (CRC-32) to one slot. Each slot holds two counters, `begun` and `ended`:

* a write transaction that raises versions (`sql_base._apply_bumps`) adds 1 to `begun` of each
  touched slot **before** it commits, and 1 to `ended` **after** the commit (or rollback);
* a reader takes a `mark` of a cached entry's two slots — `ended` then `begun` of each — and
  gets `None` while any write on them is in flight (`begun != ended`), else the `ended` values.

A cached copy may be used without reading the store only if its recorded mark (taken *before*
the read that loaded or confirmed it) equals the current one. Why that honours every revocation
by the very next request: a write T that commits before a revoking call returns has begun before
its commit and ended before the call returned; a request that starts afterwards reads `ended`
larger than any mark recorded before T began, and a mark taken while T was in flight is `None`
(never recorded). So the copy's mark either predates T (it differs now → the store is read) or
was taken after T ended (then the read that followed it saw T's commit). A process that dies
between `begun` and `ended` leaves the slot "in flight" for good: sessions on it are read from
the store on every request (slower, never stale). Collisions only cost reads.

Counters are 64-bit words (read and written through a memoryview of the mapping as native
unsigned 64-bit words: one aligned load or store each), each written under a lock (a thread lock
and `flock` on the file across processes) and read lock-free; the argument above needs loads and
stores to stay in program order (x86-64's total store order; documented in docs/architecture.md).
A PostgreSQL fleet spans hosts: it has no board and reads versions on every request.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from stepguard.core.errors import StoreUnavailable

SLOTS = 1 << 16
_SLOT_WORDS = 2  # begun, ended
SIZE = SLOTS * _SLOT_WORDS * 8
_MAX = (1 << 64) - 1  # a counter wraps (after 2**64 writes) rather than fail
OFFSETS_REMEMBERED = 1 << 16  # ids whose slot offset a board remembers (then it starts afresh)

Mark = tuple[int, int]  # the `ended` counters of a session's slot and its user's slot


def slot_of(identifier: str) -> int:
    """The slot of a session or user id (the same in every process: CRC-32, not `hash`)."""
    return zlib.crc32(identifier.encode()) % SLOTS


class VersionBoard:
    """Per-slot `begun`/`ended` counters in memory shared by every process of one host."""

    def __init__(self, path: Path | None) -> None:
        """The board in the file `path` (created zeroed, mode 0600, when first used), or one
        for this process only (`None`: an in-memory database, which no other process opens)."""
        self.path = path
        self._memory: mmap.mmap | None = None
        self._words: memoryview | None = None  # the mapping as 64-bit words
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._offsets: dict[str, int] = {}  # id → its slot's first word (`_offset`)

    @classmethod
    def beside(cls, database: Path) -> VersionBoard:
        return cls(database.with_name(database.name + "-stepguard-board"))

    def _open(self) -> memoryview:
        """The mapping's words, opened on first use; an unopenable board is an unavailable
        store (a writer that cannot tell the board must not write: readers would miss its
        change)."""
        with self._lock:
            if self._words is None:
                if self.path is None:
                    self._memory = mmap.mmap(-1, SIZE)
                else:
                    try:
                        self._fd, self._memory = _map(self.path)
                    except OSError as error:
                        raise StoreUnavailable("the version board cannot be opened") from error
                self._words = memoryview(self._memory).cast("Q")
            return self._words

    # ------------------------------------------------------------------ readers

    def mark(self, session_id: str, user_id: str) -> Mark | None:
        """The current mark of a session's and its user's slots; None while a write is in flight
        on either."""
        words, offsets = self._words or self._open(), self._offsets
        s, u = offsets.get(session_id), offsets.get(user_id)
        if s is None or u is None:
            s, u = self._offset(session_id), self._offset(user_id)
        s_ended, u_ended = words[s + 1], words[u + 1]
        s_begun, u_begun = words[s], words[u]
        if s_begun != s_ended or u_begun != u_ended:
            return None
        return (s_ended, u_ended)

    def _offset(self, identifier: str) -> int:
        """The index of an id's slot's first word, remembered (a bounded memo: the
        per-request read hashes nothing for the ids it saw)."""
        offsets = self._offsets
        if len(offsets) >= OFFSETS_REMEMBERED:
            offsets.clear()
        found = offsets[identifier] = slot_of(identifier) * _SLOT_WORDS
        return found

    # ------------------------------------------------------------------ writers

    @contextmanager
    def writing(self, ids: Iterable[str]) -> Iterator[None]:
        """Around a commit that changes the versions of `ids` (sessions and users): `begun` up
        before, `ended` up after, whatever the commit's outcome."""
        slots = sorted({slot_of(i) for i in ids})
        if not slots:
            yield
            return
        self._add(slots, 0)
        try:
            yield
        finally:
            self._add(slots, 1)

    def _add(self, slots: list[int], word: int) -> None:
        """Add 1 to word `word` (0: begun, 1: ended) of each slot."""
        words = self._words or self._open()
        with self._lock:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                for slot in slots:
                    at = slot * _SLOT_WORDS + word
                    words[at] = (words[at] + 1) & _MAX
            finally:
                if self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._lock:
            if self._words is not None:
                self._words.release()  # the mapping closes only with no view left on it
                self._words = None
            if self._memory is not None:
                self._memory.close()
                self._memory = None
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _map(path: Path) -> tuple[int, mmap.mmap]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_size < SIZE:
                os.ftruncate(fd, SIZE)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return fd, mmap.mmap(fd, SIZE)
    except BaseException:
        os.close(fd)
        raise
