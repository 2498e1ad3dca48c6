"""The built-in workspace tools: read, write, list and search a goal's files.

Every goal has a directory of its own (:attr:`Invocation.workspace`, created
on the first write); these tools act inside it and nowhere else. A path is
taken relative to the workspace and refused, before anything is touched,
when it is absolute, holds a NUL byte, climbs out with ``..`` or passes
through a symbolic link that points out of the workspace (as any of its
components, the last included). Listing and searching never descend into a
symlinked directory, and skip links that point out.

``workspace.write`` is the only tool with an effect, and it is reversible:
its result records what the file held before, so its compensator can put it
back (or delete a file the write created), unless the file changed since. It
is idempotent too (the same content to the same path), so a write a dead
worker cut short is redone without asking; the redo records what the file
held at that moment, which is the new content if the first run got that far.
To keep that promise it refuses to overwrite what it could not restore: a
binary file, or one over :data:`MAX_WRITE_BYTES`.

Every path check resolves links at the moment of the call; something else
that swaps a directory for a link between the check and the file operation
is not defended against (the final component is opened with ``O_NOFOLLOW``).
"""

from __future__ import annotations

import asyncio
import codecs
import fnmatch
import hashlib
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar

import msgspec

from agents.tools.arguments import arguments_schema, parse_arguments
from agents.tools.registry import Tool, ToolError, ToolRefused

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from agents.tools.registry import Invocation

__all__ = [
    "MAX_ENTRIES",
    "MAX_MATCHES",
    "MAX_READ_BYTES",
    "MAX_WRITE_BYTES",
    "READ_BYTES",
    "SOURCE",
    "ListArgs",
    "ReadArgs",
    "SearchArgs",
    "WriteArgs",
    "previous_of",
    "undo_write",
    "workspace_tools",
]

SOURCE: Final = "workspace"

READ_BYTES: Final = 256 * 1024
"""What ``workspace.read`` returns of a file when ``max_bytes`` is not given."""
MAX_READ_BYTES: Final = 1024 * 1024
"""The most ``max_bytes`` may ask for."""
MAX_WRITE_BYTES: Final = 1024 * 1024
"""The largest content ``workspace.write`` writes, and the largest file it
overwrites (the old content is kept in its result, to undo the write)."""
MAX_ENTRIES: Final = 1000
"""Entries ``workspace.list`` returns at most."""
MAX_MATCHES: Final = 200
"""Matching lines ``workspace.search`` returns at most."""
MAX_SCAN: Final = 100_000
"""Directory entries one list or search visits at most, however few match."""
MAX_SEARCH_BYTES: Final = 4 * 1024 * 1024
"""Files bigger than this are skipped by ``workspace.search``."""
MAX_LINE_CHARS: Final = 300
"""A matching line is clipped to this many characters."""

_CHUNK: Final = 64 * 1024
_BINARY_PROBE: Final = 8 * 1024
"""A NUL byte in a file's first bytes marks it binary (what git does)."""


# --- arguments ------------------------------------------------------------


def _described(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


_PATH = "Relative to the workspace (e.g. 'notes/plan.md')."


class ReadArgs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The arguments of ``workspace.read``."""

    path: Annotated[str, _described("The file to read. " + _PATH)]
    max_bytes: Annotated[
        Annotated[int, msgspec.Meta(ge=1, le=MAX_READ_BYTES)] | None,
        _described(
            f"Return at most this many bytes of the file (default {READ_BYTES})."
        ),
    ] = None


class WriteArgs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The arguments of ``workspace.write``."""

    path: Annotated[
        str,
        _described(
            "The file to create or replace; missing parent directories are"
            " created. " + _PATH
        ),
    ]
    content: Annotated[str, _described("The file's whole new content (text).")]


class ListArgs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The arguments of ``workspace.list``."""

    path: Annotated[str, _described("The directory to list, recursively. " + _PATH)] = (
        "."
    )
    glob: Annotated[
        str | None,
        _described(
            "Only entries whose name or workspace path matches this glob"
            " ('*.py', 'src/*'; '*' also matches '/')."
        ),
    ] = None


class SearchArgs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The arguments of ``workspace.search``."""

    pattern: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            description=(
                "Text to find in each line: a line matches when it contains the"
                " text as written, or when the text, read as a Python regular"
                " expression, matches in it. '(?i)' ignores case."
            ),
        ),
    ]
    path: Annotated[
        str, _described("A directory to search recursively, or one file. " + _PATH)
    ] = "."
    glob: Annotated[
        str | None,
        _described(
            "Only files whose name or workspace path matches this glob ('*.md')."
        ),
    ] = None


