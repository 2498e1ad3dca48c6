"""The user's Python functions as tools: schema, calls, effects, bad specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.tools import (
    Invocation,
    ToolError,
    ToolRefused,
    ToolRegistry,
    python_tool,
    python_tools,
    tool,
)
from blackboard.errors import ConfigError

INV = Invocation(goal_id="g1", task_id="t1", workspace=Path("ws"))


def one(spec: str):
    [t] = python_tools([spec])
    return t


def test_the_schema_comes_from_the_typed_signature():
    t = one("tests.agents.pytools:describe")
    assert t.name == "python.describe"
    assert t.source == "python:tests.agents.pytools"
    assert t.description == "Describe a named series of counts."
    assert t.input_schema == {
        "type": "object",
        "properties": {
            "name": {"description": "The series' name.", "type": "string"},
            "counts": {
                "description": "How many of each, one per day.",
                "type": "array",
                "items": {"type": "integer"},
            },
            "origin": {
                "title": "Point",
                "description": "A point on the plane.",
                "type": "object",
                "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                "required": ["x", "y"],
            },
            "scale": {
                "description": "A factor applied to every count.",
                "type": "number",
                "default": 1.0,
            },
            "label": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "default": None,
            },
            "tags": {
                "description": "Free tags.",
                "type": "array",
                "items": {"type": "string"},
                "default": [],
            },
        },
        "required": ["name", "counts", "origin"],
        "additionalProperties": False,
    }
    assert "$ref" not in json.dumps(t.input_schema)


async def test_a_sync_function_is_called_with_converted_arguments():
    t = one("tests.agents.pytools:describe")
    out = await t.run(
        INV, {"name": "s", "counts": [1, 2, 3], "origin": {"x": 1, "y": 2}}
    )
    assert out == {
        "name": "s",
        "total": 6.0,
        "origin": {"x": 1, "y": 2},
        "label": None,
        "tags": [],
    }
    assert t.effect == "irreversible"  # undecorated: the conservative class
    assert t.compensate is None


async def test_an_async_function_is_awaited():
    t = one("tests.agents.pytools:add")
    assert await t.run(INV, {"a": 40}) == 42
    assert await t.run(INV, {"a": 1, "b": 1}) == 2


async def test_results_go_through_to_builtins():
    t = one("tests.agents.pytools:rows")
    assert await t.run(INV, {}) == [
        {"id": 0, "when": "day 0"},
        {"id": 1, "when": "day 1"},
    ]


async def test_a_non_empty_mutable_default_is_fresh_each_call_and_in_the_schema():
    t = one("tests.agents.pytools:defaults")
    assert t.input_schema["properties"]["items"]["default"] == [1, 2]
    assert await t.run(INV, {}) == [1, 2, 3]
    assert await t.run(INV, {}) == [1, 2, 3]  # not [1, 2, 3, 3]
    assert await t.run(INV, {"items": [], "flag": True}) == []  # positional-only


async def test_arguments_that_do_not_fit_are_refused_with_msgspec_s_message():
    t = one("tests.agents.pytools:describe")
    with pytest.raises(ToolRefused, match=r"missing required field `name`"):
        await t.run(INV, {"counts": [], "origin": {"x": 0, "y": 0}})
    with pytest.raises(
        ToolRefused, match=r"Expected `int`, got `str` - at `\$.counts\[1\]`"
    ):
        await t.run(INV, {"name": "s", "counts": [1, "2"], "origin": {"x": 0, "y": 0}})
    with pytest.raises(ToolRefused, match=r"unknown field `extra`"):
        await one("tests.agents.pytools:add").run(INV, {"a": 1, "extra": 2})


async def test_the_decorator_sets_effect_name_and_description():
    reads, add = python_tools(["tests.agents.pytools:TOOLS"])[::-1]
    assert (add.name, add.effect) == ("python.add", "irreversible")
    assert (reads.name, reads.effect, reads.description) == (
        "python.reads",
        "read",
        "Read only.",
    )
    assert await reads.run(INV, {"key": "k"}) == "K"
    # Two sources of tools meet in one registry.
    assert [
        t.name for t in ToolRegistry(python_tools(["tests.agents.pytools:TOOLS"])).all()
    ] == [
        "python.add",
        "python.reads",
    ]


async def test_a_reversible_function_is_undone_by_its_compensator(tmp_path: Path):
    t = one("tests.agents.pytools:record")
    assert t.effect == "reversible"
    ledger = tmp_path / "ledger.json"
    args = {"path": str(ledger), "entry": "e1"}
    result = await t.run(INV, args)
    assert json.loads(ledger.read_text()) == {"entry": "e1"}
    assert t.compensate is not None
    assert await t.compensate(INV, args, result) == {"undid": "e1"}
    assert json.loads(ledger.read_text()) == {"undone": "e1"}


async def test_an_exception_becomes_a_tool_error_with_its_type_and_message():
    with pytest.raises(ToolError, match=r"^ValueError: boom$") as info:
        await one("tests.agents.pytools:fail").run(INV, {"message": "boom"})
    assert not isinstance(info.value, ToolRefused)
    with pytest.raises(ToolError, match=r"^sorry: x$"):
        await one("tests.agents.pytools:fail_for_model").run(INV, {"message": "x"})


async def test_a_result_that_is_not_json_able_is_a_tool_error():
    t = one("tests.agents.pytools:unserialisable")
    with pytest.raises(ToolError, match=r"returned object, which is not JSON-able"):
        await t.run(INV, {})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.agents.pytools", "must be given as module:attribute"),
        (
            "tests.agents.no_such_module:x",
            "cannot import python tools module 'tests.agents.no_such_module'",
        ),
        ("tests.agents.pytools:nothing", "tests.agents.pytools has no 'nothing'"),
        (
            "tests.agents.pytools:NOT_CALLABLE",
            r"python tools: tests.agents.pytools:NOT_CALLABLE is not a function \(nor a list of functions\) but int 42",
        ),
        (
            "tests.agents.pytools:MIXED",
            r"item 1 of tests.agents.pytools:MIXED is not a function .* but str 'not a function'",
        ),
        ("tests.agents.pytools:Point", "is not a function"),
        (
            "tests.agents.pytools:untyped",
            "python tool tests.agents.pytools.untyped: parameter 'a' has no type annotation",
        ),
        ("tests.agents.pytools:star_args", r"\*values is not allowed"),
        ("tests.agents.pytools:star_kwargs", r"\*\*options is not allowed"),
        (
            "tests.agents.pytools:opaque",
            "parameter 'thing': its type .*Opaque.* has no JSON Schema",
        ),
        (
            "tests.agents.pytools:unresolved",
            "cannot read its signature: NameError: name 'NoSuchType'",
        ),
    ],
)
def test_bad_specs_are_config_errors_that_say_what_is_wrong(spec: str, message: str):
    with pytest.raises(ConfigError, match=message):
        python_tools([spec])


def test_a_module_that_raises_while_importing_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "broken_tools_mod.py").write_text("raise RuntimeError('no config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ConfigError,
        match=r"importing python tools module 'broken_tools_mod' failed: RuntimeError: no config",
    ):
        python_tools(["broken_tools_mod:f"])


def test_the_decorator_refuses_what_cannot_work():
    with pytest.raises(
        ConfigError,
        match=r"effect 'write' is not one of read, reversible, irreversible",
    ):
        tool("write")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"reversible tool needs compensate="):
        tool("reversible")
    with pytest.raises(
        ConfigError, match=r"compensate= is for reversible tools, not 'read' ones"
    ):
        tool("read", compensate=print)
    with pytest.raises(ConfigError, match=r"name '' is empty"):
        tool("read", name="")


def test_a_function_can_be_made_a_tool_directly():
    def local(x: int) -> int:
        """Double x."""
        return 2 * x

    t = python_tool(local, source="python:here")
    assert (t.name, t.source, t.description) == (
        "python.local",
        "python:here",
        "Double x.",
    )
    assert t.input_schema["required"] == ["x"]
