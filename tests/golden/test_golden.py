"""Golden histories: recorded goals and what they must replay and project to.

Each ``tests/golden/<name>.ndjson`` is a real goal's export (see record.py);
``<name>.trace.txt``, ``<name>.trace.json`` and ``<name>.rows.txt`` are what
``bb replay --from-file``, ``--json`` and the projector made of it when they
were last accepted. Every test here re-derives one of them from the NDJSON
alone (no server) and fails on any byte of difference, with a unified diff.

A change that is meant to change an output regenerates them, to be reviewed
in the diff of the commit::

    UPDATE_GOLDEN=1 .venv/bin/pytest tests/golden -q

The histories themselves are recorded afresh only on purpose, with
``.venv/bin/python -m tests.golden.record`` (then the line above).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from tests.golden.derive import KINDS, derive

HERE = Path(__file__).resolve().parent
HISTORIES = sorted(HERE.glob("*.ndjson"))
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
MAX_DIFF_LINES = 200


def test_there_are_histories():
    assert {p.stem for p in HISTORIES} >= {"demo", "engine", "cancel"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("history", HISTORIES, ids=lambda p: p.stem)
def test_history_derives_to_its_golden_bytes(history: Path, kind: str):
    golden = history.with_suffix(f".{kind}")
    got = derive(history, kind)
    if UPDATE:
        golden.write_bytes(got)
        return
    assert golden.exists(), f"{golden.name} missing: UPDATE_GOLDEN=1 to write it"
    want = golden.read_bytes()
    if got != want:
        pytest.fail(_diff(golden.name, want, got), pytrace=False)


def _diff(name: str, want: bytes, got: bytes) -> str:
    lines = list(
        difflib.unified_diff(
            want.decode().splitlines(keepends=True),
            got.decode().splitlines(keepends=True),
            fromfile=f"{name} (golden)",
            tofile=f"{name} (derived now)",
        )
    )
    shown = "".join(lines[:MAX_DIFF_LINES])
    more = len(lines) - MAX_DIFF_LINES
    tail = f"\n... {more} more diff lines" if more > 0 else ""
    return (
        f"{name} differs from what the history derives to now:\n{shown}{tail}\n"
        "(intended? UPDATE_GOLDEN=1 .venv/bin/pytest tests/golden, then review)"
    )
