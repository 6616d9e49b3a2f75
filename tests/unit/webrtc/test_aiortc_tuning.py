"""The aiortc tuning as a whole: applied per peer on the releases it knows, stock behaviour
elsewhere, and a tuned peer carries bulk data intact to another tuned peer and to stock
aiortc, in both directions (loopback, host candidates only)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from typing import Any

import aiortc
import pytest
from aiortc.rtcsctptransport import RTCSctpTransport

from hotlink.webrtc import aiortc_tuning
from hotlink.webrtc.aiortc_backend import AiortcBackend
from hotlink.webrtc.aiortc_sctp import TunedSctpTransport
from hotlink.webrtc.aiortc_tuning import AiortcTuning, tune_sctp, tuning_supported
from hotlink.webrtc.pair import connect_pair

SIZE = 4 * 1024 * 1024


class FakePc:
    def __init__(self) -> None:
        self.sctp: Any = RTCSctpTransport.__new__(RTCSctpTransport)


def test_an_unknown_aiortc_release_runs_stock(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(aiortc_tuning, "_support", None)
    monkeypatch.setattr(aiortc, "__version__", "1.99.0")
    caplog.set_level(logging.INFO, logger="hotlink.webrtc.aiortc")
    pc = FakePc()
    assert not tuning_supported()
    assert not tune_sctp(pc)
    assert type(pc.sctp) is RTCSctpTransport
    assert "tuning off for untested aiortc 1.99.0" in caplog.text


def test_a_known_release_switches_the_association_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiortc_tuning, "_support", None)
    pc = FakePc()
    assert tune_sctp(pc)
    assert tune_sctp(pc)
    assert type(pc.sctp) is TunedSctpTransport
    assert not tune_sctp(FakePc(), AiortcTuning.stock())


async def transfer(offer: AiortcBackend, answer: AiortcBackend, *, reverse: bool) -> None:
    """SIZE bytes in messages of random sizes, one way; checks the sha256 and the order."""
    rng = random.Random(SIZE)
    data = rng.randbytes(SIZE)
    digest = hashlib.sha256()
    got = 0
    done = asyncio.Event()

    def sink(message: bytes) -> None:
        nonlocal got
        digest.update(message)
        got += len(message)
        if got >= SIZE:
            done.set()

    sinks: dict[str, Any] = {"answer_sink": sink} if not reverse else {"offer_sink": sink}
    async with await connect_pair(offer, answer, **sinks) as pair:
        sender = pair.answerer if reverse else pair.offerer
        for peer in (pair.offerer, pair.answerer):
            pc: Any = peer._pc  # type: ignore[attr-defined]
            tuned = peer._tuning.sctp  # type: ignore[attr-defined]
            assert (type(pc.sctp) is TunedSctpTransport) == tuned
        view = memoryview(data)
        pos = 0
        while pos < SIZE:
            # 1 byte to the largest message: single packets and long fragment runs.
            size = min(SIZE - pos, rng.choice([1, 100, 1200, 5000, 60 * 1024, 256 * 1024]))
            await sender.send(bytes(view[pos : pos + size]))
            pos += size
        await asyncio.wait_for(done.wait(), 120)
    assert got == SIZE
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("offer", "answer", "reverse"),
    [
        ("tuned", "tuned", False),
        ("tuned", "stock", False),
        ("stock", "tuned", False),
        ("tuned", "stock", True),
    ],
    ids=["tuned-to-tuned", "tuned-to-stock", "stock-to-tuned", "tuned-answerer-to-stock"],
)
async def test_bulk_data_arrives_intact_between_tuned_and_stock_aiortc(
    offer: str, answer: str, reverse: bool
) -> None:
    def backend(kind: str) -> AiortcBackend:
        return AiortcBackend(
            tuning=AiortcTuning() if kind == "tuned" else AiortcTuning.stock(),
        )

    await transfer(backend(offer), backend(answer), reverse=reverse)
