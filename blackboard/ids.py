"""Ids and clocks: the only sources of time and randomness for the core.

Ids are ULIDs: 26 Crockford base32 characters, sortable by creation time, with
no dots, so they are safe subject tokens. Pure modules never call these; the
edges do and pass the values in.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime

from blackboard.log.ulid import ALPHABET as _ALPHABET
from blackboard.log.ulid import ulid_int

__all__ = ["new_id", "ulid_int", "utcnow"]

_lock = threading.Lock()
_last_ms = 0
_last_rand = 0


def _b32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_id() -> str:
    """Return a new ULID, monotonic within this process."""
    global _last_ms, _last_rand
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            # Same millisecond: increment the random part so ids stay sorted.
            ms = _last_ms
            rand = _last_rand + 1
        else:
            rand = int.from_bytes(os.urandom(10), "big")
        _last_ms, _last_rand = ms, rand & ((1 << 80) - 1)
        return _b32(ms, 10) + _b32(_last_rand, 16)


def utcnow() -> datetime:
    """Return the current time in UTC (the injected clock's default)."""
    return datetime.now(UTC)
