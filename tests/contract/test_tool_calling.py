"""Tool calling through the real Anthropic and OpenAI SDKs, against the fake.

The adapters must send tools, assistant tool-call turns and tool results in
each API's native shape (these tests assert on the recorded request bodies),
under wire names the APIs accept, and map the tool calls of an answer back to
Blackboard's dotted names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from agents.anthropic_client import AnthropicModel
from agents.models import (
    Message,
    ModelRequest,
    TerminalModelError,
    ToolCall,
    ToolResult,
    ToolSpec,
)
from agents.openai_client import OpenAICompatibleModel
from tests.fakes.providers import (
    ANTHROPIC_PATH,
    OPENAI_PATH,
    Canned,
    FakeProviderServer,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

Client = AnthropicModel | OpenAICompatibleModel

WRITE_SCHEMA = {
    "type": "object",
    "properties": {"path": {"type": "string"}, "text": {"type": "string"}},
    "required": ["path", "text"],
}
TOOLS = (
    ToolSpec(
        name="workspace.write",
        description="Write a file in the workspace.",
        input_schema=WRITE_SCHEMA,
    ),
    ToolSpec(name="orders.list_endpoints"),
)
EMPTY_SCHEMA = {"type": "object", "properties": {}}

ASK = ModelRequest(
    model="m",
    system="Use the tools.",
    messages=(Message("user", "Write notes.md, then list the order endpoints."),),
    max_tokens=256,
    tools=TOOLS,
)
CALLS = (
    ToolCall(
        id="call_1",
        name="workspace.write",
        arguments={"path": "notes.md", "text": "hi"},
    ),
    ToolCall(id="call_2", name="orders.list_endpoints", arguments={}),
    # A tool no longer offered: its name must still go out in wire form.
    ToolCall(id="call_3", name="legacy.lookup", arguments={"q": "x"}),
)
RESULTS = (
    ToolResult(call_id="call_1", content='{"written": 2}'),
    ToolResult(call_id="call_2", content="no such service: orders", is_error=True),
    ToolResult(call_id="call_3", content="[]"),
)


@pytest.fixture
def fake() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(text="done") as server:
        yield server


@pytest.fixture(params=["anthropic", "openai"])
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def client(provider: str, fake: FakeProviderServer) -> AsyncIterator[Client]:
    model: Client = (
        AnthropicModel(api_key="k", base_url=fake.anthropic_base_url, timeout=10)
        if provider == "anthropic"
        else OpenAICompatibleModel(
            api_key="k", base_url=fake.openai_base_url, timeout=10
        )
    )
    yield model
    await model.aclose()


def history(*, assistant_text: str, user_text: str) -> ModelRequest:
    """The request after one round of tool calls."""
    return ModelRequest(
        model="m",
        system="Use the tools.",
        messages=(
            *ASK.messages,
            Message("assistant", assistant_text, tool_calls=CALLS),
            Message("user", user_text, tool_results=RESULTS),
        ),
        max_tokens=256,
        tools=TOOLS,
    )


# --- tools out ------------------------------------------------------------


async def test_tools_are_sent_in_the_native_shape_under_wire_names(
    provider: str, client: Client, fake: FakeProviderServer
) -> None:
    await client.complete(ASK)

    [seen] = fake.requests
    if provider == "anthropic":
        assert seen.body["tools"] == [
            {
                "name": "workspace__write",
                "description": "Write a file in the workspace.",
                "input_schema": WRITE_SCHEMA,
            },
            {"name": "orders__list_endpoints", "input_schema": EMPTY_SCHEMA},
        ]
    else:
        assert seen.body["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "workspace__write",
                    "description": "Write a file in the workspace.",
                    "parameters": WRITE_SCHEMA,
                },
            },
            {
                "type": "function",
                "function": {
                    "name": "orders__list_endpoints",
                    "parameters": EMPTY_SCHEMA,
                },
            },
        ]


async def test_a_request_without_tools_sends_no_tools_key(
    provider: str, client: Client, fake: FakeProviderServer
) -> None:
    plain = ModelRequest(
        model="m", system="Be brief.", messages=(Message("user", "hi"),)
    )

    await client.complete(plain)

    [seen] = fake.requests
    # Exactly the keys sent before tools existed.
    expected = {
        "anthropic": {"model", "system", "messages", "max_tokens"},
        "openai": {"model", "messages", "temperature", "max_tokens"},
    }[provider]
    assert set(seen.body) == expected
    assert seen.body["messages"][-1] == {"role": "user", "content": "hi"}


# --- tool calls in ----------------------------------------------------------


async def test_several_tool_calls_are_parsed_in_order_with_dotted_names(
    provider: str, client: Client, fake: FakeProviderServer
) -> None:
    fake.enqueue_tool_calls(
        [
            ("call_1", "workspace__write", {"path": "notes.md", "text": "hi"}),
            ("call_2", "orders__list_endpoints", {}),
            ("call_3", "invented__tool", {"n": 1}),
        ],
        text="Writing, then listing.",
    )

    response = await client.complete(ASK)

    assert response.text == "Writing, then listing."
    assert response.stop_reason == (
        "tool_use" if provider == "anthropic" else "tool_calls"
    )
    assert response.tool_calls == (
        ToolCall(
            id="call_1",
            name="workspace.write",
            arguments={"path": "notes.md", "text": "hi"},
        ),
        ToolCall(id="call_2", name="orders.list_endpoints", arguments={}),
        # Not offered: the model's own name, as it sent it.
        ToolCall(id="call_3", name="invented__tool", arguments={"n": 1}),
    )


async def test_tool_calls_without_text(
    provider: str, client: Client, fake: FakeProviderServer
) -> None:
    fake.enqueue_tool_calls([("call_1", "orders__list_endpoints", {})])

    response = await client.complete(ASK)

    assert response.text == ""
    [call] = response.tool_calls
    assert call.name == "orders.list_endpoints"


async def test_malformed_openai_arguments_are_kept_raw(
    fake: FakeProviderServer,
) -> None:
    fake.enqueue_tool_calls([("call_1", "workspace__write", '{"path": "notes.md"')])
    client = OpenAICompatibleModel(api_key="k", base_url=fake.openai_base_url)
    try:
        response = await client.complete(ASK)
    finally:
        await client.aclose()

    [call] = response.tool_calls
    assert call.name == "workspace.write"
    assert call.arguments == {"_raw": '{"path": "notes.md"'}


# --- tool turns out ---------------------------------------------------------


async def test_tool_call_turn_and_results_are_sent_in_the_native_shape(
    provider: str, client: Client, fake: FakeProviderServer
) -> None:
    await client.complete(history(assistant_text="On it.", user_text=""))

    [seen] = fake.requests
    messages = seen.body["messages"]
    if provider == "anthropic":
        assert messages[1:] == [
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "On it."},
                    {
                        "type": "tool_use",
                        "id": "call_1",
                        "name": "workspace__write",
                        "input": {"path": "notes.md", "text": "hi"},
                    },
                    {
                        "type": "tool_use",
                        "id": "call_2",
                        "name": "orders__list_endpoints",
                        "input": {},
                    },
                    {
                        "type": "tool_use",
                        "id": "call_3",
                        "name": "legacy__lookup",
                        "input": {"q": "x"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_1",
                        "content": '{"written": 2}',
                        "is_error": False,
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_2",
                        "content": "no such service: orders",
                        "is_error": True,
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_3",
                        "content": "[]",
                        "is_error": False,
                    },
                ],
            },
        ]
    else:
        assert messages[2:] == [
            {
                "role": "assistant",
                "content": "On it.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {
                            "name": "workspace__write",
                            "arguments": '{"path":"notes.md","text":"hi"}',
                        },
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {
                            "name": "orders__list_endpoints",
                            "arguments": "{}",
                        },
                    },
                    {
                        "id": "call_3",
                        "type": "function",
                        "function": {
                            "name": "legacy__lookup",
                            "arguments": '{"q":"x"}',
                        },
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"written": 2}'},
            {
                "role": "tool",
                "tool_call_id": "call_2",
                "content": "ERROR: no such service: orders",
            },
            {"role": "tool", "tool_call_id": "call_3", "content": "[]"},
        ]


async def test_empty_assistant_text_and_a_user_note_after_the_results(
    provider: str, client: Client, fake: FakeProviderServer
) -> None:
    await client.complete(history(assistant_text="", user_text="Carry on."))

    [seen] = fake.requests
    messages = seen.body["messages"]
    if provider == "anthropic":
        assistant, user = messages[-2:]
        # No empty text block: the turn is its tool_use blocks only.
        assert [b["type"] for b in assistant["content"]] == ["tool_use"] * 3
        # Results first, the turn's own text after them.
        assert [b["type"] for b in user["content"]] == ["tool_result"] * 3 + ["text"]
        assert user["content"][-1] == {"type": "text", "text": "Carry on."}
        assert [b["tool_use_id"] for b in user["content"][:3]] == [
            c["id"] for c in assistant["content"]
        ]
    else:
        assistant = messages[2]
        assert assistant["content"] is None
        assert [m["role"] for m in messages[2:]] == [
            "assistant",
            "tool",
            "tool",
            "tool",
            "user",
        ]
        # Every tool message answers one call of the assistant turn, in order.
        assert [m["tool_call_id"] for m in messages[3:6]] == [
            c["id"] for c in assistant["tool_calls"]
        ]
        assert messages[-1] == {"role": "user", "content": "Carry on."}


@pytest.mark.parametrize(
    "turn",
    [
        Message("user", "x", tool_calls=CALLS[:1]),
        Message("assistant", "x", tool_results=RESULTS[:1]),
        Message("system", "x"),
    ],
    ids=["calls-on-user", "results-on-assistant", "system-role"],
)
async def test_a_turn_the_api_cannot_take_is_terminal_before_sending(
    client: Client, fake: FakeProviderServer, turn: Message
) -> None:
    request = ModelRequest(model="m", messages=(turn,), tools=TOOLS)

    with pytest.raises(TerminalModelError, match="cannot send"):
        await client.complete(request)

    assert fake.requests == []


# --- the fake's helpers -------------------------------------------------------


async def test_the_fake_calls_a_dotted_name_by_its_offered_wire_name(
    client: Client, fake: FakeProviderServer
) -> None:
    fake.enqueue_tool_calls(
        [("call_1", "workspace.write", {"path": "a", "text": "b"})], text=""
    )

    response = await client.complete(ASK)

    [call] = response.tool_calls
    assert call.name == "workspace.write"
    raw = response.raw
    wire = (
        raw["content"][0]["name"]
        if "content" in raw
        else raw["choices"][0]["message"]["tool_calls"][0]["function"]["name"]
    )
    assert wire == "workspace__write"


async def test_a_responder_answers_from_the_conversation_so_far(
    provider: str, client: Client, fake: FakeProviderServer
) -> None:
    def respond(path: str, body: dict[str, Any]) -> Canned | None:
        assert path == (ANTHROPIC_PATH if provider == "anthropic" else OPENAI_PATH)
        # Two names that collide once made wire-safe: answer with whichever
        # wire name the adapter chose for the dotted one.
        tools = [t.get("function", t) for t in body.get("tools", [])]
        [dotted] = [t["name"] for t in tools if t.get("description") == "dotted"]
        rounds = sum(1 for m in body["messages"] if m["role"] == "assistant")
        if rounds == 0:
            return Canned(tool_calls=(("call_a", dotted, {}),), text="")
        return None  # the queue (empty: the default text) answers

    fake.responder = respond
    request = ModelRequest(
        model="m",
        messages=(Message("user", "go"),),
        tools=(
            ToolSpec(name="a__b", description="plain"),
            ToolSpec(name="a.b", description="dotted"),
        ),
    )

    first = await client.complete(request)
    [call] = first.tool_calls
    assert call.name == "a.b"
    second = await client.complete(
        ModelRequest(
            model="m",
            messages=(
                *request.messages,
                Message("assistant", "", tool_calls=first.tool_calls),
                Message(
                    "user",
                    "",
                    tool_results=(ToolResult(call_id="call_a", content="1"),),
                ),
            ),
            tools=request.tools,
        )
    )

    assert second.text == "done"
    assert second.tool_calls == ()
    assert len(fake.requests) == 2
    wires = {t.get("function", t)["name"] for t in fake.requests[0].body["tools"]}
    assert "a__b" in wires
    assert len(wires) == 2
