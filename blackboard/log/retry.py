"""Transient JetStream trouble, told apart from errors, and retried.

A timeout, no responders, a 503 during a leader election, "JetStream
temporarily unavailable": each may pass if the call is made again. Every call
the JetStream adapters make goes through :func:`retry`, which gives up with
LogUnavailable after the store's patience; anything else is raised at once.

A publish the server refuses for permissions also looks like a timeout: the
server drops it and reports the violation on the connection instead. Given
a way to see the connection's last violation, :func:`retry` raises
PermissionDenied as soon as one arrives during a try, rather than waiting
out its patience for an answer that never comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, TypeVar

import nats.errors
import nats.js.errors

from blackboard.errors import LogUnavailable, PermissionDenied, StoreError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client as NatsClient

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


def violation(e: BaseException | None) -> BaseException | None:
    """``e`` if it is the server's report of a permissions violation."""
    if isinstance(e, nats.errors.Error) and "permissions violation" in str(e).lower():
        return e
    return None


async def retry(
    what: str,
    op: Callable[[], Awaitable[T]],
    patience_s: float,
    refused: Callable[[], BaseException | None] | None = None,
) -> T:
    """Run ``op``, retrying transient server trouble with backoff.

    Gives up with LogUnavailable after ``patience_s``; any other error is
    raised at once. ``refused`` returns the connection's last permissions
    violation (or None): a new one during a try that timed out means the
    server refused it, raised as PermissionDenied.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    delay = 0.1
    while True:
        before = refused() if refused is not None else None
        try:
            return await op()
        except Exception as e:
            if not transient(e):
                raise
            after = refused() if refused is not None else None
            if after is not None and after is not before:
                raise PermissionDenied(
                    f"{what}: the NATS server refused it ({after}); this NATS "
                    "user's role does not allow it (README, Roles)"
                ) from e
            if loop.time() + delay > deadline:
                raise LogUnavailable(
                    f"{what}: JetStream did not answer for "
                    f"{patience_s:g}s ({type(e).__name__}: {e})"
                ) from e
            log.info("%s: %s; retrying in %.1fs", what, e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def retry_on(
    nc: NatsClient, what: str, op: Callable[[], Awaitable[T]], patience_s: float
) -> T:
    """:func:`retry` on ``nc``, nats-py's errors raised as StoreError.

    What the buckets' adapters (shared state, snapshots) call: the ports
    promise StoreError, and a violation on ``nc`` is PermissionDenied.
    """
    try:
        return await retry(what, op, patience_s, lambda: violation(nc.last_error))
    except (nats.errors.Error, nats.js.errors.Error) as e:
        raise StoreError(f"{what}: {type(e).__name__}: {e}") from e


async def quietly(aw: Awaitable[object]) -> None:
    """Await a clean-up whose failure changes nothing (an unsubscribe)."""
    with contextlib.suppress(nats.errors.Error, asyncio.CancelledError, OSError):
        await aw
