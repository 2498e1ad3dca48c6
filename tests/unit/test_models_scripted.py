"""ScriptedModel: the deterministic, offline ModelClient."""

from __future__ import annotations

import contextlib
import json
import math
from typing import TYPE_CHECKING

import msgspec
import pytest

from agents.cost import PriceTable
from agents.models import (
    CallRecord,
    Message,
    ModelRequest,
    RetryableModelError,
    TerminalModelError,
    ToolCall,
    ToolResult,
    ToolSpec,
    request_hash,
)
from agents.resilient import ResilientModel
from agents.scripted import Rule, Script, ScriptedModel, ScriptedToolCall, render_reply

if TYPE_CHECKING:
    from pathlib import Path


def req(
    text: str,
    *,
    task_type: str | None = None,
    model: str = "m",
    system: str = "",
) -> ModelRequest:
    metadata = {"task_type": task_type} if task_type else {}
    return ModelRequest(
        model=model,
        system=system,
        messages=(Message("user", text),),
        metadata=metadata,
    )


async def test_first_matching_rule_wins_in_order() -> None:
    model = ScriptedModel(
        {
            "rules": [
                {"task_type": "plan", "reply": "plan-reply"},
                {"contains": "weather", "reply": "weather-reply"},
                {"model": "big", "reply": "big-reply"},
                {"reply": "fallback"},
                {"reply": "never"},
            ]
        }
    )

    assert (await model.complete(req("weather?", task_type="plan"))).text == (
        "plan-reply"
    )
    assert (await model.complete(req("weather?", task_type="research"))).text == (
        "weather-reply"
    )
    assert (await model.complete(req("hello", model="big"))).text == "big-reply"
    assert (await model.complete(req("hello"))).text == "fallback"


async def test_all_matchers_of_a_rule_must_match() -> None:
    model = ScriptedModel(
        [
            {"task_type": "plan", "contains": "urgent", "reply": "urgent plan"},
            {"task_type": "plan", "reply": "plain plan"},
        ]
    )

    assert (await model.complete(req("urgent!", task_type="plan"))).text == (
        "urgent plan"
    )
    assert (await model.complete(req("later", task_type="plan"))).text == ("plain plan")


async def test_contains_searches_system_and_every_message_with_dotall() -> None:
    model = ScriptedModel([{"contains": "alpha.*omega", "reply": "found"}])
    request = ModelRequest(
        model="m",
        system="alpha starts here",
        messages=(Message("user", "middle"), Message("assistant", "omega")),
    )

    response = await model.complete(request)

    assert response.text == "found"


async def test_reply_substitutes_groups_and_leaves_json_braces_alone() -> None:
    model = ScriptedModel(
        [
            {
                "contains": r"goal: (?P<goal>\w+) by (\w+)",
                "reply": (
                    '{"tasks": [{"title": "research {goal}", "owner": "{2}",'
                    ' "whole": "{0}", "unknown": "{missing}", "oob": "{9}"}]}'
                ),
            }
        ]
    )

    response = await model.complete(req("goal: rockets by friday"))

    assert json.loads(response.text) == {
        "tasks": [
            {
                "title": "research rockets",
                "owner": "friday",
                "whole": "goal: rockets by friday",
                "unknown": "{missing}",
                "oob": "{9}",
            }
        ]
    }


def test_render_reply_without_a_match_changes_nothing() -> None:
    assert render_reply('{"a": "{1}"}', None) == '{"a": "{1}"}'


async def test_tokens_are_deterministic_and_realistic() -> None:
    model = ScriptedModel([{"reply": "x" * 41}])
    request = req("y" * 30, system="s" * 9)

    first = await model.complete(request)
    second = await model.complete(request)

    # Input: system + "\n" + message = 9 + 1 + 30 = 40 chars -> 10 tokens.
    assert first.tokens_in == 10
    assert first.tokens_out == math.ceil(41 / 4) == 11
    assert first.tokens_cached == 0
    assert first == second
    assert first.scripted
    assert first.provider == "scripted"
    assert first.model == "m"
    assert first.raw == {"scripted": True, "rule": 0, "text": "x" * 41}


async def test_empty_reply_still_counts_one_token() -> None:
    response = await ScriptedModel([{"reply": ""}]).complete(req(""))

    assert (response.tokens_in, response.tokens_out) == (1, 1)


async def test_no_rule_is_terminal_and_quotes_the_last_user_message() -> None:
    model = ScriptedModel([{"task_type": "plan", "reply": "p"}])
    long_text = "please do the thing " + "z" * 300

    with pytest.raises(TerminalModelError) as caught:
        await model.complete(req(long_text, task_type="review"))

    message = str(caught.value)
    assert message.startswith("scripted model has no rule for this request")
    assert "'review'" in message
    assert long_text[:200] in message
    assert long_text[:201] not in message


