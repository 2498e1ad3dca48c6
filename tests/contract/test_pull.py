"""The fast read path: the header parser and the raw pull reader.

The header parser must parse exactly as nats-py's own (it replaces it on
every connection); the Puller must give every message once, in order, on
our client and on a plain nats-py one, and end a fetch on the server's
statuses the way nats-py's fetch does.
"""

from __future__ import annotations

import random

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from blackboard.log.connect import Client, connect
from blackboard.log.pull import Puller, RawConsumer, RawMsg

_PIECES = [b"a", b"B", b" ", b"\t", b":", b"\r\n", b"\r", b"\n", b"\xc3\xa9",
           b"-", b"\x0b", b"\xff", b"1", b"\x00", b"Nats-Msg-Id", b": x"]


def test_header_parser_is_nats_pys_on_real_and_random_blocks():
    real = (
        b"Nats-Msg-Id: 01M97YCRCQMK7E2FCB8PNPDHRF\r\nBb-Schema: 1\r\n"
        b"Nats-Batch-Id: dce2\r\nNats-Batch-Sequence: 1\r\n"
        b"Nats-Batch-Commit: 1\r\n\r\n"
    )
    assert Client._parse_header_lines(real) == NatsClient._parse_header_lines(real)
    rng = random.Random(7)
    for _ in range(20_000):
        block = b"".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 24)))
        assert Client._parse_header_lines(block) == NatsClient._parse_header_lines(
            block
        ), block


def test_raw_message_positions_in_both_ack_subject_forms():
    v1 = RawMsg("s", b"$JS.ACK.S.C.1.55.3.1700000000.9", b"", None)
    v2 = RawMsg("s", b"$JS.ACK.dom.acc.S.C.1.56.3.1700000000.8.tok", b"", None)
    assert v1.position() == (55, 9)
    assert v2.position() == (56, 8)
    from blackboard.errors import StoreError

    with pytest.raises(StoreError, match="not a JetStream delivery"):
        RawMsg("s", b"_INBOX.x", b"", None).position()


def test_raw_message_headers_parse_only_on_demand():
    msg = RawMsg("s", b"", b"{}", b"NATS/1.0\r\nBb-Blob: abc\r\n\r\n")
    assert msg.has_header(b"Bb-Blob")
    assert not msg.has_header(b"Other")
    assert msg.headers == {"Bb-Blob": "abc"}
    assert RawMsg("s", b"", b"{}", None).headers is None


async def _stream_with(nc: NatsClient, n: int) -> str:
    js = nc.jetstream()
    await js.add_stream(name="PULLT", subjects=["pullt.>"])
    for i in range(n):
        await js.publish(f"pullt.{i % 3}", str(i).encode(), headers={"Bb-I": str(i)})
    cfg = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.ALL,
        mem_storage=True,
        inactive_threshold=30.0,
    )
    info = await js.add_consumer("PULLT", cfg)
    assert info.name is not None
    return info.name


@pytest.mark.integration
@pytest.mark.parametrize("plain", [False, True], ids=["bb-client", "nats-py"])
async def test_puller_reads_everything_once_in_order(nats_server, plain):
    nc = await (nats.connect(nats_server.url) if plain else connect(nats_server.url))
    try:
        name = await _stream_with(nc, 250)
        puller = await Puller(nc, "PULLT", name).start()
        seen: list[tuple[int, int, str | None]] = []
        while True:
            try:
                msgs = await puller.fetch(64, timeout=0.3)
            except nats.errors.TimeoutError:
                break
            assert 0 < len(msgs) <= 64
            for m in msgs:
                seq, _pending = m.position()
                assert m.headers is not None
                seen.append((seq, int(m.data), m.headers.get("Bb-I")))
        assert seen == [(i + 1, i, str(i)) for i in range(250)]
        # The last message said nothing is pending.
        assert _pending == 0
        await puller.close()
    finally:
        await nc.close()


