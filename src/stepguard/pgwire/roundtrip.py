"""The shape of one extended-protocol round trip and of the server's whole answer to it.

The round trip is libpq's `PQexecParams` (psycopg, `pgbench -M extended`): Parse of the unnamed
statement, Bind of the unnamed portal to it, Describe and Execute (all rows) of that portal,
Sync — in one delivery. The whole answer is ParseComplete, BindComplete, a row description or
NoData, rows, CommandComplete and ReadyForQuery, and nothing else (no error, notice,
notification or setting among them). The door's short path (`session.Connection._cycle` and
`_cycle_answer`) reads both with these two functions.

Pure functions over bytes, typed for mypyc: `scripts/accelerate.py` compiles this module in
place (the same source; the compiled module is what `import` finds first), and without a
compiler it runs as Python. Both are tested to give the same answers (tests/unit).
"""

from __future__ import annotations

from typing import Final

# Describe and Execute (all rows) of the unnamed portal, then Sync.
CYCLE_TAIL: Final = b"D\x00\x00\x00\x06P\x00E\x00\x00\x00\x09\x00\x00\x00\x00\x00S\x00\x00\x00\x04"
PARSED_BOUND: Final = b"1\x00\x00\x00\x042\x00\x00\x00\x04"  # ParseComplete, BindComplete
_TAIL_SIZE: Final = len(CYCLE_TAIL)
_READY_SIZE: Final = 6  # ReadyForQuery: type, length 5, status


def length_at(data: bytes, pos: int) -> int:
    """The message length (big-endian, four bytes) at `pos`."""
    return (data[pos] << 24) | (data[pos + 1] << 16) | (data[pos + 2] << 8) | data[pos + 3]


def round_trip(data: bytes, limit: int) -> int:
    """The end of the Parse when `data` is exactly one round trip whose Bind body (at most
    `limit` bytes) names the unnamed portal and statement; else 0. The Parse itself is not
    read: the caller compares it whole with one it read before."""
    size = len(data)
    if size < 40 or data[0] != 80:  # P
        return 0
    end = 1 + length_at(data, 1)
    if end < 5 or size < end + 7 or data[end] != 66:  # B
        return 0
    length = length_at(data, end + 1)
    if (length < 6 or length - 4 > limit or data[end + 5] != 0 or data[end + 6] != 0
            or size - (end + 1 + length) != _TAIL_SIZE or not data.endswith(CYCLE_TAIL)):
        return 0
    return end


def whole_answer(data: bytes) -> bool:
    """`data` is exactly the server's whole answer to one round trip (above)."""
    size = len(data)
    last = size - _READY_SIZE
    if (size < 27 or not data.startswith(PARSED_BOUND) or data[last] != 90  # Z
            or length_at(data, last + 1) != 5):
        return False
    pos = 10
    if data[pos] != 84 and data[pos] != 110:  # T: the row description, n: NoData
        return False
    pos += 1 + length_at(data, pos + 1)
    while pos < last and data[pos] == 68:  # D: a row
        pos += 1 + length_at(data, pos + 1)
    if pos >= last or data[pos] != 67:  # C: CommandComplete
        return False
    return pos + 1 + length_at(data, pos + 1) == last