async def test_fail_times_then_answers_with_retry_after() -> None:
    model = ScriptedModel(
        [
            {
                "reply": "finally",
                "fail_status": 429,
                "fail_times": 2,
                "retry_after": 1.5,
            }
        ]
    )

    for _ in range(2):
        with pytest.raises(RetryableModelError) as caught:
            await model.complete(req("hi"))
        assert caught.value.status == 429
        assert caught.value.retry_after == 1.5

    assert (await model.complete(req("hi"))).text == "finally"
    assert (await model.complete(req("hi"))).text == "finally"


async def test_fail_counter_is_per_instance() -> None:
    script = Script.from_dict([{"reply": "ok", "fail_status": 503, "fail_times": 1}])
    one, two = ScriptedModel(script), ScriptedModel(script)

    with pytest.raises(RetryableModelError):
        await one.complete(req("hi"))
    with pytest.raises(RetryableModelError):
        await two.complete(req("hi"))
    assert (await one.complete(req("hi"))).text == "ok"


async def test_fail_status_400_is_terminal() -> None:
    model = ScriptedModel([{"reply": "ok", "fail_status": 400, "fail_times": 1}])

    with pytest.raises(TerminalModelError) as caught:
        await model.complete(req("hi"))

    assert caught.value.status == 400
    assert (await model.complete(req("hi"))).text == "ok"


async def test_failures_only_count_matching_calls() -> None:
    model = ScriptedModel(
        [
            {"task_type": "plan", "reply": "p", "fail_status": 500, "fail_times": 1},
            {"reply": "other"},
        ]
    )

    assert (await model.complete(req("hi", task_type="x"))).text == "other"
    with pytest.raises(RetryableModelError):
        await model.complete(req("hi", task_type="plan"))
    assert (await model.complete(req("hi", task_type="plan"))).text == "p"


async def test_script_loads_from_json_file(tmp_path: Path) -> None:
    path = tmp_path / "script.json"
    path.write_text(json.dumps({"rules": [{"contains": "(\\d+)", "reply": "n={1}"}]}))

    model = ScriptedModel.from_file(path)

    assert (await model.complete(req("call 42"))).text == "n=42"
    assert Script.load(path) == model.script


def test_script_rejects_unknown_fields() -> None:
    with pytest.raises(msgspec.ValidationError):
        Script.from_dict([{"reply": "x", "contians": "typo"}])


async def test_scripted_model_drives_resilient_retries() -> None:
    sleeps: list[float] = []
    records: list[CallRecord] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def on_call(record: CallRecord) -> None:
        records.append(record)

    scripted = ScriptedModel(
        [{"reply": "done", "fail_status": 503, "fail_times": 1, "retry_after": 3}]
    )
    model = ResilientModel(
        [(scripted, "scripted-1")], PriceTable(), on_call=on_call, sleep=sleep
    )

    response = await model.complete(req("go"))

    assert response.text == "done"
    assert sleeps == [3.0]
    assert [r.error is None for r in records] == [False, True]
    assert records[-1].scripted
    assert records[-1].cost_usd == 0.0


@pytest.mark.parametrize(
    "rule",
    [
        {"reply": "done", "fail_status": 429, "fail_times": 1},
        {"reply": "done", "fail_status": 400, "fail_times": 1},
        {"task_type": "nothing-matches"},
    ],
    ids=["429", "400", "no-rule"],
)
async def test_a_failed_scripted_call_is_recorded_as_scripted(rule) -> None:
    records: list[CallRecord] = []

    async def on_call(record: CallRecord) -> None:
        records.append(record)

    async def sleep(seconds: float) -> None:
        pass

    model = ResilientModel(
        [(ScriptedModel([rule]), "scripted-1")],
        PriceTable(),
        on_call=on_call,
        sleep=sleep,
    )
    with contextlib.suppress(TerminalModelError):
        await model.complete(req("go"))

    assert records[0].error is not None
    assert all(r.scripted for r in records), records


def test_request_hash_is_stable_and_sensitive() -> None:
    a = req("hello", task_type="plan")
    b = ModelRequest(
        model="m",
        messages=(Message("user", "hello"),),
        metadata={"task_type": "plan"},
    )

    assert request_hash(a) == request_hash(b)
    assert len(request_hash(a)) == 64
    assert request_hash(a) != request_hash(req("hello!", task_type="plan"))


# --- tool calls -----------------------------------------------------------

