"""The workspace tools: read, write, list, search, undo, and confinement."""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

import pytest

from agents.tools import Invocation, Tool, ToolError, ToolRefused, workspace_tools
from agents.tools.workspace import MAX_ENTRIES, MAX_MATCHES, MAX_WRITE_BYTES

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """The goal's workspace; it does not exist until the first write."""
    return tmp_path / "workspaces" / "g1"


@pytest.fixture
def made(ws: Path) -> Path:
    """The workspace, created beforehand (for tests that put files in it)."""
    ws.mkdir(parents=True)
    return ws


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the workspace, with a secret in it."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret.txt").write_text("the secret\n")
    return d


TOOLS = {t.name: t for t in workspace_tools()}


async def call(ws: Path, name: str, **args: Any) -> Any:
    return await TOOLS[name].run(Invocation("g1", "t1", ws), args)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_the_four_tools_and_their_effects():
    assert {(t.name, t.effect, t.source) for t in TOOLS.values()} == {
        ("workspace.list", "read", "workspace"),
        ("workspace.read", "read", "workspace"),
        ("workspace.search", "read", "workspace"),
        ("workspace.write", "reversible", "workspace"),
    }
    assert [t.name for t in workspace_tools() if t.compensate] == ["workspace.write"]


def test_the_schema_a_model_sees():
    schema = TOOLS["workspace.read"].input_schema
    assert schema == {
        "type": "object",
        "properties": {
            "path": {
                "description": "The file to read. Relative to the workspace"
                " (e.g. 'notes/plan.md').",
                "type": "string",
            },
            "max_bytes": {
                "description": "Return at most this many bytes of the file"
                " (default 262144).",
                "anyOf": [
                    {"type": "integer", "minimum": 1, "maximum": 1048576},
                    {"type": "null"},
                ],
                "default": None,
            },
        },
        "required": ["path"],
        "additionalProperties": False,
    }
    for t in TOOLS.values():
        assert t.input_schema["type"] == "object"
        assert "$ref" not in str(t.input_schema)
        assert "$defs" not in t.input_schema
        assert t.spec().input_schema == t.input_schema


async def test_write_creates_parents_then_read_returns_it(ws: Path):
    out = await call(ws, "workspace.write", path="notes/plan.md", content="héllo\n")
    assert out == {
        "path": "notes/plan.md",
        "bytes": 7,
        "sha256": sha("héllo\n"),
        "previous": {"existed": False, "content": None, "sha256": None},
    }
    assert (ws / "notes" / "plan.md").read_text() == "héllo\n"
    assert await call(ws, "workspace.read", path="./notes//plan.md") == {
        "path": "notes/plan.md",
        "content": "héllo\n",
        "bytes": 7,
        "sha256": sha("héllo\n"),
        "truncated": False,
    }


async def test_a_second_write_records_what_it_replaced(ws: Path):
    await call(ws, "workspace.write", path="a.txt", content="one")
    (ws / "a.txt").chmod(0o640)
    out = await call(ws, "workspace.write", path="a.txt", content="two")
    assert out["previous"] == {"existed": True, "content": "one", "sha256": sha("one")}
    assert (ws / "a.txt").read_text() == "two"
    assert (ws / "a.txt").stat().st_mode & 0o777 == 0o640  # permissions kept
    assert sorted(os.listdir(ws)) == ["a.txt"]  # no temporary file left


@pytest.mark.usefixtures("made")
async def test_read_clips_a_long_file_with_a_note(ws: Path):
    (ws / "big.txt").write_text("é" * 10)  # 20 bytes
    out = await call(ws, "workspace.read", path="big.txt", max_bytes=5)
    # Five bytes end inside the third 'é': only whole characters are shown.
    assert out["content"] == "éé"
    assert out["bytes"] == 20
    assert out["truncated"] is True
    assert "first 5 of 20 bytes" in out["note"]
    assert out["sha256"] == sha("é" * 10)  # of the whole file


async def test_read_errors_the_model_can_act_on(ws: Path):
    with pytest.raises(ToolError, match=r"no such file: 'nope.txt'"):
        await call(ws, "workspace.read", path="nope.txt")
    (ws / "d").mkdir(parents=True)
    (ws / "bin").write_bytes(b"\x00\x01\x02")
    (ws / "latin1").write_bytes("café".encode("latin-1"))
    with pytest.raises(ToolRefused, match=r"'d' is a directory, not a file"):
        await call(ws, "workspace.read", path="d")
    with pytest.raises(ToolError, match=r"'bin' is a binary file"):
        await call(ws, "workspace.read", path="bin")
    with pytest.raises(ToolError, match=r"'latin1' is not UTF-8 text"):
        await call(ws, "workspace.read", path="latin1")
    with pytest.raises(
        ToolRefused, match=r"'latin1' is a file, not a directory \(in path 'latin1/x'\)"
    ):
        await call(ws, "workspace.read", path="latin1/x")


