"""Transient JetStream trouble, told apart from errors, and retried.

A timeout, no responders, a 503 during a leader election, "JetStream
temporarily unavailable": each may pass if the call is made again. Every call
the JetStream adapters make goes through :func:`retry`, which gives up with
LogUnavailable after the store's patience; anything else is raised at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, TypeVar

import nats.errors
import nats.js.errors

from blackboard.errors import LogUnavailable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger("blackboard.store")

T = TypeVar("T")

NATS_ERRORS = (nats.errors.Error, OSError)
"""What nats-py raises for trouble talking to the server (its own errors and
the socket's)."""

_TRANSIENT_API_CODES = frozenset({408, 503})
_TRANSIENT_ERR_CODES = frozenset({10008})  # JetStream temporarily unavailable


def transient(e: BaseException) -> bool:
    """Whether an error from nats-py may go away if the call is made again."""
    if isinstance(
        e,
        nats.errors.TimeoutError
        | nats.errors.NoRespondersError
        | nats.errors.ConnectionReconnectingError
        | nats.errors.StaleConnectionError
        | nats.js.errors.ServiceUnavailableError
        | nats.js.errors.NoStreamResponseError
        | TimeoutError,
    ):
        return True
    return isinstance(e, nats.js.errors.APIError) and (
        e.code in _TRANSIENT_API_CODES or e.err_code in _TRANSIENT_ERR_CODES
    )


async def retry(what: str, op: Callable[[], Awaitable[T]], patience_s: float) -> T:
    """Run ``op``, retrying transient server trouble with backoff.

    Gives up with LogUnavailable after ``patience_s``; any other error is
    raised at once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    delay = 0.1
    while True:
        try:
            return await op()
        except Exception as e:
            if not transient(e):
                raise
            if loop.time() + delay > deadline:
                raise LogUnavailable(
                    f"{what}: JetStream did not answer for "
                    f"{patience_s:g}s ({type(e).__name__}: {e})"
                ) from e
            log.info("%s: %s; retrying in %.1fs", what, e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def quietly(aw: Awaitable[object]) -> None:
    """Await a clean-up whose failure changes nothing (an unsubscribe)."""
    with contextlib.suppress(nats.errors.Error, asyncio.CancelledError, OSError):
        await aw
