"""ULIDs as numbers. Pure: making a new one needs the clock (blackboard.ids)."""

from __future__ import annotations

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
"""Crockford's base32, the ULID alphabet."""


def ulid_int(value: str) -> int:
    """The 128-bit integer a ULID encodes; ValueError if it is not one."""
    if len(value) != 26:
        raise ValueError(f"not a ULID: {value!r}")
    out = 0
    for ch in value.upper():
        digit = ALPHABET.find(ch)
        if digit < 0:
            raise ValueError(f"not a ULID: {value!r}")
        out = out << 5 | digit
    return out & ((1 << 128) - 1)