@pytest.mark.usefixtures("made")
async def test_a_fifo_is_refused_and_skipped_never_waited_on(ws: Path):
    os.mkfifo(ws / "pipe")
    with pytest.raises(ToolRefused, match=r"'pipe' is not a regular file"):
        await call(ws, "workspace.read", path="pipe")
    out = await call(ws, "workspace.search", pattern="x")
    assert (out["files"], out["skipped"]) == (0, 1)


async def test_list_is_recursive_sorted_and_marks_directories(ws: Path):
    for path in ["b.txt", "a/z.py", "a/b/c.md", "a-b.txt"]:
        await call(ws, "workspace.write", path=path, content="x")
    out = await call(ws, "workspace.list")
    assert out == {
        "path": ".",
        "entries": ["a/", "a/b/", "a/b/c.md", "a/z.py", "a-b.txt", "b.txt"],
        "truncated": False,
        "skipped": 0,
    }
    assert (await call(ws, "workspace.list", path="a", glob="*.py"))["entries"] == [
        "a/z.py"
    ]
    assert (await call(ws, "workspace.list", glob="a/b*"))["entries"] == [
        "a/b/",
        "a/b/c.md",
    ]


async def test_list_of_a_workspace_not_yet_created_is_empty(ws: Path):
    assert (await call(ws, "workspace.list"))["entries"] == []
    with pytest.raises(ToolError, match=r"no such directory: 'sub'"):
        await call(ws, "workspace.list", path="sub")


@pytest.mark.usefixtures("made")
async def test_list_is_bounded(ws: Path):
    for i in range(MAX_ENTRIES + 5):
        (ws / f"f{i:05}").touch()
    out = await call(ws, "workspace.list")
    assert len(out["entries"]) == MAX_ENTRIES
    assert out["entries"][0] == "f00000"
    assert out["truncated"] is True


async def test_search_finds_lines_by_text_or_regex(ws: Path):
    await call(
        ws, "workspace.write", path="src/app.py", content="def main():\n    print(1)\n"
    )
    await call(ws, "workspace.write", path="notes.md", content="call main() first\n")
    (ws / "blob.bin").write_bytes(b"main\x00\x00")
    out = await call(ws, "workspace.search", pattern="main()")
    assert out["matches"] == [
        {"path": "notes.md", "line": 1, "text": "call main() first"},
        {"path": "src/app.py", "line": 1, "text": "def main():"},
    ]
    assert (out["files"], out["skipped"], out["truncated"]) == (2, 1, False)
    # Plain text that is no valid regex is still found.
    out = await call(ws, "workspace.search", pattern="print(")
    assert [m["line"] for m in out["matches"]] == [2]
    out = await call(ws, "workspace.search", pattern=r"^\s+print\(\d\)$", glob="*.py")
    assert out["matches"] == [{"path": "src/app.py", "line": 2, "text": "    print(1)"}]
    out = await call(ws, "workspace.search", pattern="MAIN", path="notes.md")
    assert out["matches"] == []
    out = await call(ws, "workspace.search", pattern="(?i)MAIN", path="notes.md")
    assert len(out["matches"]) == 1


async def test_search_is_bounded(ws: Path):
    await call(
        ws, "workspace.write", path="many.txt", content="hit\n" * (MAX_MATCHES + 1)
    )
    out = await call(ws, "workspace.search", pattern="hit")
    assert len(out["matches"]) == MAX_MATCHES
    assert out["truncated"] is True


# --- undo -----------------------------------------------------------------


async def undo(ws: Path, args: dict[str, Any], result: Any) -> Any:
    compensate = TOOLS["workspace.write"].compensate
    assert compensate is not None
    return await compensate(Invocation("g1", "t1", ws), args, result)


async def test_undoing_a_write_restores_the_previous_content(ws: Path):
    await call(ws, "workspace.write", path="a.txt", content="before")
    args = {"path": "a.txt", "content": "after"}
    result = await TOOLS["workspace.write"].run(Invocation("g1", "t1", ws), args)
    assert await undo(ws, args, result) == {"path": "a.txt", "action": "restored"}
    assert (ws / "a.txt").read_text() == "before"
    # Again (a compensation retried after a crash): nothing left to do.
    assert await undo(ws, args, result) == {"path": "a.txt", "action": "none"}
    assert (ws / "a.txt").read_text() == "before"