@pytest.mark.integration
async def test_puller_waits_for_the_next_message_then_raises_on_deleted(nats_server):
    import asyncio

    nc = await connect(nats_server.url)
    try:
        name = await _stream_with(nc, 0)
        puller = await Puller(nc, "PULLT", name).start()
        with pytest.raises(nats.errors.TimeoutError):
            await puller.fetch(10, timeout=0.2)
        js = nc.jetstream()

        async def later() -> None:
            await asyncio.sleep(0.2)
            await js.publish("pullt.x", b"late")

        task = asyncio.create_task(later())
        msgs = await puller.fetch(10, timeout=3)  # woken by the one message
        await task
        assert [m.data for m in msgs] == [b"late"]
        await js.delete_consumer("PULLT", name)
        with pytest.raises(nats.js.errors.NotFoundError):
            await puller.fetch(10, timeout=0.3)
        await puller.close()
    finally:
        await nc.close()


def test_ack_info_reads_deliveries_sequence_time_and_pending():
    v1 = RawMsg("s", b"$JS.ACK.S.C.2.55.3.1700000000000000000.9", b"", None)
    v2 = RawMsg(
        "s", b"$JS.ACK.dom.acc.S.C.3.56.3.1700000000000000001.8.tok", b"", None
    )
    assert v1.ack_info() == (2, 55, 1700000000000000000, 9)
    assert v2.ack_info() == (3, 56, 1700000000000000001, 8)
    from blackboard.errors import StoreError

    with pytest.raises(StoreError, match="not a JetStream delivery"):
        RawMsg("s", b"$JS.ACK.S.C.x.55.3.1.9", b"", None).ack_info()


@pytest.mark.integration
async def test_raw_consumer_acks_naks_and_terms_like_nats_py(nats_server):
    """The projector's durable read raw: settling moves the server's state."""
    import asyncio
    from datetime import UTC, datetime

    nc = await connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="PULLT", subjects=["pullt.>"])
        for i in range(30):
            await js.publish(f"pullt.{i}", str(i).encode(), headers={"Bb-I": str(i)})
        await js.add_consumer(
            "PULLT",
            ConsumerConfig(
                durable_name="acks", ack_policy=AckPolicy.EXPLICIT, ack_wait=30
            ),
        )
        consumer = await RawConsumer(nc, "PULLT", "acks").start()
        got = await consumer.fetch(10, timeout=1)
        assert [d.seq for d in got] == list(range(1, 11))
        first = got[0]
        assert first.num_delivered == 1
        assert first.headers == {"Bb-I": "0"}
        assert first.timestamp is not None
        assert abs((datetime.now(UTC) - first.timestamp).total_seconds()) < 60
        for d in got[1:8]:
            await d.ack()
        await got[8].term()
        await first.in_progress()
        await first.nak()  # confirmed: redelivered at once
        again = await consumer.fetch(10, timeout=1)
        assert again[0].seq == 1 and again[0].num_delivered == 2
        assert 9 not in [d.seq for d in again]  # termed: never again
        for d in [*again, got[9]]:
            await d.ack()
        await asyncio.sleep(0.2)
        info = await js.consumer_info("PULLT", "acks")
        assert info.num_ack_pending == 0
        assert info.delivered.stream_seq == 19
        rest = await consumer.fetch(20, timeout=0.2)
        assert [d.seq for d in rest] == list(range(20, 31))
        await consumer.close()
        await js.delete_consumer("PULLT", "acks")
        assert await _gone(consumer, nc)
    finally:
        await nc.close()


async def _gone(consumer: RawConsumer, nc: NatsClient) -> bool:
    """A fetch from a deleted consumer is a StoreError, as nats-py's is."""
    from blackboard.errors import StoreError

    fresh = await RawConsumer(nc, "PULLT", "acks").start()
    try:
        await fresh.fetch(1, timeout=0.3)
    except StoreError:
        return True
    finally:
        await fresh.close()
    return False