class _Previous(msgspec.Struct):
    existed: bool
    content: str | None = None
    sha256: str | None = None


class _Written(msgspec.Struct):
    """What compensation needs of a recorded ``workspace.write`` result."""

    sha256: str
    previous: _Previous


# --- confinement ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    """A path the model gave, checked."""

    rel: str
    """Normalised, ``/``-separated, relative to the workspace (``.`` is it)."""
    real: Path
    """Absolute, links resolved; inside the resolved workspace."""


def _root(workspace: Path) -> Path:
    """The workspace, absolute and with its own links resolved."""
    return Path(os.path.abspath(workspace)).resolve()


def _confine(root: Path, path: str) -> _Target:
    """Check ``path`` against the workspace ``root`` and resolve it.

    Raises:
        ToolRefused: The path is empty, has a NUL byte, is absolute, leaves the
            workspace with ``..``, goes through a link that points out, or
            through a file as if it were a directory.
    """
    if "\x00" in path:
        raise ToolRefused(f"path {path!r} contains a NUL byte")
    if not path:
        raise ToolRefused("path is empty; give a path relative to the workspace")
    if os.path.isabs(path):
        raise ToolRefused(
            f"absolute paths are not allowed ({path!r}); give a path relative"
            " to the workspace"
        )
    rel = os.path.normpath(path)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise ToolRefused(f"path {path!r} leaves the workspace")
    try:
        real = (root / rel).resolve()
    except (OSError, RuntimeError) as e:
        # A symlink loop (RuntimeError before Python 3.13, OSError after);
        # the message would show the host's absolute paths: not passed on.
        raise ToolRefused(f"path {path!r} runs into a symlink loop") from e
    if not real.is_relative_to(root):
        link = _link_out(root, rel)
        if link is not None:
            raise ToolRefused(f"{link!r} is a symlink pointing out of the workspace")
        raise ToolRefused(f"path {path!r} leaves the workspace")
    target = _Target(rel=Path(rel).as_posix(), real=real)
    _check_parents(root, target)
    return target


def _check_parents(root: Path, target: _Target) -> None:
    """Refuse a path whose parent directories include a file."""
    for parent in reversed(target.real.parents):
        if parent.is_relative_to(root) and parent.exists() and not parent.is_dir():
            raise ToolRefused(
                f"{_relative(root, parent)!r} is a file, not a directory"
                f" (in path {target.rel!r})"
            )


def _link_out(root: Path, rel: str) -> str | None:
    """The first component of ``rel`` that is a link pointing out of ``root``."""
    parts = Path(rel).parts
    for i in range(1, len(parts) + 1):
        here = root.joinpath(*parts[:i])
        if here.is_symlink() and not _inside(root, here):
            return "/".join(parts[:i])
    return None


