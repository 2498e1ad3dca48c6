"""The SharedState contract, written once and run on both adapters.

The JetStream bucket (marked integration, on a real nats-server) and the
in-memory twin: values by key, compare-and-set on the revision.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from blackboard.errors import StateConflict
from blackboard.log.subjects import state_key

if TYPE_CHECKING:
    from blackboard.log.ports import EventStore, SharedState


async def value(state: SharedState, key: str) -> bytes | None:
    found = await state.get(key)
    return found.value if found is not None else None


async def test_a_key_never_written_reads_as_none(any_store: EventStore):
    assert await any_store.shared_state().get("rate.openai.gpt-5") is None


async def test_create_then_update_on_the_revision_read(any_store: EventStore):
    state = any_store.shared_state()
    r1 = await state.create("k", b"one")
    assert await state.get("k") == (b"one", r1)
    r2 = await state.update("k", b"two", r1)
    assert r2 > r1
    assert await state.get("k") == (b"two", r2)


async def test_create_of_an_existing_key_conflicts(any_store: EventStore):
    state = any_store.shared_state()
    await state.create("k", b"one")
    with pytest.raises(StateConflict):
        await state.create("k", b"again")
    assert await value(state, "k") == b"one"


async def test_an_update_on_a_stale_revision_conflicts(any_store: EventStore):
    state = any_store.shared_state()
    r1 = await state.create("k", b"one")
    await state.update("k", b"two", r1)
    with pytest.raises(StateConflict):
        await state.update("k", b"stale", r1)
    assert await value(state, "k") == b"two"


async def test_of_racing_updates_on_one_revision_exactly_one_wins(
    any_store: EventStore,
):
    state = any_store.shared_state()
    r1 = await state.create("k", b"0")
    results = await asyncio.gather(
        *(state.update("k", str(i).encode(), r1) for i in range(5)),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, int)]
    assert len(won) == 1
    assert all(isinstance(r, StateConflict) for r in results if r not in won)


async def test_state_keys_are_legal_and_distinct(any_store: EventStore):
    state = any_store.shared_state()
    names = [
        ("anthropic", "claude-sonnet-4-5"),
        ("openai", "gpt-4.1"),
        ("openai", "gpt-4=2e1"),
        ("local", "qwen2.5:7b/instruct"),
        ("local", ""),
    ]
    keys = [state_key("rate", p, m) for p, m in names]
    assert len(set(keys)) == len(keys)
    for i, key in enumerate(keys):
        await state.create(key, str(i).encode())
    for i, key in enumerate(keys):
        assert await value(state, key) == str(i).encode()
