"""A fake WebRTC library under the real :class:`PeerBase`, for unit tests of the shared half."""

from __future__ import annotations

from typing import Any

from hotlink.protocol.ice import IceCandidate
from hotlink.webrtc._common import PeerBase


class NullEvents:
    """PeerEvents that ignore everything."""

    def on_local_candidate(self, cand: IceCandidate | None) -> None:
        pass

    def on_channel_open(self) -> None:
        pass

    def on_message(self, data: bytes) -> None:
        pass

    def on_channel_closed(self, reason: str) -> None:
        pass


class FakePeer(PeerBase):
    """A library that records what it is given and whose buffer the test controls.

    Its ICE/DTLS state is set as a backend does, with ``_set_transport_up(True/False)``.
    """

    def __init__(self, events: Any, **kwargs: Any) -> None:
        super().__init__(events, **kwargs)
        self.applied: list[tuple[IceCandidate | None, str | None, int]] = []
        self.sent: list[bytes] = []
        self.open = False
        self.buffered = 0
        self.fail_candidates = False
        self.refuse = False

    async def _apply_candidate(
        self, cand: IceCandidate | None, mid: str | None, index: int
    ) -> None:
        if self.fail_candidates:
            raise ValueError("library rejected it")
        self.applied.append((cand, mid, index))

    def _send_now(self, data: bytes) -> None:
        if self.refuse:
            raise RuntimeError("association is going down")
        self.sent.append(data)

    def _channel_open(self) -> bool:
        return self.open

    def _buffered(self) -> int:
        return self.buffered

    def _create_channel(self) -> None:
        pass

    async def _local_description(self, kind: str) -> str:
        return ""

    async def _apply_remote_description(self, sdp: str, kind: str) -> None:
        pass

    async def create_offer(self) -> str:
        return ""

    async def accept_offer(self, sdp: str) -> str:
        await self._remote_description_applied(sdp)
        return ""

    async def set_answer(self, sdp: str) -> None:
        await self._remote_description_applied(sdp)

    def selected_candidate_type(self) -> str | None:
        return None

    async def close(self) -> None:
        self._closed = True