async def test_undoing_the_write_that_created_a_file_deletes_it(ws: Path):
    args = {"path": "new/file.txt", "content": "x"}
    result = await TOOLS["workspace.write"].run(Invocation("g1", "t1", ws), args)
    assert await undo(ws, args, result) == {"path": "new/file.txt", "action": "deleted"}
    assert not (ws / "new" / "file.txt").exists()
    assert await undo(ws, args, result) == {"path": "new/file.txt", "action": "none"}


async def test_undo_refuses_when_the_file_changed_since(ws: Path):
    await call(ws, "workspace.write", path="a.txt", content="before")
    args = {"path": "a.txt", "content": "after"}
    result = await TOOLS["workspace.write"].run(Invocation("g1", "t1", ws), args)
    (ws / "a.txt").write_text("edited by someone else")
    with pytest.raises(
        ToolError, match=r"cannot undo the write of 'a.txt': the file changed since"
    ):
        await undo(ws, args, result)
    assert (ws / "a.txt").read_text() == "edited by someone else"
    (ws / "a.txt").unlink()
    with pytest.raises(ToolError, match=r"the file was deleted since"):
        await undo(ws, args, result)


async def test_undo_refuses_a_recorded_content_that_was_redacted(ws: Path):
    await call(
        ws, "workspace.write", path="k.txt", content="key sk-abcdefghijklmnopqrstu"
    )
    args = {"path": "k.txt", "content": "new"}
    result = await TOOLS["workspace.write"].run(Invocation("g1", "t1", ws), args)
    result["previous"]["content"] = "key [redacted]"
    with pytest.raises(ToolError, match=r"does not match its sha256"):
        await undo(ws, args, result)
    assert (ws / "k.txt").read_text() == "new"
    with pytest.raises(
        ToolError, match=r"recorded result is not one workspace.write returns"
    ):
        await undo(ws, args, {"path": "k.txt"})


@pytest.mark.usefixtures("made")
async def test_write_refuses_what_it_could_not_undo(ws: Path):
    (ws / "image.png").write_bytes(b"\x89PNG\xff\xfe")
    (ws / "huge.txt").write_text("x" * (MAX_WRITE_BYTES + 1))
    with pytest.raises(
        ToolRefused,
        match=r"'image.png' is not UTF-8 text, so a write could not be undone",
    ):
        await call(ws, "workspace.write", path="image.png", content="x")
    with pytest.raises(
        ToolRefused, match=r"'huge.txt' has 1048577 bytes, too many to keep"
    ):
        await call(ws, "workspace.write", path="huge.txt", content="x")
    with pytest.raises(ToolRefused, match=r"content has 1048577 bytes"):
        await call(
            ws, "workspace.write", path="n.txt", content="x" * (MAX_WRITE_BYTES + 1)
        )
    with pytest.raises(ToolRefused, match=r"the workspace itself"):
        await call(ws, "workspace.write", path=".", content="x")
    (ws / "d").mkdir()
    with pytest.raises(ToolRefused, match=r"'d' is a directory, not a file"):
        await call(ws, "workspace.write", path="d", content="x")
    with pytest.raises(
        ToolRefused,
        match=r"'huge.txt' is a file, not a directory \(in path 'huge.txt/a'\)",
    ):
        await call(ws, "workspace.write", path="huge.txt/a", content="x")


# --- confinement ----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../x", "path '../x' leaves the workspace"),
        ("a/../../x", "path 'a/../../x' leaves the workspace"),
        ("..", "path '..' leaves the workspace"),
        ("/etc/passwd", "absolute paths are not allowed"),
        ("a\x00b", "contains a NUL byte"),
        ("", "path is empty"),
    ],
)
@pytest.mark.parametrize("tool", ["workspace.read", "workspace.write"])
async def test_paths_out_of_the_workspace_are_refused(
    ws: Path, tool: str, path: str, reason: str
):
    args: dict[str, Any] = {"path": path}
    if tool == "workspace.write":
        args["content"] = "x"
    with pytest.raises(ToolRefused, match=reason.replace("(", r"\(")):
        await TOOLS[tool].run(Invocation("g1", "t1", ws), args)
    # Nothing was written, not even the workspace.
    assert not os.path.exists(ws)  # noqa: ASYNC240


async def test_list_and_search_are_confined_too(ws: Path):
    for tool, extra in [("workspace.list", {}), ("workspace.search", {"pattern": "x"})]:
        with pytest.raises(ToolRefused, match=r"leaves the workspace"):
            await call(ws, tool, path="..", **extra)
        with pytest.raises(ToolRefused, match=r"absolute paths are not allowed"):
            await call(ws, tool, path="/", **extra)


