"""`bb schema` as other services use it: standard validators, real bodies.

The bodies are read back raw from a real stream: one event of every kind as
the store published it, and a blob stub (an event over ``blob_threshold``).
Python's ``jsonschema`` (Draft 2020-12) and ajv 8 in strict mode must both
compile the schema, accept every body, and refuse broken ones.

No ``format`` keyword is used: ajv's strict mode refuses a format it does not
know, and ``date-time`` is only known with the ajv-formats plugin. Timestamps
are described by a ``pattern`` instead, which every validator enforces with
no plugin; so ajv is compiled here exactly as a consumer would, with nothing
added.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import msgspec
import pytest

from blackboard.log import events as ev
from blackboard.log import subjects
from blackboard.log.store import JetStreamEventStore, StoreSettings, connect
from tests.samples import all_samples, sample

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

Body = dict[str, Any]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """What `bb schema` prints."""
    r = subprocess.run(
        [sys.executable, "-m", "blackboard.cli", "schema"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out: dict[str, Any] = json.loads(r.stdout)
    return out


@pytest.fixture
async def wire(nats_url: str) -> AsyncIterator[list[tuple[bool, Body]]]:
    """``(is_stub, body)`` of every stored message, as published."""
    nc = await connect(nats_url, name="test-schema")
    store = JetStreamEventStore(nc, StoreSettings(blob_threshold=4096))
    await store.ensure()
    try:
        for event in all_samples():
            await store.append(event)
        big = msgspec.structs.replace(
            sample(ev.ModelCalled), event_id="big", request={"text": "x" * 10_000}
        )
        await store.append(big)
        info = await store.js.stream_info(store.events_stream)
        out = []
        for seq in range(1, int(info.state.last_seq) + 1):
            msg = await store.js.get_msg(store.events_stream, seq)
            stub = subjects.H_BLOB in (msg.headers or {})
            out.append((stub, json.loads(msg.data or b"")))
        yield out
    finally:
        await nc.drain()


def _check_coverage(wire: list[tuple[bool, Body]]) -> None:
    kinds = {b["type"] for stub, b in wire if not stub}
    assert kinds == set(ev.KINDS), "a sample of every kind"
    assert [b["type"] for stub, b in wire if stub] == ["model_called"]


def _broken(wire: list[tuple[bool, Body]]) -> list[Body]:
    """Bodies every validator must refuse."""
    event = next(b for stub, b in wire if not stub and b["type"] == "task_failed")
    stub = next(b for is_stub, b in wire if is_stub)
    return [
        {k: v for k, v in event.items() if k != "at"},
        {**event, "type": "task_exploded"},
        {**event, "at": "yesterday"},
        {**event, "retryable": "yes"},
        {**stub, "blob_sha256": "not-a-digest"},
        {k: v for k, v in stub.items() if k != "blob_size"},
    ]


def test_the_schema_is_plain_json_schema(schema):
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "discriminator" not in json.dumps(schema)
    assert "BlobStub" in schema["$defs"]


@pytest.mark.integration
async def test_python_jsonschema_compiles_it_and_validates_every_body(schema, wire):
    _check_coverage(wire)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for _stub, body in wire:
        errors = [e.message for e in validator.iter_errors(body)]
        assert not errors, (body["type"], errors)
    for body in _broken(wire):
        assert not validator.is_valid(body), body


# --- ajv --------------------------------------------------------------------

_AJV_SCRIPT = """
const fs = require("fs");
const Ajv2020 = require("ajv/dist/2020");
const [schemaPath, bodiesPath] = process.argv.slice(1);
// strict: true throws on anything ajv does not know (keywords, formats, types).
const ajv = new Ajv2020({ strict: true, allErrors: true });
const validate = ajv.compile(JSON.parse(fs.readFileSync(schemaPath, "utf8")));
const bodies = JSON.parse(fs.readFileSync(bodiesPath, "utf8"));
console.log(JSON.stringify(
  bodies.map((b) => (validate(b) ? null : ajv.errorsText(validate.errors)))
));
"""


@pytest.fixture(scope="session")
def ajv_modules(request: pytest.FixtureRequest, tmp_path_factory) -> Path:
    """``node_modules`` holding ajv 8, installed once and cached across runs."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("npm and node are needed for the ajv check")
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("ajv8") if cache else tmp_path_factory.mktemp("ajv8")
    modules = Path(root) / "node_modules"
    if not (modules / "ajv" / "package.json").exists():
        subprocess.run(
            [npm, "install", "--prefix", str(root), "--no-audit", "--no-fund", "ajv@8"],
            capture_output=True,
            check=True,
            timeout=110,
        )
    return modules


def _ajv(modules: Path, tmp_path: Path, schema: Any, bodies: list[Body]) -> Any:
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    (tmp_path / "bodies.json").write_text(json.dumps(bodies))
    r = subprocess.run(
        [
            "node",
            "-e",
            _AJV_SCRIPT,
            str(tmp_path / "schema.json"),
            str(tmp_path / "bodies.json"),
        ],
        env={**os.environ, "NODE_PATH": str(modules)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.integration
async def test_ajv_strict_compiles_it_and_validates_every_body(
    schema, wire, ajv_modules, tmp_path
):
    _check_coverage(wire)
    good = [b for _stub, b in wire]
    bad = _broken(wire)
    verdicts = _ajv(ajv_modules, tmp_path, schema, good + bad)
    assert verdicts[: len(good)] == [None] * len(good), [
        (b["type"], v) for b, v in zip(good, verdicts, strict=False) if v
    ]
    assert all(verdicts[len(good) :]), verdicts[len(good) :]
