"""Fixtures for the WebRTC backend tests: every same-backend and cross-backend pair."""

from __future__ import annotations

import pytest

from hotlink.webrtc import Backend, BackendUnavailableError, load_backend

# (offerer, answerer): both same-backend pairs and both cross-backend directions.
BACKEND_PAIRS = [
    ("libdatachannel", "libdatachannel"),
    ("aiortc", "aiortc"),
    ("libdatachannel", "aiortc"),
    ("aiortc", "libdatachannel"),
]
SHORT = {"libdatachannel": "ldc", "aiortc": "aiortc"}


def backend_or_skip(name: str) -> Backend:
    try:
        return load_backend(name)
    except BackendUnavailableError as exc:
        pytest.skip(f"{name} backend not available here: {exc}")


@pytest.fixture(
    params=BACKEND_PAIRS, ids=[f"{SHORT[a]}-offers-{SHORT[b]}-answers" for a, b in BACKEND_PAIRS]
)
def backends(request: pytest.FixtureRequest) -> tuple[Backend, Backend]:
    offerer, answerer = request.param
    return backend_or_skip(offerer), backend_or_skip(answerer)


@pytest.fixture(params=["libdatachannel", "aiortc"], ids=["ldc", "aiortc"])
def backend(request: pytest.FixtureRequest) -> Backend:
    return backend_or_skip(request.param)
