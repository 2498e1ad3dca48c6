"""Fleet-wide rate limits as a generic cell rate algorithm (GCRA). Pure.

One model's limits are one small state shared by every worker process of
the deployment (agents/fleet.py keeps it in the key-value bucket and writes
it by compare-and-set): when the next request may go (``tat_req``, its
theoretical arrival time), when the tokens spent so far are paid for
(``tat_tok``), and until when a 429 stops everyone (``blocked_until``). A
caller reserves its slot and sleeps until it; the reservation is the write,
so N processes queue on one timeline.

No burst: requests are spaced ``60 / rpm * (1 + HEADROOM)`` apart, so at
most ``rpm`` requests start in any 60 s window, not only on average. The
headroom (1%) absorbs what happens between a slot and the provider seeing
the request (a sleep that wakes late, then an early one): up to 0.6 s at
``rpm = 60``. Tokens are spaced the same way, each request's estimate
taking ``estimate * 60 / tpm * (1 + HEADROOM)`` seconds of the token
timeline, charged when it starts and corrected once its usage is known
(:func:`adjust`). So tokens go at most at ``tpm`` per minute on average, and
no 60 s window holds more than ``tpm`` plus the request that starts it,
which a provider's own token bucket (a minute's worth) always accepts.

Times are wall-clock POSIX seconds, since they are compared across hosts:
the hosts' clocks must agree (NTP). A host whose clock runs ahead by ``d``
seconds may send up to ``d`` early; keep ``d`` well under ``60 / rpm``.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "HEADROOM",
    "LimitState",
    "Limits",
    "acquire",
    "adjust",
    "decode",
    "encode",
    "penalize",
]

HEADROOM = 0.01
"""How much longer than ``60 / rpm`` requests are spaced (1%)."""


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """A model's limits: requests and tokens per minute (``None``: none)."""

    rpm: float | None = None
    tpm: float | None = None
    headroom: float = HEADROOM

    def __post_init__(self) -> None:
        for name, limit in (("rpm", self.rpm), ("tpm", self.tpm)):
            if limit is not None and limit <= 0:
                msg = f"{name} must be positive, not {limit}"
                raise ValueError(msg)
        if self.headroom < 0:
            msg = f"headroom must be >= 0, not {self.headroom}"
            raise ValueError(msg)

    @property
    def request_interval(self) -> float:
        """Seconds between two requests' slots (0: no request limit)."""
        return 60.0 / self.rpm * (1 + self.headroom) if self.rpm else 0.0

    def token_seconds(self, tokens: float) -> float:
        """Seconds of the token timeline ``tokens`` take (0: no token limit)."""
        if not self.tpm:
            return 0.0
        return tokens * 60.0 / self.tpm * (1 + self.headroom)


class LimitState(msgspec.Struct, frozen=True, kw_only=True):
    """One model's shared timeline, in wall-clock seconds."""

    tat_req: float = 0.0
    """The earliest slot for the next request."""
    tat_tok: float = 0.0
    """When the tokens reserved so far are paid for."""
    blocked_until: float = 0.0
    """No request before this (the provider answered 429)."""
    blocks: int = 0
    """How many times a 429 moved ``blocked_until``: a caller that reserved
    a slot before a block sees it change, and takes a new slot after it
    rather than wake inside the block (or all at once at its end)."""


def acquire(
    state: LimitState, now: float, limits: Limits, tokens: int = 0
) -> tuple[LimitState, float]:
    """Reserve the next slot for one request of about ``tokens`` tokens.

    An estimate above the whole per-minute budget is clamped to it, so a
    large request waits one minute's worth, not forever.

    Args:
        state: The model's timeline as read.
        now: Wall-clock seconds.
        limits: The model's limits.
        tokens: The request's estimated tokens.

    Returns:
        The timeline with this request's slot taken, and the seconds to wait
        until that slot (0: go now).
    """
    start = max(now, state.blocked_until)
    if limits.rpm:
        start = max(start, state.tat_req)
    charged = 0.0
    if limits.tpm and tokens > 0:
        start = max(start, state.tat_tok)
        charged = limits.token_seconds(min(float(tokens), limits.tpm))
    new = msgspec.structs.replace(
        state,
        tat_req=start + limits.request_interval if limits.rpm else state.tat_req,
        tat_tok=start + charged if charged else state.tat_tok,
    )
    return new, start - now


def adjust(state: LimitState, limits: Limits, tokens_delta: int) -> LimitState:
    """Correct the token timeline once a call's real usage is known.

    Args:
        state: The timeline as read.
        limits: The model's limits.
        tokens_delta: Used minus estimated; negative gives time back.

    Returns:
        The corrected timeline.
    """
    if not limits.tpm or tokens_delta == 0:
        return state
    return msgspec.structs.replace(
        state, tat_tok=state.tat_tok + limits.token_seconds(tokens_delta)
    )


def penalize(state: LimitState, now: float, seconds: float) -> LimitState:
    """Stop every request for ``seconds`` from ``now`` (a 429's retry-after).

    A block already longer stays as it is (and ``blocks`` with it).
    """
    until = now + max(0.0, seconds)
    if until <= state.blocked_until:
        return state
    return msgspec.structs.replace(state, blocked_until=until, blocks=state.blocks + 1)


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(LimitState)


def encode(state: LimitState) -> bytes:
    """The timeline as it is stored."""
    return _ENCODER.encode(state)


def decode(data: bytes) -> LimitState:
    """A stored timeline; anything unreadable is a fresh one (nothing reserved).

    A fresh timeline lets requests go at once, which is what a timeline last
    written more than a minute ago says anyway.
    """
    try:
        return _DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return LimitState()
