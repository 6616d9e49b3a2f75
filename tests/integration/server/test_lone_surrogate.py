"""Text with no UTF-8 form, with the real relay: a JSON frame may escape a lone surrogate
(``\\ud800``), which no receiver could be sent. The relay refuses the frame to its sender
with a clear error; the sender, the session's receivers in both encodings, and every
bystander stay connected and keep working."""

from __future__ import annotations

import json

import pytest

from hotlink.protocol.codec import encode_json
from hotlink.protocol.messages import (
    Error,
    HotlinkAccept,
    HotlinkData,
    HotlinkOpen,
    Message,
    new_session_id,
)
from support.fixtures import unique_email
from support.server_proc import ServerProcess
from support.ws_client import connect


@pytest.fixture
def srv(relay_server_module: ServerProcess) -> ServerProcess:
    return relay_server_module


def with_surrogate(payload: HotlinkData | HotlinkOpen, field: str) -> str:
    """The JSON text of ``payload`` with ``\\ud800`` appended to ``field``."""
    obj = json.loads(encode_json(Message.new(payload)))
    obj["dat"][field] += "\ud800"
    return json.dumps(obj)  # ensure_ascii: the surrogate goes out as the escape \ud800


@pytest.mark.parametrize("case", ["data-path", "open-path", "data-sid"])
async def test_a_lone_surrogate_is_refused_and_every_connection_stays(srv, case):
    alice, bob, carol = unique_email("alice"), unique_email("bob"), unique_email("carol")
    async with (
        connect(srv.url, alice, encoding="json") as a,
        connect(srv.url, bob, encoding="json") as b,
        connect(srv.url, carol, encoding="msgpack") as c,
    ):
        await a.publish_acl(f"{alice}/app", read=["*"])
        for receiver in (b, c):
            await receiver.barrier()  # read the ACL file's broadcast
        sid = new_session_id()
        path = f"{alice}/app/chat.request"
        await a.send(HotlinkOpen(sid=sid, pth=path))
        for receiver in (b, c):
            assert (await receiver.expect(HotlinkOpen)).sid == sid
            await receiver.send(HotlinkAccept(sid=sid))
            await a.expect(HotlinkAccept)

        evil = {
            "data-path": with_surrogate(HotlinkData(sid=sid, seq=1, pth=path, pay=b"x"), "pth"),
            "open-path": with_surrogate(HotlinkOpen(sid=new_session_id(), pth=path), "pth"),
            "data-sid": with_surrogate(HotlinkData(sid=sid, seq=1, pth=path, pay=b"x"), "sid"),
        }[case]
        await a.send_raw(evil)
        error = await a.expect(Error)
        assert error.cod == 400 and "not valid Unicode" in error.msg

        # Nothing reached anyone, and everyone is still there.
        assert await b.barrier() == [] and await c.barrier() == []
        await a.send(HotlinkData(sid=sid, seq=1, pth=path, pay=b"fine"))
        assert (await b.expect(HotlinkData)).pay == b"fine"
        assert (await c.expect(HotlinkData)).pay == b"fine"
        assert await a.barrier() == []
    assert "Traceback" not in srv.log_text()
