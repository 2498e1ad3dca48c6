"""NATS credentials and TLS from configuration: a locked server lets `bb` in
only with them, and says clearly when they are missing or wrong."""

from __future__ import annotations

import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest

from blackboard.log.server import EmbeddedServer
from tests.e2e.test_cli_basics import bb

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


pytestmark = pytest.mark.integration


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[EmbeddedServer]:
    conf = 'authorization { users = [ { user: "bb", password: "s3cret-pw" } ] }\n'
    server = EmbeddedServer(tmp_path / "nats", config=conf)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_user_and_password(locked, cli_env):
    env = dict(cli_env, BB_NATS_URL=locked.url)
    r = bb(["submit", "x"], env)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "authoriz" in r.stderr.lower()
    wrong = dict(env, BB_NATS_USER="bb", BB_NATS_PASSWORD="nope")
    assert bb(["submit", "x"], wrong).returncode == 1
    ok = dict(env, BB_NATS_USER="bb", BB_NATS_PASSWORD="s3cret-pw")
    r = bb(["submit", "x", "--json"], ok)
    assert r.returncode == 0, r.stderr
    assert "s3cret-pw" not in r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_tls_with_a_private_ca(tmp_path: Path, cli_env):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    conf = f'tls {{ cert_file: "{cert}"\n key_file: "{key}" }}\n'
    server = EmbeddedServer(tmp_path / "nats", config=conf)
    server.start()
    try:
        url = f"tls://127.0.0.1:{server.port}"
        env = dict(cli_env, BB_NATS_URL=url)
        r = bb(["submit", "x"], env)  # the server's certificate is not trusted
        assert r.returncode == 1 and "Traceback" not in r.stderr
        r = bb(["submit", "x", "--json"], dict(env, BB_NATS_TLS_CA=str(cert)))
        assert r.returncode == 0, r.stderr
    finally:
        server.stop()
