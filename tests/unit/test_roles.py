"""Who may write what (blackboard/log/roles.py), the name `bb` records as who
did it, and a publish the server refuses told apart from a slow server.

The chart's permissions themselves are checked against roles.py in
tests/deploy/test_chart.py, and on a real server in
tests/security/test_nats_roles.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import nats.errors
import pytest
import typer

from blackboard.cli.common import whoami
from blackboard.errors import LogUnavailable, PermissionDenied
from blackboard.log import events as ev
from blackboard.log import roles
from blackboard.log.retry import retry, violation
from blackboard.runtime.config import NatsSettings, Settings
from blackboard.runtime.connection import nats_user

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_event_kind_has_a_writer_and_decisions_only_the_operator():
    written = {kind for kinds in roles.WRITES.values() for kind in kinds}
    assert written >= ev.KINDS, ev.KINDS - written
    for kind in ("approval_granted", "approval_denied", "goal_resumed"):
        assert roles.writers(kind) == {"operator"}
    assert roles.WRITES["projector"] == roles.WRITES["reader"] == frozenset()
    assert roles.event_subjects("submitter") == {"bb.in.evt.*.*.goal_submitted"}


def test_the_readmes_roles_table_is_roles_py():
    section = README.read_text().split("### Roles: who may write what")[1]
    rows = re.findall(r"^\| `(\w+)` \|[^|]*\|([^|]*)\|", section, re.M)
    table = {role: frozenset(re.findall(r"`(\w+)`", kinds)) for role, kinds in rows}
    assert table == roles.WRITES


def settings(**nats: str) -> Settings:
    return Settings(nats=NatsSettings(**nats))  # type: ignore[arg-type]


def test_the_nats_user_is_the_one_nats_py_authenticates_as():
    assert nats_user(settings()) is None
    assert nats_user(settings(user="ana", password="pw")) == "ana"
    assert nats_user(settings(url="nats://bo:pw@h:4222,nats://h2:4222")) == "bo"
    # The option wins over the URL, as in nats-py's CONNECT.
    assert nats_user(settings(url="nats://bo:pw@h:4222", user="ana")) == "ana"
    # A name with no password is a token; keys sign with no name at all.
    assert nats_user(settings(url="nats://s3cret@h:4222")) is None
    assert nats_user(settings(token="t", url="nats://bo:pw@h:4222")) is None
    assert nats_user(settings(creds="/x.creds", user="ana")) is None


def test_by_is_the_nats_user_and_another_name_is_refused(capsys):
    as_ana = settings(user="ana", password="pw")
    assert whoami(as_ana, None) == "ana"
    assert whoami(as_ana, "ana") == "ana"
    with pytest.raises(typer.Exit) as e:
        whoami(as_ana, "mallory")
    assert e.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--by mallory contradicts the NATS user ana" in err
    assert whoami(settings(), "mallory") == "mallory"  # no user: as before


async def test_a_refused_publish_is_raised_at_once_not_retried():
    reported: list[Exception] = []
    tries = 0

    async def publish() -> int:
        # What nats-py does: the server's report reaches the error callback
        # (and last_error), and the request itself times out.
        nonlocal tries
        tries += 1
        reported.append(
            nats.errors.Error(
                'nats: permissions violation for publish to "bb.in.evt.g._.goal_resumed"'
            )
        )
        raise nats.errors.TimeoutError

    with pytest.raises(PermissionDenied, match=r"goal_resumed.*Roles"):
        await retry(
            "append", publish, 30, lambda: violation(reported[-1] if reported else None)
        )
    assert tries == 1


async def test_a_timeout_after_an_old_violation_is_still_retried():
    old = nats.errors.Error('nats: permissions violation for publish to "x"')
    tries = 0

    async def slow() -> int:
        nonlocal tries
        tries += 1
        if tries < 3:
            raise nats.errors.TimeoutError
        return 7

    assert await retry("append", slow, 30, lambda: violation(old)) == 7
    with pytest.raises(LogUnavailable):
        await retry("append", _never, 0.05, lambda: violation(old))


async def _never() -> int:
    raise nats.errors.TimeoutError