class _Recorder:
    """What a parser hands a client: messages (raw to sinks), pings, infos."""

    def __init__(self, sink_sids: set[int]) -> None:
        self.got: list[tuple[object, ...]] = []
        self.stats = {"in_msgs": 0, "in_bytes": 0}
        self.sinks = {
            sid: (lambda s, r, d, h, sid=sid: self.got.append(("raw", sid, s, r, d, h)))
            for sid in sink_sids
        }

    async def _process_msg(self, sid, subject, reply, data, headers) -> None:
        # As connect.Client's: a sink takes its messages raw.
        sink = self.sinks.get(sid)
        if sink is not None:
            self.stats["in_msgs"] += 1
            self.stats["in_bytes"] += len(data)
            sink(subject, reply, data, headers or None)
            return
        self.got.append(("msg", sid, subject, reply, data, headers))

    async def _process_ping(self) -> None:
        self.got.append(("ping",))

    async def _process_pong(self) -> None:
        self.got.append(("pong",))

    async def _process_info(self, info) -> None:
        self.got.append(("info", info))

    async def _process_err(self, err) -> None:
        self.got.append(("err", err))


def _protocol(rng: random.Random) -> bytes:
    out = []
    for _ in range(rng.randint(1, 30)):
        op = rng.choice(["msg", "msg", "hmsg", "hmsg", "ping", "pong", "ok", "info"])
        subject = b"bb.evt.G%d.t%d.task_ready" % (rng.randint(0, 9), rng.randint(0, 99))
        sid = rng.randint(1, 4)
        reply = rng.choice([b"", b"$JS.ACK.S.C.1.%d.1.17.0" % rng.randint(1, 999)])
        body = bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 40)))
        body += rng.choice([b"", b"\r\n", b"MSG x 1 2\r\n", b"PING\r\n"])
        r = b" " + reply if reply else b""
        if op == "msg":
            out.append(b"MSG %s %d%s %d\r\n%s\r\n" % (subject, sid, r, len(body), body))
        elif op == "hmsg":
            hdr = b"NATS/1.0\r\nNats-Msg-Id: %d\r\n\r\n" % rng.randint(0, 99)
            if rng.random() < 0.2:
                hdr = b"NATS/1.0 404 No Messages\r\n\r\n"
            total = len(hdr) + len(body)
            out.append(
                b"HMSG %s %d%s %d %d\r\n%s%s\r\n"
                % (subject, sid, r, len(hdr), total, hdr, body)
            )
        elif op == "ping":
            out.append(b"PING\r\n")
        elif op == "pong":
            out.append(b"PONG\r\n")
        elif op == "ok":
            out.append(b"+OK\r\n")
        else:
            out.append(b'INFO {"server_id":"x","max_payload":1048576}\r\n')
    return b"".join(out)


async def test_the_fast_parser_delivers_what_nats_pys_does_however_the_bytes_come():
    from nats.protocol.parser import Parser

    from blackboard.log.parser import FastParser

    rng = random.Random(11)
    for _ in range(400):
        stream = _protocol(rng)
        cuts = sorted(rng.sample(range(len(stream)), min(len(stream), rng.randint(0, 8))))
        ends = [*cuts, len(stream)]
        pieces = [stream[a:b] for a, b in zip([0, *cuts], ends, strict=True)]
        sinks = {sid for sid in range(1, 5) if rng.random() < 0.5}
        theirs, ours = _Recorder(sinks), _Recorder(sinks)
        base, fast = Parser(theirs), FastParser(ours)
        for piece in pieces:
            await base.parse(piece)
            await fast.parse(piece)
        assert ours.got == theirs.got, stream
        assert ours.stats == theirs.stats
        assert bytes(fast.buf) == bytes(base.buf)


async def test_the_fast_parser_refuses_a_malformed_message_line():
    from nats.errors import ProtocolError

    from blackboard.log.parser import FastParser

    for line in (b"MSG a b\r\n", b"HMSG a 1 x y z w\r\n", b"MSG a one 3\r\n"):
        with pytest.raises(ProtocolError):
            await FastParser(_Recorder(set())).parse(line)
