"""`bb local-model` and `bb demo --real-local`: what a user types, refused or
answered in one line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from agents import local_model
from blackboard.cli import app
from tests.local_model.conftest import need_model


def invoke(*args: str, **env: str):
    return CliRunner().invoke(
        app, list(args), env={"BB_DATA_DIR": "/nonexistent", **env}
    )


def test_info_finds_the_bundled_model() -> None:
    need_model()
    r = invoke("local-model", "info", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["model"] == local_model.MODEL
    assert out["gguf"].endswith(".gguf") and out["bytes"] > 50_000_000
    assert out["servable"] is True and out["missing"] == []
    cmd = local_model.server_command(port=9999)
    assert cmd[cmd.index("--model") + 1] == out["gguf"]
    assert cmd[cmd.index("--model_alias") + 1] == local_model.MODEL


def test_real_local_refuses_a_deployment_it_would_share() -> None:
    r = invoke("demo", "--real-local", BB_NATS_URL="nats://127.0.0.1:4222")
    assert r.exit_code == 1, r.output
    assert "unset BB_NATS_URL" in r.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["demo", "--local-url", "http://x/v1"], "--local-url goes with --real-local"),
        (["demo", "--real-local", "--detach"], "does not go with --detach"),
        (
            ["demo", "--real-local", "--local-url", "ftp://x"],
            "give http://host:port/v1",
        ),
        (["local-model", "serve", "--port", "0"], "--port 0: give 1-65535"),
    ],
)
def test_contradictory_or_bad_flags_are_refused(args: list[str], says: str) -> None:
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    assert says in r.output
    assert "Traceback" not in r.output
