"""The transport's side of the p2p_host hint: the offerer sends it ahead of its offer, the
answerer makes its peer connection with large packets only for a peer on its own stack."""

from __future__ import annotations

from hotlink.protocol.locality import P2P_HOST, HostHint, encode_hint, host_tag, parse_hint
from hotlink.protocol.messages import HotlinkSignal
from unit.client.test_client_webrtc_fakes import SID, FakeBackend, make_transport, settle, until
from unit.client.test_client_webrtc_transport import offer_signal

STACK = b"boot/net:[1]"


def _backend(same_host_mtu: int = 4096) -> FakeBackend:
    backend = FakeBackend()
    backend.same_host_mtu = same_host_mtu
    return backend


def _hint(stack: bytes = STACK, mtu: int = 4096) -> HotlinkSignal:
    return HotlinkSignal(
        sid=SID, knd=P2P_HOST, tok=encode_hint(HostHint(host_tag(stack, SID), mtu))
    )


async def test_the_offerer_says_where_it_is_before_its_offer() -> None:
    transport, _, host = make_transport(backend=_backend(), stack_id=STACK)
    await transport.on_inbound_accepted(host.add(SID, "inbound"))
    await until(lambda: "sdp_offer" in host.kinds())
    assert host.kinds() == [P2P_HOST, "sdp_offer"]
    assert parse_hint(host.signals[0].tok) == HostHint(host_tag(STACK, SID), 4096)
    await transport.close()


async def test_no_hint_without_a_stack_id_or_a_backend_that_can_use_it() -> None:
    for backend, stack in ((_backend(), None), (_backend(0), STACK)):
        transport, _, host = make_transport(backend=backend, stack_id=stack)
        await transport.on_inbound_accepted(host.add(SID, "inbound"))
        kinds = host.kinds
        await until(lambda: "sdp_offer" in kinds())  # noqa: B023 (awaited in this pass)
        assert host.kinds() == ["sdp_offer"]
        await transport.close()


async def _answer(hint: HotlinkSignal | None, **config: object) -> tuple[int, str]:
    """The mtu the answerer's peer was made with, and its session's path info mtu."""
    backend = _backend()
    transport, _b, host = make_transport(backend=backend, **config)
    await transport.on_outbound_accepted(host.add(SID, "outbound"))
    if hint is not None:
        await transport.on_signal(hint)
    await transport.on_signal(offer_signal())
    await until(lambda: "sdp_answer" in host.kinds())
    info = transport.path_info(SID)
    await transport.close()
    assert info is not None
    return backend.mtus[0], str(info.mtu)


async def test_the_sender_uses_large_packets_only_for_a_peer_on_its_stack() -> None:
    assert await _answer(_hint(), stack_id=STACK) == (4096, "4096")
    assert await _answer(_hint(b"boot/net:[2]"), stack_id=STACK) == (0, "0")
    assert await _answer(None, stack_id=STACK) == (0, "0")
    assert await _answer(_hint(), stack_id=STACK, relay_only=True) == (0, "0")
    assert await _answer(_hint(), stack_id=STACK, mtu=1500) == (1500, "1500")


async def test_a_hint_after_the_offer_or_a_bad_one_changes_nothing() -> None:
    backend = _backend()
    transport, _b, host = make_transport(backend=backend, stack_id=STACK)
    await transport.on_outbound_accepted(host.add(SID, "outbound"))
    await transport.on_signal(HotlinkSignal(sid=SID, knd=P2P_HOST, tok="{not json"))
    await transport.on_signal(offer_signal())
    await until(lambda: "sdp_answer" in host.kinds())
    await transport.on_signal(_hint())
    await transport.on_signal(_hint())
    await settle()  # the session's task has applied them
    assert backend.mtus == [0] and len(backend.peers) == 1
    assert backend.peers[0].calls[0].startswith("accept_offer")
    await transport.close()


async def test_an_oversized_hint_is_dropped_at_the_door() -> None:
    transport, _, host = make_transport(backend=_backend(), stack_id=STACK)
    await transport.on_outbound_accepted(host.add(SID, "outbound"))
    await transport.on_signal(HotlinkSignal(sid=SID, knd=P2P_HOST, tok="x" * 10_000))
    assert transport.dropped_signals == 1
    await transport.close()
