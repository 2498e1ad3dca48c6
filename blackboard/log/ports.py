"""The log's ports: what the engine and everything above it use. Pure.

Four seams, each a Protocol with two adapters checked by one contract suite
(tests/contract/): JetStream (``store.py``, ``workqueue.py``, ``lease.py``,
``sharedstate.py``) and the in-memory twins (``memory.py``,
``memory_work.py``).

- :class:`EventStore`: append events (deduplicated by event id, optionally
  guarded on a task's last sequence, optionally as one atomic batch), read and
  follow them in stream order, look up the last event on a subject filter.
- :class:`WorkQueue`: the scheduler publishes work on a lane; a lane's workers
  share one consumer that hands out :class:`Delivery` objects, each acked,
  nak'ed (redelivered later), termed or kept alive (``in_progress``).
- :class:`LeaderLock`: one active scheduler, by a lease that expires.
- :class:`SharedState`: small values every process of the deployment sees,
  written by compare-and-set on their revision (fleet-wide rate limits and
  circuit breakers).

Every method signals trouble with the log as a ``StoreError`` (see
blackboard/errors.py): ``ConcurrencyConflict`` for a guard that lost,
``LogUnavailable`` when the log did not answer in time, ``InvalidEvent`` for an
event that can never be written, ``BatchRejected`` for a refused batch,
``StateConflict`` for a compare-and-set of shared state that lost.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

from blackboard.errors import MalformedEvent
from blackboard.log import subjects

if TYPE_CHECKING:
    import asyncio
    from collections.abc import AsyncGenerator, Awaitable, Sequence
    from datetime import datetime

    from blackboard.log.codec import Envelope
    from blackboard.log.events import Event
    from blackboard.log.subjects import Subjects

log = logging.getLogger("blackboard.store")

MAX_BATCH = 1000
"""The most events one atomic batch holds (the server's limit, ADR-50)."""


@dataclass(frozen=True)
class StoreSettings:
    """How the streams are laid out; the defaults suit one server."""

    prefix: str = "bb"
    replicas: int = 1
    blob_threshold: int = 256 * 1024
    duplicate_window_s: float = 120.0
    work_max_age_s: float = 0.0
    transient_s: float = 30.0
    """How long transient server trouble is retried before LogUnavailable."""
    stall_check_s: float = 5.0
    """A follower idle this long checks that the log has not moved past it."""


@dataclass
class Share:
    """The part of the log one scheduler reads: all of it, or one partition.

    With ``count`` partitions a goal belongs to ``partition_of(goal, count)``
    and a partition's scheduler reads only its goals' events, from a stream
    sourced from the events stream (see streams.partitions_config).
    ``position`` is where its reading got to, in the stream it reads: the
    events stream's sequence for the whole log, the partitions stream's for
    one partition (the events' own sequences are those of the events stream
    either way). Readers move it on as they go.
    """

    index: int = 0
    count: int = 1
    position: int = 0

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            msg = f"partition {self.index} of {self.count}: give 0 <= index < count"
            raise ValueError(msg)

    @property
    def whole(self) -> bool:
        """Whether this is the whole log (one partition)."""
        return self.count == 1

    @property
    def name(self) -> str:
        """The scheduler's lock and snapshot name for this share."""
        return "scheduler" if self.whole else f"scheduler-{self.index}-of-{self.count}"

    def holds(self, goal_id: str) -> bool:
        """Whether a goal's events are in this share."""
        return self.whole or subjects.partition_of(goal_id, self.count) == self.index


class Last(NamedTuple):
    """The last message on a subject filter."""

    seq: int
    event_id: str
    subject: str


OnBad = Callable[[MalformedEvent], None]
"""Where a reader reports a message that is not a valid event."""


def warn_bad(err: MalformedEvent) -> None:
    """The default report of a message that is not a valid event: a warning."""
    log.warning("skipped %s", err)


def ignore_bad(err: MalformedEvent) -> None:
    """Drop the report: the caller only looks for valid events."""


def partitions_stream(events_stream: str, count: int) -> str:
    """The name of the stream that copies the events into ``count`` partitions."""
    return f"{events_stream}_P{count}"


def stream_names(prefix: str) -> tuple[str, str, str]:
    """Names of the events stream, the work stream and the blob bucket.

    The default prefix keeps the documented names; another prefix gets its own
    streams so deployments sharing a NATS account never collide.
    """
    if prefix == "bb":
        return subjects.EVENTS_STREAM, subjects.WORK_STREAM, subjects.BLOB_BUCKET
    tag = prefix.upper().replace(".", "_").replace("-", "_")
    return (
        f"{subjects.EVENTS_STREAM}_{tag}",
        f"{subjects.WORK_STREAM}_{tag}",
        f"{subjects.BLOB_BUCKET}_{tag.lower()}",
    )


def consumer_name(lane: str) -> str:
    """The durable consumer of a lane's work (KEDA's trigger names it too)."""
    return f"bb-{lane}"


def lock_bucket(prefix: str) -> str:
    """The key-value bucket holding the leases of one prefix."""
    tag = prefix.replace(".", "_").replace("-", "_")
    return subjects.LOCK_BUCKET if prefix == "bb" else f"{subjects.LOCK_BUCKET}_{tag}"


def limits_bucket(prefix: str) -> str:
    """The key-value bucket holding the fleet's shared state of one prefix."""
    tag = prefix.replace(".", "_").replace("-", "_")
    if prefix == "bb":
        return subjects.LIMITS_BUCKET
    return f"{subjects.LIMITS_BUCKET}_{tag}"


def snapshot_bucket(prefix: str) -> str:
    """The object-store bucket holding the snapshots of one prefix."""
    tag = prefix.replace(".", "_").replace("-", "_")
    if prefix == "bb":
        return subjects.SNAPSHOT_BUCKET
    return f"{subjects.SNAPSHOT_BUCKET}_{tag}"


class Versioned(NamedTuple):
    """A value of the shared state and the revision it was written at."""

    value: bytes
    revision: int


# --- messages ----------------------------------------------------------------


class StoredMessage(Protocol):
    """A message as a stream stored it: what decoding an event needs."""

    @property
    def subject(self) -> str:
        """The subject it is stored under."""
        ...

    @property
    def data(self) -> bytes:
        """Its body."""
        ...

    @property
    def headers(self) -> dict[str, str] | None:
        """Its headers."""
        ...

    @property
    def seq(self) -> int:
        """Its stream sequence."""
        ...


class Delivery(StoredMessage, Protocol):
    """One delivery of a message by a consumer, to be settled exactly once."""

    @property
    def num_delivered(self) -> int:
        """How many times the message was delivered, this one included."""
        ...

    @property
    def timestamp(self) -> datetime | None:
        """When the message was stored."""
        ...

    async def ack(self) -> None:
        """Done: the message is removed (on the events stream: up to here)."""
        ...

    async def nak(self, delay: float | None = None) -> None:
        """Not done: deliver it again, after ``delay`` seconds if given."""
        ...

    async def term(self) -> None:
        """Never deliver it again."""
        ...

    async def in_progress(self) -> None:
        """Still working on it: the ack wait starts again."""
        ...


class Consumer(Protocol):
    """A durable consumer bound by one process."""

    async def fetch(self, n: int, timeout: float) -> list[Delivery]:
        """Up to ``n`` deliveries; ``[]`` if none came within ``timeout``."""
        ...

    async def close(self) -> None:
        """Unbind (the durable consumer itself stays)."""
        ...


class Subscription(Protocol):
    """A live subscription; ``close`` ends it."""

    async def close(self) -> None:
        """Stop receiving."""
        ...


# --- the seams -------------------------------------------------------------


class LeaderLock(Protocol):
    """A lease one holder has at a time; a standby takes it when it expires."""

    holder: str
    key: str
    lost: asyncio.Event
    """Set when the holder learns it lost the lease (a renewal was refused)."""

    async def try_acquire(self) -> bool:
        """Take the lease if nobody holds it."""
        ...

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait as a standby until the lease is ours (False: ``stop`` was set)."""
        ...

    async def release(self) -> None:
        """Give the lease up so a standby takes over at once."""
        ...


class SharedState(Protocol):
    """Small values shared by every process of a deployment, by key.

    Writes are compare-and-set: ``create`` only if the key is absent,
    ``update`` only if the key is still at the revision read, so two
    processes that read the same value cannot both write after it; the loser
    gets StateConflict, reads again and decides again. Keys are
    ``[-/_=.a-zA-Z0-9]`` (``subjects.state_key``). Trouble reaching the
    server is a StoreError (LogUnavailable when it did not answer in time).
    """

    async def get(self, key: str) -> Versioned | None:
        """The key's value and revision, or None if it was never written."""
        ...

    async def create(self, key: str, value: bytes) -> int:
        """Write a new key; its revision. StateConflict if it exists."""
        ...

    async def update(self, key: str, value: bytes, last: int) -> int:
        """Write the key if it is still at revision ``last``; the new revision.

        StateConflict if another write came first.
        """
        ...


class SnapshotStore(Protocol):
    """Named blobs of derived state beside the log (the scheduler's fold).

    Nothing in one is the truth: a snapshot lost, stale or refused costs only
    the time of folding the log instead. Trouble reaching the server is a
    StoreError.
    """

    async def load(self, name: str) -> bytes | None:
        """The latest bytes saved under ``name``, or None if there are none."""
        ...

    async def save(self, name: str, data: bytes) -> None:
        """Replace what ``name`` holds with ``data``."""
        ...


class WorkQueue(Protocol):
    """Work for the lanes: published by the scheduler, shared by the workers.

    A message stays until it is acked or termed; one delivered and neither
    settled nor kept alive within the lane's ``lease_s`` is delivered again.
    """

    async def publish(
        self, lane: str, body: bytes, *, msg_id: str, traceparent: str | None = None
    ) -> int:
        """Queue a message on a lane (deduplicated by ``msg_id``); its sequence."""
        ...

    async def ensure_lane(
        self, lane: str, *, lease_s: float, max_ack_pending: int
    ) -> None:
        """Create the lane's consumer if it does not exist."""
        ...

    async def consumer(self, lane: str) -> Consumer:
        """Bind to the lane's consumer (``ensure_lane`` first)."""
        ...

    async def lag(self, lane: str) -> int:
        """Messages on the lane not yet delivered."""
        ...


class EventStore(Protocol):
    """The log: append events, read them back in order, look them up.

    Sequences are the stream's, shared by every event. A guard (``expect``) is
    the sequence of the last event on the task's subjects (0: it has none).
    Readers never crash on a message they cannot decode: they hand a
    ``MalformedEvent`` to ``on_bad`` and go on; and they never return part of
    the history silently (``LogUnavailable`` instead).
    """

    settings: StoreSettings
    subjects: Subjects

    async def ensure(self) -> None:
        """Create what the log needs if missing (every process, at start)."""
        ...

    async def append(
        self,
        event: Event,
        *,
        expect: int | None = None,
        traceparent: str | None = None,
    ) -> int:
        """Append one event; with ``expect``, only if the task is at that seq.

        A re-sent event (same id) is stored once and returns the same sequence,
        guarded or not. A lost guard raises ConcurrencyConflict.
        """
        ...

    async def append_many(self, events: Sequence[Event]) -> list[int]:
        """Append independent events, unguarded, many in flight at once."""
        ...

    async def append_batch(
        self,
        items: Sequence[tuple[Event, int | None]],
        traceparent: str | None = None,
    ) -> list[int]:
        """Append events atomically (each with its guard): all, in order, or none.

        At most MAX_BATCH events (ValueError beyond). A re-sent batch that had
        landed returns the sequences it got.
        """
        ...

    def read(
        self,
        filter_subject: str | None = None,
        from_seq: int = 1,
        on_bad: OnBad = warn_bad,
        batch: int = 1000,
    ) -> AsyncGenerator[Envelope, None]:
        """Yield the events stored so far on a filter, in stream order."""
        ...

    def read_goal(
        self, goal_id: str, on_bad: OnBad = warn_bad
    ) -> AsyncGenerator[Envelope, None]:
        """Yield one goal's events in stream order."""
        ...

    def follow(
        self,
        filter_subject: str | None = None,
        from_seq: int | None = None,
        on_bad: OnBad = warn_bad,
        batch: int = 500,
    ) -> AsyncGenerator[Envelope, None]:
        """Yield events as they arrive, forever; from ``from_seq`` or from now."""
        ...

    def follow_batches(
        self,
        filter_subject: str | None = None,
        from_seq: int | None = None,
        on_bad: OnBad = warn_bad,
        batch: int = 500,
        idle_s: float = 0.25,
    ) -> AsyncGenerator[list[Envelope], None]:
        """Yield batches of events as they arrive, forever (``[]`` when idle).

        Close it (``contextlib.aclosing``) to release the reader at once.
        """
        ...

    async def last_on(self, scope: str) -> Last | None:
        """Sequence, event id and subject of the last message on a filter."""
        ...

    async def last_seq(self, goal_id: str, task_id: str | None) -> int:
        """The guard value of a task now: its last event's sequence, or 0."""
        ...

    async def last_event(
        self, goal_id: str, task_id: str | None, kind_: str | None = None
    ) -> Envelope | None:
        """The last event of a task (optionally of one kind), or None."""
        ...

    async def get(self, seq: int, on_bad: OnBad = warn_bad) -> Envelope | None:
        """One event by its stream sequence."""
        ...

    async def goal_of_task(self, task_id: str) -> str | None:
        """The goal a task belongs to, found from its TaskCreated; None if none."""
        ...

    async def events_last_seq(self) -> int:
        """The last sequence of the log (0 when empty)."""
        ...

    async def ensure_share(self, share: Share) -> None:
        """Make what reading ``share`` needs (a partition's stream).

        It lets that stream catch up with the log as it is now, as far as it
        can within the store's patience.
        """
        ...

    def read_share(
        self, share: Share, on_bad: OnBad = warn_bad
    ) -> AsyncGenerator[Envelope, None]:
        """Yield ``share``'s events after its position, to the end so far.

        As ``read``; the share's position moves on as it goes.
        """
        ...

    def follow_share(
        self, share: Share, on_bad: OnBad = warn_bad, batch: int = 500
    ) -> AsyncGenerator[list[Envelope], None]:
        """Follow ``share`` from after its position, moving it on.

        As ``follow_batches``.
        """
        ...

    async def share_at(self, share: Share, position: int) -> int | None:
        """The events-stream sequence of what ``share`` has at ``position``.

        None: nothing there.
        """
        ...

    async def decode(
        self,
        msg: StoredMessage,
        on_bad: OnBad = warn_bad,
    ) -> Envelope | None:
        """Decode a stored message into an Envelope; None (reported) if bad."""
        ...

    async def watch(
        self, filter_subject: str, cb: Callable[[str], Awaitable[None]]
    ) -> Subscription:
        """Call ``cb(subject)`` for each event stored on a filter from now on.

        Only stored events: a write the log refused is never seen here.
        """
        ...

    async def durable(self, name: str, from_seq: int) -> Consumer:
        """A durable consumer of every event from ``from_seq``, created afresh.

        Acking a delivery acks every one before it (the projector's consumer).
        """
        ...

    async def drop_durable(self, name: str) -> None:
        """Delete a durable consumer if it exists."""
        ...

    async def serve(
        self, subject: str, handler: Callable[[bytes], Awaitable[bytes]]
    ) -> Subscription:
        """Answer requests on ``subject`` (the projector's query endpoint)."""
        ...

    def work_queue(self) -> WorkQueue:
        """The lanes' work queue that lives beside this log."""
        ...

    def leader_lock(self, key: str, holder: str, ttl_s: float) -> LeaderLock:
        """A lease named ``key`` for ``holder``, beside this log."""
        ...

    def shared_state(self) -> SharedState:
        """The deployment's shared state (limits, breakers), beside this log."""
        ...

    def snapshots(self) -> SnapshotStore:
        """Where derived state is kept between processes, beside this log."""
        ...


class DerivedReads:
    """``read_goal`` and ``follow``, the same for every adapter.

    Both are shapes of the adapter's own ``read`` and ``follow_batches``;
    written once here, mixed into the JetStream and the in-memory readers.
    """

    subjects: Subjects

    def read(
        self,
        filter_subject: str | None = None,
        from_seq: int = 1,
        on_bad: OnBad = warn_bad,
        batch: int = 1000,
    ) -> AsyncGenerator[Envelope, None]:
        """The adapter's own read (see EventStore.read)."""
        raise NotImplementedError

    def follow_batches(
        self,
        filter_subject: str | None = None,
        from_seq: int | None = None,
        on_bad: OnBad = warn_bad,
        batch: int = 500,
        idle_s: float = 0.25,
    ) -> AsyncGenerator[list[Envelope], None]:
        """The adapter's own follower (see EventStore.follow_batches)."""
        raise NotImplementedError

    def read_goal(
        self, goal_id: str, on_bad: OnBad = warn_bad
    ) -> AsyncGenerator[Envelope, None]:
        """Yield one goal's events in stream order."""
        return self.read(self.subjects.goal_events(goal_id), on_bad=on_bad)

    async def follow(
        self,
        filter_subject: str | None = None,
        from_seq: int | None = None,
        on_bad: OnBad = warn_bad,
        batch: int = 500,
    ) -> AsyncGenerator[Envelope, None]:
        """Yield events as they arrive, forever; from ``from_seq`` or from now."""
        async with contextlib.aclosing(
            self.follow_batches(filter_subject, from_seq, on_bad, batch)
        ) as batches:
            async for envs in batches:
                for env in envs:
                    yield env