TOOL_SCRIPT = [
    {
        "task_type": "execute",
        "turn": 0,
        "contains": r"Task: (?P<title>[^\n]+) in (\S+)",
        "reply": "Writing it down.",
        "tool_calls": [
            {
                "name": "workspace.write",
                "arguments": {
                    "path": "{2}",
                    "text": "# {title}",
                    "meta": {"tags": ["{title}", 3, "{nope}"], "n": 1},
                },
            },
            {"name": "orders.list_endpoints"},
        ],
    },
    {
        "task_type": "execute",
        "turn": 1,
        "contains": r"no such service: (\w+)",
        "reply": "{1} is missing.",
    },
    {"task_type": "execute", "turn": 1, "reply": "Written."},
]


def task_request(*messages: Message) -> ModelRequest:
    return ModelRequest(
        model="m",
        messages=(Message("user", "Task: audit notes in notes.md"), *messages),
        metadata={"task_type": "execute"},
        tools=(
            ToolSpec(name="workspace.write"),
            ToolSpec(name="orders.list_endpoints"),
        ),
    )


async def test_a_rule_calls_tools_with_rendered_arguments_and_stable_ids() -> None:
    model = ScriptedModel(TOOL_SCRIPT)

    response = await model.complete(task_request())

    assert response.text == "Writing it down."
    assert response.stop_reason == "tool_use"
    assert response.tool_calls == (
        ToolCall(
            id="call_0_0_0",
            name="workspace.write",
            arguments={
                "path": "notes.md",
                "text": "# audit notes",
                # Strings at any depth are rendered; other values and unknown
                # placeholders are left alone.
                "meta": {"tags": ["audit notes", 3, "{nope}"], "n": 1},
            },
        ),
        ToolCall(id="call_0_0_1", name="orders.list_endpoints", arguments={}),
    )
    assert response.raw["tool_calls"] == [
        msgspec.to_builtins(c) for c in response.tool_calls
    ]
    # Deterministic: the same request gets the same answer, ids included.
    assert await model.complete(task_request()) == response


async def test_turn_matches_the_number_of_assistant_turns_so_far() -> None:
    model = ScriptedModel(TOOL_SCRIPT)
    first = await model.complete(task_request())
    results = (
        ToolResult(call_id="call_0_0_0", content="ok"),
        ToolResult(
            call_id="call_0_0_1", content="no such service: orders", is_error=True
        ),
    )

    second = await model.complete(
        task_request(
            Message("assistant", first.text, tool_calls=first.tool_calls),
            Message("user", "", tool_results=results),
        )
    )

    # The tool error fed back is part of the text a rule's regex searches.
    assert second.text == "orders is missing."
    assert second.tool_calls == ()
    assert second.stop_reason == "end_turn"
    assert "tool_calls" not in second.raw

    ok = await model.complete(
        task_request(
            Message("assistant", first.text, tool_calls=first.tool_calls),
            Message("user", "", tool_results=results[:1]),
        )
    )
    assert ok.text == "Written."


async def test_turn_two_matches_no_rule_of_a_one_round_script() -> None:
    model = ScriptedModel(TOOL_SCRIPT)
    round_trip = (Message("assistant", "a"), Message("user", "b"))

    with pytest.raises(TerminalModelError):
        await model.complete(task_request(*round_trip, *round_trip))


async def test_ids_carry_the_rule_and_the_turn() -> None:
    model = ScriptedModel(
        [{"reply": "", "tool_calls": [{"name": "a.b"}, {"name": "c.d"}]}]
    )

    response = await model.complete(
        task_request(Message("assistant", "x"), Message("user", "y"))
    )

    assert [c.id for c in response.tool_calls] == ["call_0_1_0", "call_0_1_1"]


async def test_an_explicit_stop_reason_wins_over_tool_use() -> None:
    model = ScriptedModel(
        [{"reply": "", "stop_reason": "max_tokens", "tool_calls": [{"name": "t"}]}]
    )

    response = await model.complete(req("go"))

    assert response.stop_reason == "max_tokens"


async def test_tool_calls_count_as_output_tokens() -> None:
    model = ScriptedModel(
        [{"reply": "abcd", "tool_calls": [{"name": "t", "arguments": {"k": "v"}}]}]
    )

    response = await model.complete(req("go"))

    # "abcd" + "\n" + 't {"k":"v"}' = 4 + 1 + 11 = 16 characters -> 4 tokens.
    assert response.tokens_out == 4


def test_scripted_tool_calls_load_from_json_and_reject_unknown_fields() -> None:
    script = Script.from_dict(TOOL_SCRIPT)

    assert script.rules[0].turn == 0
    assert script.rules[0].tool_calls[1] == ScriptedToolCall(
        name="orders.list_endpoints"
    )
    assert Rule().tool_calls == ()
    assert Rule().turn is None
    with pytest.raises(msgspec.ValidationError):
        Script.from_dict([{"tool_calls": [{"name": "t", "args": {}}]}])
    with pytest.raises(msgspec.ValidationError):
        Script.from_dict([{"tool_calls": [{"arguments": {}}]}])