@pytest.mark.usefixtures("made")
async def test_a_symlink_pointing_out_is_refused_as_the_file(ws: Path, outside: Path):
    (ws / "link").symlink_to(outside / "secret.txt")
    with pytest.raises(
        ToolRefused, match=r"'link' is a symlink pointing out of the workspace"
    ):
        await call(ws, "workspace.read", path="link")
    with pytest.raises(
        ToolRefused, match=r"'link' is a symlink pointing out of the workspace"
    ):
        await call(ws, "workspace.write", path="link", content="overwritten")
    assert (outside / "secret.txt").read_text() == "the secret\n"


async def test_a_symlink_pointing_out_is_refused_as_a_parent_directory(
    ws: Path, outside: Path
):
    (ws / "sub").mkdir(parents=True)
    (ws / "sub" / "out").symlink_to(outside, target_is_directory=True)
    with pytest.raises(
        ToolRefused, match=r"'sub/out' is a symlink pointing out of the workspace"
    ):
        await call(ws, "workspace.read", path="sub/out/secret.txt")
    with pytest.raises(
        ToolRefused, match=r"'sub/out' is a symlink pointing out of the workspace"
    ):
        await call(ws, "workspace.write", path="sub/out/new.txt", content="x")
    with pytest.raises(
        ToolRefused, match=r"'sub/out' is a symlink pointing out of the workspace"
    ):
        await call(ws, "workspace.list", path="sub/out")
    assert sorted(os.listdir(outside)) == ["secret.txt"]


@pytest.mark.usefixtures("made")
async def test_a_dangling_symlink_out_and_a_loop_are_refused(ws: Path, tmp_path: Path):
    (ws / "dangling").symlink_to(tmp_path / "not-yet")
    with pytest.raises(ToolRefused, match=r"'dangling' is a symlink pointing out"):
        await call(ws, "workspace.write", path="dangling", content="x")
    assert not (tmp_path / "not-yet").exists()
    (ws / "loop").symlink_to(ws / "loop")
    with pytest.raises(ToolRefused, match=r"symlink loop"):
        await call(ws, "workspace.read", path="loop")


async def test_a_symlink_inside_the_workspace_is_followed(ws: Path):
    await call(ws, "workspace.write", path="real/data.txt", content="inside")
    (ws / "alias").symlink_to(ws / "real", target_is_directory=True)
    out = await call(ws, "workspace.read", path="alias/data.txt")
    assert out["content"] == "inside"


async def test_list_and_search_skip_symlinks_out_and_do_not_descend_links(
    ws: Path, outside: Path
):
    await call(ws, "workspace.write", path="real/data.txt", content="the secret? no")
    (ws / "out").symlink_to(outside, target_is_directory=True)
    (ws / "out-file").symlink_to(outside / "secret.txt")
    (ws / "alias").symlink_to(ws / "real", target_is_directory=True)
    listed = await call(ws, "workspace.list")
    assert listed["entries"] == ["alias/", "real/", "real/data.txt"]
    assert listed["skipped"] == 2
    found = await call(ws, "workspace.search", pattern="secret")
    assert found["matches"] == [
        {"path": "real/data.txt", "line": 1, "text": "the secret? no"}
    ]
    assert found["skipped"] == 2


async def test_a_workspace_reached_through_a_symlink_works(tmp_path: Path):
    (tmp_path / "real-ws").mkdir()
    (tmp_path / "ws-link").symlink_to(tmp_path / "real-ws", target_is_directory=True)
    ws = tmp_path / "ws-link"
    await call(ws, "workspace.write", path="a.txt", content="x")
    assert (await call(ws, "workspace.list"))["entries"] == ["a.txt"]


# --- arguments ------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "args", "message"),
    [
        ("workspace.read", {}, "Object missing required field `path`"),
        ("workspace.read", {"path": 3}, r"Expected `str`, got `int` - at `\$.path`"),
        (
            "workspace.read",
            {"path": "a", "max_bytes": 0},
            r"Expected `int` >= 1 - at `\$.max_bytes`",
        ),
        ("workspace.write", {"path": "a"}, "Object missing required field `content`"),
        ("workspace.list", {"glob": ["*"]}, r"Expected `str \| null`, got `array`"),
        ("workspace.search", {"pattern": ""}, r"Expected `str` of length >= 1"),
        (
            "workspace.search",
            {"pattern": "x", "recursive": True},
            "unknown field `recursive`",
        ),
        ("workspace.write", {"_raw": '{"path": "a", "cont'}, "not a JSON object"),
    ],
)
async def test_bad_arguments_are_refused_with_msgspec_s_message(
    ws: Path, tool: str, args: dict[str, Any], message: str
):
    with pytest.raises(
        ToolRefused, match=f"^invalid arguments for {tool}: .*{message}"
    ):
        await TOOLS[tool].run(Invocation("g1", "t1", ws), args)


def test_tool_objects_are_what_the_registry_takes():
    assert all(isinstance(t, Tool) for t in workspace_tools())
