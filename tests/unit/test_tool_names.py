"""Tool names to wire names and back: pure, per request."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agents.models import Message, ModelRequest, ToolCall, ToolSpec
from agents.tool_names import MAX_WIRE_NAME, WireNames, is_wire_name, wire_name


def test_wire_name_replaces_dots_and_other_characters_and_clips() -> None:
    assert wire_name("workspace.write") == "workspace__write"
    assert wire_name("orders.list_endpoints") == "orders__list_endpoints"
    assert wire_name("mcp:git/log v2") == "mcp_git_log_v2"
    assert wire_name("already_fine-1") == "already_fine-1"
    assert wire_name("") == "_"
    assert wire_name("x" * 100) == "x" * MAX_WIRE_NAME
    assert is_wire_name(wire_name("é.ü" * 40))


def test_valid_names_are_sent_as_they_are_and_mapped_back() -> None:
    names = WireNames(["search", "workspace.write"])

    assert names.wire("search") == "search"
    assert names.wire("workspace.write") == "workspace__write"
    assert names.name("workspace__write") == "workspace.write"
    assert names.name("search") == "search"


def test_a_name_the_model_invents_stays_as_sent() -> None:
    names = WireNames(["workspace.write"])

    assert names.name("workspace.delete") == "workspace.delete"
    assert names.name("nothing__here") == "nothing__here"
    # An unknown Blackboard name still gets a valid wire form.
    assert names.wire("other.tool") == "other__tool"


def test_a_collision_is_made_unique_whatever_the_order() -> None:
    one = WireNames(["a.b", "a__b"])
    two = WireNames(["a__b", "a.b"])

    assert one.items() == two.items()
    # The name that is valid as it is keeps it; the other gets a hash suffix.
    assert one.wire("a__b") == "a__b"
    suffixed = one.wire("a.b")
    assert suffixed.startswith("a__b_")
    assert len(suffixed) == len("a__b_") + 8
    assert one.name(suffixed) == "a.b"
    assert one.name("a__b") == "a__b"


def test_long_names_sharing_a_prefix_stay_unique_and_short_enough() -> None:
    prefix = "orders." + "x" * 70
    names = WireNames([prefix + ".one", prefix + ".two", prefix + ".three"])

    wires = list(names.items().values())
    assert len(set(wires)) == 3
    assert all(is_wire_name(w) and len(w) <= MAX_WIRE_NAME for w in wires)
    for name, wire in names.items().items():
        assert names.name(wire) == name


def test_offered_tools_are_named_before_the_history() -> None:
    # "a__b" only occurs in an old turn; the offered "a.b" still gets the
    # plain wire form, so the tools list never changes because of history.
    names = WireNames(offered=["a.b"], also=["a__b"])

    assert names.wire("a.b") == "a__b"
    assert names.wire("a__b") != "a__b"
    assert names.name(names.wire("a__b")) == "a__b"
    assert WireNames(["a.b"]).wire("a.b") == names.wire("a.b")


def test_for_request_covers_tools_and_the_history_tool_calls() -> None:
    request = ModelRequest(
        model="m",
        messages=(
            Message("user", "go"),
            Message(
                "assistant",
                "",
                tool_calls=(ToolCall(id="c1", name="legacy.tool", arguments={}),),
            ),
        ),
        tools=(ToolSpec(name="workspace.write"),),
    )

    names = WireNames.for_request(request)

    assert names.items() == {
        "workspace.write": "workspace__write",
        "legacy.tool": "legacy__tool",
    }


@given(st.lists(st.text(max_size=80), max_size=12), st.lists(st.text(), max_size=4))
def test_wire_names_are_valid_unique_and_reversible(offered, also) -> None:
    names = WireNames(offered, also)
    mapping = names.items()

    assert set(mapping) == set(offered) | set(also)
    assert len(set(mapping.values())) == len(mapping)
    for name, wire in mapping.items():
        assert is_wire_name(wire)
        assert names.wire(name) == wire
        assert names.name(wire) == name
    # Deterministic, and independent of the order the names come in.
    assert WireNames(reversed(offered), reversed(also)).items() == mapping
