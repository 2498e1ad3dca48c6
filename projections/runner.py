"""The projector process: the log, applied to DuckDB exactly once, and SQL.

A durable pull consumer (``bb-projector``) on the events stream hands out
batches; each batch is folded, turned into rows and applied with its last
stream sequence in one DuckDB transaction, and only then acked. A restart
recreates the consumer from the sequence stored in the file, and messages at or
below it are skipped anyway, so nothing is applied twice and nothing is missed.
Messages that do not decode, and events the fold refuses, land in
``dead_letters`` with the reason; the projector never stops on them.

DuckDB allows one writing process, so the projector also answers queries for
everyone on ``<prefix>.api.query`` (request/reply, JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from blackboard import collector
from blackboard.engine.state import BoardState, evolve
from blackboard.errors import BlackboardError, MalformedEvent, StoreError
from blackboard.log import wire
from projections.duckdb_view import MAX_REPLY, DuckDBView, answer
from projections.rows import Rows, add_event, dead_letter

if TYPE_CHECKING:
    from blackboard.log.ports import Consumer, Delivery, EventStore

__all__ = ["CONSUMER", "MAX_REPLY", "Projector", "api_subject"]

log = logging.getLogger("blackboard.projector")

CONSUMER = "bb-projector"
_OPEN_TRIES = 100
"""Tries, 0.2 s apart, to open a file a reader holds for a moment."""


def api_subject(prefix: str) -> str:
    """Where the projector answers queries."""
    return f"{prefix}.api.query"


class Projector:
    """Applies the events stream to a DuckDB file and answers SQL.

    Args:
        store: The event store.
        db: The DuckDB file.
        rebuild: Start from an empty file and sequence 1.
        batch: Messages fetched (and applied in one transaction) at most.
    """

    def __init__(
        self,
        store: EventStore,
        db: Path | str,
        *,
        rebuild: bool = False,
        batch: int = 2000,
    ) -> None:
        self.store = store
        self.db = Path(db)
        self.rebuild = rebuild
        self.batch = batch
        self.state = BoardState()
        self.view: DuckDBView | None = None
        self.ready = asyncio.Event()
        self.applied = 0
        self.last_seq = 0
        """The stream sequence the file is up to date with."""
        self._progress = asyncio.Event()
        self._catch_up_to = 0
        """While catching up: the log's last sequence at start (collector.py)."""

    @property
    def consumer(self) -> str:
        """The durable consumer's name (one per prefix's stream)."""
        return CONSUMER

    async def run(self, stop: asyncio.Event) -> None:
        """Project until ``stop`` is set."""
        if self.rebuild:
            await self._reset()
        self.view = await self._open()
        try:
            last = self.last_seq = self.view.last_seq
            if last:
                async for env in self.store.read(on_bad=_quiet):
                    if env.seq > last:
                        break
                    evolve(self.state, env)
            # The file, not the consumer, says what was applied. Messages a
            # killed projector had fetched but not acked would come back only
            # after their ack wait, and acking a later one (ack-all) would drop
            # them: the consumer starts afresh right after the file's sequence.
            sub = await self.store.durable(self.consumer, last + 1)
            api = await self.store.serve(
                api_subject(self.store.settings.prefix), self._answer
            )
            self.ready.set()
            log.info("projector: %s at sequence %d", self.db, last)
            self._catch_up_to = await self.store.events_last_seq()
            if self._catch_up_to > last:
                collector.catching_up()
            else:
                self._catch_up_to = 0
            try:
                await self._loop(sub, stop)
            finally:
                self._caught_up()
                with contextlib.suppress(Exception):
                    await api.close()
                with contextlib.suppress(Exception):
                    await sub.close()
        finally:
            self.view.close()
            self.view = None

    async def _open(self) -> DuckDBView:
        """Open the file; wait while a reader (`bb sql` with no projector) has it."""
        for _ in range(_OPEN_TRIES - 1):
            try:
                return DuckDBView(self.db)
            except BlackboardError as e:
                if "lock" not in str(e):
                    raise
                await asyncio.sleep(0.2)
        return DuckDBView(self.db)

    async def _loop(self, sub: Consumer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(self.batch, timeout=0.5)
            except StoreError as e:
                log.warning("projector: fetch failed (%s); retrying", e)
                await asyncio.sleep(0.5)
                continue
            if not msgs:
                continue
            await self.apply(msgs)
            if self._catch_up_to and self.last_seq >= self._catch_up_to:
                self._caught_up()
            # Ack-all: everything up to it. A lost ack costs nothing: a
            # redelivered message is at or below the file's sequence, skipped.
            with contextlib.suppress(StoreError):
                await msgs[-1].ack()

    def _caught_up(self) -> None:
        """The log as it was at start is in the file: collect garbage again."""
        if self._catch_up_to:
            self._catch_up_to = 0
            collector.caught_up()

    async def apply(self, msgs: list[Delivery]) -> None:
        """Fold, turn into rows and apply one batch in one transaction."""
        assert self.view is not None
        floor = self.view.last_seq
        rows = Rows()
        last = floor
        for msg in msgs:
            seq = msg.seq
            if seq <= floor:
                continue  # applied before a restart; only its ack was lost
            last = max(last, seq)
            bad: list[MalformedEvent] = []
            env = await self.store.decode(msg, on_bad=bad.append)
            if env is None:
                reason = bad[0].reason if bad else "undecodable"
                dead_letter(rows, seq, msg.subject, reason, msg.data or b"")
                continue
            refused = len(self.state.anomalies)
            evolve(self.state, env)
            # The body as stored is the event's JSON, unless it is a stub
            # pointing at the object store: then it is encoded again.
            add_event(rows, env, None if wire.carries_stub(msg) else msg.data)
            if len(self.state.anomalies) > refused:
                a = self.state.anomalies[-1]
                # The event stays in `events` (it is in the log); the fold
                # did not apply it to the state, and this says why.
                dead_letter(rows, seq, msg.subject, f"refused by the fold: {a.reason}")
        if last > floor:
            self.view.apply(rows, self.state, last)
            self.applied += len(rows)
            self.last_seq = last
            self._progress.set()

    async def caught_up(self, seq: int, timeout_s: float = 30.0) -> None:
        """Wait until everything up to ``seq`` is in the file."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.last_seq < seq:
                    self._progress.clear()
                    await self._progress.wait()

    async def _reset(self) -> None:
        await self.store.drop_durable(self.consumer)
        _remove(self.db)

    async def _answer(self, data: bytes) -> bytes:
        """Answer one request: ``{"sql": ...}`` or ``{"export_parquet": dir}``."""
        try:
            req = json.loads(data or b"{}")
            if self.view is None:
                raise BlackboardError("the projector is starting")
            if "export_parquet" in req:
                files = self.view.export_parquet(Path(req["export_parquet"]))
                body = json.dumps({"files": [str(f) for f in files]})
            else:
                columns, rows = self.view.query(str(req["sql"]))
                body = answer(columns, rows)
        except (BlackboardError, KeyError, ValueError, OSError) as e:
            body = json.dumps({"error": str(e)})
        return body.encode()


def _remove(db: Path) -> None:
    """Delete a DuckDB file and its write-ahead log, for a rebuild."""
    for suffix in ("", ".wal"):
        Path(str(db) + suffix).unlink(missing_ok=True)


def _quiet(err: MalformedEvent) -> None:
    """Garbage met while rebuilding the fold is already in dead_letters."""
