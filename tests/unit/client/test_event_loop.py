"""The event loop a daemon runs on: asyncio's by default, uvloop when asked for (``auto``:
where it imports), and a clear error when uvloop is asked for and missing."""

from __future__ import annotations

import asyncio
import sys

import pytest

from hotlink.event_loop import EventLoopError, loop_factory, loop_name, run
from hotlink.settings import ClientSettings, ServerSettings, SettingsError


async def _which() -> str:
    return loop_name(asyncio.get_running_loop())


def test_asyncio_choice_runs_the_standard_loop() -> None:
    assert loop_factory("asyncio") is None
    assert run(_which(), "asyncio") == "asyncio"


def test_auto_and_uvloop_run_uvloop_when_installed() -> None:
    pytest.importorskip("uvloop")
    assert run(_which(), "auto") == "uvloop"
    assert run(_which(), "uvloop") == "uvloop"


def test_auto_falls_back_when_uvloop_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import fails
    assert loop_factory("auto") is None
    assert run(_which(), "auto") == "asyncio"


def test_uvloop_asked_for_and_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    coro = _which()
    with pytest.raises(EventLoopError, match="uvloop"):
        run(coro, "uvloop")
    assert coro.cr_frame is None  # closed, so no "never awaited" warning


@pytest.mark.parametrize("cls", [ClientSettings, ServerSettings])
def test_setting_from_environment(cls: type[ClientSettings] | type[ServerSettings]) -> None:
    assert cls.load(env={}).event_loop == "asyncio"
    assert cls.load(env={"SYFTBOX_HOTLINK_EVENT_LOOP": "uvloop"}).event_loop == "uvloop"
    with pytest.raises(SettingsError, match="SYFTBOX_HOTLINK_EVENT_LOOP"):
        cls.load(env={"SYFTBOX_HOTLINK_EVENT_LOOP": "tokio"})