def _inside(root: Path, path: Path) -> bool:
    """Whether ``path``, links resolved, is in ``root`` (a loop is not)."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):
        return False


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix() or "."


def _matches(glob: str | None, rel: str) -> bool:
    return glob is None or (
        fnmatch.fnmatchcase(rel, glob)
        or fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], glob)
    )


@dataclass(frozen=True, slots=True)
class _Entry:
    rel: str
    path: Path
    is_dir: bool


@dataclass(slots=True)
class _Walk:
    """A bounded walk of a directory tree inside the workspace."""

    root: Path
    visited: int = 0
    skipped: int = 0
    """Links pointing out of the workspace (or in a loop), and unreadable
    directories."""
    exhausted: bool = False
    """True when :data:`MAX_SCAN` entries were visited before the end."""

    def entries(self, directory: Path) -> Iterator[_Entry]:
        """Every entry under ``directory``, depth first, sorted by name.

        Links that resolve inside the workspace are yielded but never
        descended into (no loops, no duplicates); those that point out are
        counted in :attr:`skipped` and not yielded.
        """
        # A stack, not recursion: a deep tree must not hit the recursion limit.
        stack = [iter(self._children(directory))]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                continue
            if self.visited >= MAX_SCAN:
                self.exhausted = True
                return
            self.visited += 1
            path = Path(child.path)
            rel = _relative(self.root, path)
            if child.is_symlink():
                if not _inside(self.root, path):
                    self.skipped += 1
                    continue
                yield _Entry(rel, path, path.is_dir())
            elif child.is_dir(follow_symlinks=False):
                yield _Entry(rel, path, True)
                stack.append(iter(self._children(path)))
            else:
                yield _Entry(rel, path, False)

    def _children(self, directory: Path) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(directory) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError:
            self.skipped += 1
            return []


# --- files ----------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _open_file(target: _Target) -> int:
    """Open a regular file for reading, without following a final link.

    Raises:
        FileNotFoundError: There is no such file.
        ToolRefused: It is a directory or not a regular file.
    """
    # O_NONBLOCK: opening a FIFO would otherwise wait for a writer, forever.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    fd = os.open(target.real, flags)
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        os.set_blocking(fd, True)
        return fd
    os.close(fd)
    if stat.S_ISDIR(mode):
        raise ToolRefused(
            f"{target.rel!r} is a directory, not a file; workspace.list shows"
            " what is in it"
        )
    raise ToolRefused(f"{target.rel!r} is not a regular file")


def _read(workspace: Path, args: ReadArgs) -> dict[str, Any]:
    root = _root(workspace)
    target = _confine(root, args.path)
    limit = args.max_bytes or READ_BYTES
    try:
        fd = _open_file(target)
    except FileNotFoundError:
        raise ToolError(f"no such file: {target.rel!r}") from None
    digest = hashlib.sha256()
    head = bytearray()
    size = 0
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if len(head) < limit:
                head += chunk[: limit - len(head)]
    truncated = size > len(head)
    if b"\x00" in head[:_BINARY_PROBE]:
        raise ToolError(f"{target.rel!r} is a binary file; workspace.read reads text")
    try:
        # Clipped at a byte count, the text may end inside a character: the
        # incremental decoder holds those bytes back instead of failing.
        content = codecs.getincrementaldecoder("utf-8")().decode(
            bytes(head), final=not truncated
        )
    except UnicodeDecodeError:
        raise ToolError(
            f"{target.rel!r} is not UTF-8 text; workspace.read reads text"
        ) from None
    result: dict[str, Any] = {
        "path": target.rel,
        "content": content,
        "bytes": size,
        "sha256": digest.hexdigest(),
        "truncated": truncated,
    }
    if truncated:
        result["note"] = (
            f"only the first {len(head)} of {size} bytes are shown"
            f" (max_bytes may ask for up to {MAX_READ_BYTES})"
        )
    return result


def _current(target: _Target, *, verb: str) -> tuple[bytes, int] | None:
    """The file's bytes and permission bits, or ``None`` if it does not exist.

    Refuses a file it would not be able to restore: bigger than
    :data:`MAX_WRITE_BYTES`, or not UTF-8 text.
    """
    try:
        fd = _open_file(target)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_size > MAX_WRITE_BYTES:
            raise ToolRefused(
                f"{target.rel!r} has {st.st_size} bytes, too many to keep for"
                f" undoing a write (at most {MAX_WRITE_BYTES}); workspace.write"
                f" does not {verb} it"
            )
        data = f.read(MAX_WRITE_BYTES + 1)
    try:
        data.decode()
    except UnicodeDecodeError:
        raise ToolRefused(
            f"{target.rel!r} is not UTF-8 text, so a write could not be undone;"
            f" workspace.write does not {verb} it"
        ) from None
    return data, stat.S_IMODE(st.st_mode)


def _replace(path: Path, data: bytes, mode: int | None) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file, then a rename.

    A reader (or a crash) sees the old content or the new, never a part.
    ``mode`` keeps the permissions of a file replaced; a new one gets the
    process's default.
    """
    # A short name of our own: the target's name may already be at the
    # length limit.
    tmp = path.with_name(f".bb-write-{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write(workspace: Path, args: WriteArgs) -> dict[str, Any]:
    root = _root(workspace)
    target = _confine(root, args.path)
    if target.real == root:
        raise ToolRefused("path '.' is the workspace itself; name a file in it")
    data = args.content.encode()
    if len(data) > MAX_WRITE_BYTES:
        raise ToolRefused(
            f"content has {len(data)} bytes; workspace.write writes at most"
            f" {MAX_WRITE_BYTES}"
        )
    before = _current(target, verb="overwrite")
    target.real.parent.mkdir(parents=True, exist_ok=True)
    _replace(target.real, data, before[1] if before else None)
    previous: dict[str, Any] = {"existed": False, "content": None, "sha256": None}
    if before is not None:
        previous = {
            "existed": True,
            "content": before[0].decode(),
            "sha256": _sha256(before[0]),
        }
    return {
        "path": target.rel,
        "bytes": len(data),
        "sha256": _sha256(data),
        "previous": previous,
    }


def _undo_write(workspace: Path, args: WriteArgs, recorded: Any) -> dict[str, Any]:
    try:
        written = msgspec.convert(recorded, _Written)
    except msgspec.ValidationError as e:
        raise ToolError(
            f"cannot undo the write of {args.path!r}: its recorded result is not"
            f" one workspace.write returns ({e})"
        ) from e
    root = _root(workspace)
    target = _confine(root, args.path)
    previous = written.previous
    before = _current(target, verb="restore")
    now = _sha256(before[0]) if before is not None else None
    # Already as it was (an undo that ran before, or a write that changed
    # nothing): nothing to do, which makes compensation safe to repeat.
    if now == (previous.sha256 if previous.existed else None):
        return {"path": target.rel, "action": "none"}
    if now is None:
        raise ToolError(
            f"cannot undo the write of {target.rel!r}: the file was deleted since"
        )
    if now != written.sha256:
        raise ToolError(
            f"cannot undo the write of {target.rel!r}: the file changed since"
            f" (sha256 {now[:12]}..., the write left {written.sha256[:12]}...)"
        )
    if not previous.existed:
        target.real.unlink()
        return {"path": target.rel, "action": "deleted"}
    if previous.content is None:
        raise ToolError(
            f"cannot undo the write of {target.rel!r}: what the file held before"
            " was not recorded (too big, or not text)"
        )
    old = previous.content.encode()
    if _sha256(old) != previous.sha256:
        # Redaction may have masked part of the recorded content: restoring
        # it would write something the file never held.
        raise ToolError(
            f"cannot undo the write of {target.rel!r}: the recorded previous"
            " content does not match its sha256 (redacted when recorded?)"
        )
    _replace(target.real, old, before[1] if before else None)
    return {"path": target.rel, "action": "restored"}


def undo_write(root: Path, path: str, recorded: Any) -> dict[str, Any]:
    """Undo a write of ``path`` under ``root``, from the write's recorded result.

    The result is what ``workspace.write`` returns (``sha256`` and
    ``previous``); the execute handler's artifact writes record the same.
    Puts the previous content back (or deletes a file the write created),
    refuses when the file changed since, and does nothing when it already
    holds what it held before, so it is safe to repeat. Blocking: run it in a
    thread.

    Raises:
        ToolError: The undo is refused; the message says why.
        ToolRefused: The path leaves ``root``.
        OSError: The file system failed.
    """
    return _undo_write(root, WriteArgs(path=path, content=""), recorded)


def previous_of(path: Path) -> dict[str, Any]:
    """What a file holds before a write, as the write's result records it.

    The content is kept only for a UTF-8 file of at most
    :data:`MAX_WRITE_BYTES`; otherwise only its sha256, and an undo refuses.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {"existed": False, "content": None, "sha256": None}
    content: str | None = None
    if len(data) <= MAX_WRITE_BYTES:
        try:
            content = data.decode()
        except UnicodeDecodeError:
            content = None
    return {"existed": True, "content": content, "sha256": _sha256(data)}


def _list(workspace: Path, args: ListArgs) -> dict[str, Any]:
    root = _root(workspace)
    target = _confine(root, args.path or ".")
    if not target.real.is_dir():
        if target.real.exists():
            raise ToolRefused(
                f"{target.rel!r} is a file, not a directory; workspace.read reads it"
            )
        if target.real != root:
            raise ToolError(f"no such directory: {target.rel!r}")
    walk = _Walk(root)
    entries: list[str] = []
    truncated = False
    if target.real.is_dir():
        for entry in walk.entries(target.real):
            if not _matches(args.glob, entry.rel):
                continue
            if len(entries) == MAX_ENTRIES:
                truncated = True
                break
            entries.append(entry.rel + "/" if entry.is_dir else entry.rel)
    return {
        "path": target.rel,
        "entries": entries,
        "truncated": truncated or walk.exhausted,
        "skipped": walk.skipped,
    }


def _compile(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None  # not a regular expression: plain text only


def _search(workspace: Path, args: SearchArgs) -> dict[str, Any]:
    root = _root(workspace)
    target = _confine(root, args.path or ".")
    walk = _Walk(root)
    files: Iterator[_Entry]
    if target.real.is_dir():
        files = (
            e
            for e in walk.entries(target.real)
            if not e.is_dir and _matches(args.glob, e.rel)
        )
    elif target.real.exists():
        files = iter([_Entry(target.rel, target.real, False)])
    elif target.real == root:
        files = iter([])
    else:
        raise ToolError(f"no such file or directory: {target.rel!r}")
    regex = _compile(args.pattern)
    matches: list[dict[str, Any]] = []
    searched = skipped = 0
    truncated = False
    for entry in files:
        text = _text(entry)
        if text is None:
            skipped += 1
            continue
        searched += 1
        for number, line in enumerate(text.splitlines(), start=1):
            if args.pattern in line or (regex is not None and regex.search(line)):
                if len(matches) == MAX_MATCHES:
                    truncated = True
                    break
                clipped = line[:MAX_LINE_CHARS]
                if len(line) > MAX_LINE_CHARS:
                    clipped += "..."
                matches.append({"path": entry.rel, "line": number, "text": clipped})
        if truncated:
            break
    return {
        "pattern": args.pattern,
        "path": target.rel,
        "matches": matches,
        "truncated": truncated or walk.exhausted,
        "files": searched,
        "skipped": skipped + walk.skipped,
    }


def _text(entry: _Entry) -> str | None:
    """A file's text, or ``None`` for one that is binary, huge or unreadable."""
    try:
        # The real path: a link found by the walk was checked to stay inside.
        fd = _open_file(_Target(entry.rel, entry.path.resolve()))
    except (OSError, RuntimeError, ToolRefused):
        return None
    with os.fdopen(fd, "rb") as f:
        if os.fstat(f.fileno()).st_size > MAX_SEARCH_BYTES:
            return None
        data = f.read(MAX_SEARCH_BYTES + 1)
    if b"\x00" in data[:_BINARY_PROBE]:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


# --- the tools ------------------------------------------------------------

A = TypeVar("A", bound=msgspec.Struct)


def _runner(
    name: str, struct: type[A], body: Callable[[Path, A], dict[str, Any]]
) -> Callable[[Invocation, dict[str, Any]], Awaitable[Any]]:
    """``run`` for a tool: check the arguments, do the work in a thread."""

    async def run(invocation: Invocation, arguments: dict[str, Any]) -> Any:
        args = parse_arguments(name, arguments, struct)
        try:
            return await asyncio.to_thread(body, invocation.workspace, args)
        except OSError as e:
            # strerror only: the full message would show the host's paths.
            raise ToolError(f"{name} failed: {e.strerror or type(e).__name__}") from e

    return run


async def _compensate_write(
    invocation: Invocation, arguments: dict[str, Any], result: Any
) -> Any:
    args = parse_arguments("workspace.write", arguments, WriteArgs)
    try:
        return await asyncio.to_thread(_undo_write, invocation.workspace, args, result)
    except OSError as e:
        raise ToolError(
            f"cannot undo the write of {args.path!r}: {e.strerror or type(e).__name__}"
        ) from e


def workspace_tools() -> list[Tool]:
    """The four workspace tools, by name."""
    return [
        Tool(
            name="workspace.list",
            description=(
                "List the files and directories in the workspace (or under"
                " 'path'), recursively, sorted; directories end with '/'."
                f" At most {MAX_ENTRIES} entries ('truncated' says when more"
                " exist). Symlinks pointing out of the workspace are skipped."
            ),
            input_schema=arguments_schema(ListArgs),
            effect="read",
            source=SOURCE,
            run=_runner("workspace.list", ListArgs, _list),
        ),
        Tool(
            name="workspace.read",
            description=(
                "Read a text file in the workspace. Returns its content, its"
                " size in bytes and its sha256; a long file is clipped"
                " ('truncated')."
            ),
            input_schema=arguments_schema(ReadArgs),
            effect="read",
            source=SOURCE,
            run=_runner("workspace.read", ReadArgs, _read),
        ),
        Tool(
            name="workspace.search",
            description=(
                "Search the text files in the workspace (or under 'path') for"
                " lines matching 'pattern'. Returns each match's path, line"
                f" number and text, at most {MAX_MATCHES}. Binary files are"
                " skipped."
            ),
            input_schema=arguments_schema(SearchArgs),
            effect="read",
            source=SOURCE,
            run=_runner("workspace.search", SearchArgs, _search),
        ),
        Tool(
            name="workspace.write",
            description=(
                "Create or replace a text file in the workspace with 'content'"
                " (its whole new content); parent directories are created."
                " Returns the new size and sha256, and what the file held before."
            ),
            input_schema=arguments_schema(WriteArgs),
            effect="reversible",
            source=SOURCE,
            run=_runner("workspace.write", WriteArgs, _write),
            compensate=_compensate_write,
            idempotent=True,
        ),
    ]
