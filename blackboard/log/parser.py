"""nats-py's protocol parser, with the message lines parsed without regexes.

Nearly everything a busy client reads is ``MSG`` or ``HMSG``: nats-py's
parser tries two regular expressions on each (``MSG`` first, so an ``HMSG``
costs both) and awaits the client's handler per message. This one splits the
control line of those two at its first CRLF and hands a message taken raw
(``connect.Client.sinks``) over with a plain call; everything else (``+OK``,
``-ERR``, ``PING``, ``PONG``, ``INFO``, a line not complete yet) goes to
nats-py's own parser, unchanged. tests/contract/test_pull.py feeds both the
same random streams, cut at random places, and compares what they deliver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nats.errors import ProtocolError
from nats.protocol.parser import (
    AWAITING_CONTROL_LINE,
    AWAITING_MSG_PAYLOAD,
    CRLF_SIZE,
    Parser,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    Sink = Callable[[bytes, bytes, bytes, bytes | None], None]

_CRLF = b"\r\n"


class FastParser(Parser):
    """See the module doc; ``nc`` is the client whose ``sinks`` it serves."""

    async def parse(self, data: bytes = b"") -> None:
        """Parse what ``data`` completes, dispatching each message.

        The buffer is read as one ``bytes`` with a moving offset and cut once
        at the end, rather than sliced into new bytearrays and cut per
        message as nats-py's parser does.
        """
        buf = self.buf
        buf.extend(data)
        if not buf:
            return
        view = bytes(buf)
        pos = 0
        sinks: dict[int, Sink] = getattr(self.nc, "sinks", {})
        try:
            while pos < len(view):
                if self.state == AWAITING_CONTROL_LINE:
                    if not view.startswith((b"HMSG ", b"MSG "), pos):
                        del buf[:pos]
                        pos = 0
                        await super().parse()  # the rest, as nats-py does it
                        return
                    end = view.find(_CRLF, pos)
                    if end < 0:
                        return  # the line is not complete yet
                    self._control_line(view[pos:end])
                    pos = end + CRLF_SIZE
                    self.state = AWAITING_MSG_PAYLOAD
                    continue
                needed = self.needed
                if len(view) - pos < needed + CRLF_SIZE:
                    return  # wait for the rest of the payload
                arg = self.msg_arg
                hdr_size = self.header_needed
                hdr: bytes | None = None
                if hdr_size > 0:
                    hdr = view[pos : pos + hdr_size]
                    payload = view[pos + hdr_size : pos + needed]
                    self.header_needed = 0
                else:
                    payload = view[pos : pos + needed]
                pos += needed + CRLF_SIZE
                self.state = AWAITING_CONTROL_LINE
                sid = arg["sid"]
                sink = sinks.get(sid)
                if sink is not None:
                    stats = self.nc.stats
                    stats["in_msgs"] += 1
                    stats["in_bytes"] += len(payload)
                    sink(arg["subject"], arg["reply"], payload, hdr or None)
                else:
                    subject, reply = arg["subject"], arg["reply"]
                    await self.nc._process_msg(sid, subject, reply, payload, hdr)
        finally:
            if pos:
                del buf[:pos]

    def _control_line(self, line: bytes) -> None:
        """``MSG subj sid [reply] size`` or ``HMSG subj sid [reply] hsize size``."""
        parts = line.split()
        arg: dict[str, Any] = self.msg_arg
        try:
            if parts[0] == b"HMSG":
                if len(parts) == 6:
                    _, subject, sid, reply, hsize, size = parts
                elif len(parts) == 5:
                    _, subject, sid, hsize, size = parts
                    reply = b""
                else:
                    raise ValueError(line)
                self.header_needed = int(hsize)
            else:
                if len(parts) == 5:
                    _, subject, sid, reply, size = parts
                elif len(parts) == 4:
                    _, subject, sid, size = parts
                    reply = b""
                else:
                    raise ValueError(line)
            arg["subject"], arg["sid"], arg["reply"] = subject, int(sid), reply
            self.needed = int(size)
        except (ValueError, IndexError) as e:
            raise ProtocolError("nats: malformed MSG") from e
