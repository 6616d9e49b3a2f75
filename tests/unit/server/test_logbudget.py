"""The relay's log budget (``server/logbudget.py``), with a fake clock.

What an operator cares about: one user (or everyone together) cannot fill the log, and
nothing is silently forgotten: every line left out is reported, once, in a bounded number
of summary lines; memory stays bounded however many names a flood uses.
"""

from __future__ import annotations

import logging
import re

from hotlink.server.app import Relay, RelayConfig
from hotlink.server.logbudget import LogBudget, Skipped, summarize

WINDOW = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def budget(per_key: int = 3, total: int = 100, *, max_keys: int = 100) -> tuple[LogBudget, Clock]:
    clock = Clock()
    return LogBudget(per_key, total, window=WINDOW, max_keys=max_keys, clock=clock), clock


def allowed(b: LogBudget, key: str, times: int) -> int:
    return sum(b.allow(key) for _ in range(times))


def test_a_key_gets_its_burst_and_then_nothing_for_the_rest_of_the_window():
    b, _ = budget(per_key=3)
    assert [b.allow("mallory") for _ in range(5)] == [True, True, True, False, False]
    assert b.allow("alice")  # another key has its own burst


def test_all_keys_together_stop_at_the_total():
    b, _ = budget(per_key=5, total=7)
    assert allowed(b, "a", 5) == 5
    assert allowed(b, "b", 5) == 2
    assert not b.allow("c")  # a fresh key too: the relay-wide cap binds


def test_a_new_window_gives_each_key_and_the_total_a_fresh_budget():
    b, clock = budget(per_key=2, total=3)
    assert allowed(b, "a", 2) == 2 and allowed(b, "b", 2) == 1
    clock.now += WINDOW - 0.001
    assert not b.allow("a") and not b.allow("c")
    clock.now += 0.001
    assert allowed(b, "a", 3) == 2
    assert allowed(b, "b", 3) == 1  # the total again


def test_what_was_left_out_is_reported_once_after_the_window_ended():
    b, clock = budget(per_key=2)
    allowed(b, "alice", 3)  # 1 left out
    allowed(b, "mallory", 10)  # 8 left out
    assert b.due() == []  # the windows are still running
    clock.now += WINDOW
    assert b.due() == [Skipped("mallory", 8), Skipped("alice", 1)]  # most first
    assert b.due() == []  # each count is reported once
    allowed(b, "mallory", 5)
    clock.now += WINDOW
    assert b.due() == [Skipped("mallory", 3)]


def test_a_key_that_comes_back_after_its_window_has_both_windows_counted():
    b, clock = budget(per_key=1)
    allowed(b, "mallory", 4)  # 3 left out
    clock.now += WINDOW
    allowed(b, "mallory", 3)  # the old window ends here: 3 noted, 2 more left out
    assert b.due() == [Skipped("mallory", 3)]
    clock.now += WINDOW
    assert b.due() == [Skipped("mallory", 2)]


def test_keys_with_nothing_left_out_are_not_reported_and_are_forgotten():
    b, clock = budget(per_key=5)
    for i in range(50):
        b.allow(f"user{i}")
    clock.now += WINDOW
    assert b.due() == []
    assert len(b) == 0


def test_flush_reports_running_windows_too():
    b, _ = budget(per_key=1)
    allowed(b, "mallory", 6)
    assert b.due() == []
    assert b.flush() == [Skipped("mallory", 5)]
    assert b.flush() == []


def test_keys_are_bounded_and_an_evicted_key_keeps_its_count_among_the_others():
    b, _ = budget(per_key=1, max_keys=2)
    allowed(b, "a", 4)  # 3 left out
    allowed(b, "b", 2)  # 1 left out
    b.allow("a")  # a was used last: b is the oldest now (3 + 1 = 4 left out of a)
    allowed(b, "c", 1)  # evicts b
    assert len(b) == 2
    assert b.flush() == [Skipped("a", 4), Skipped(None, 1, 1)]


def test_a_flood_of_names_keeps_memory_bounded_and_loses_no_count():
    b, clock = budget(per_key=1, total=10**9, max_keys=16)
    for i in range(10_000):
        allowed(b, f"bot{i}@example.com", 3)  # 2 left out each
        assert len(b) <= 16
    clock.now += WINDOW
    report = b.due()
    assert sum(s.count for s in report) == 2 * 10_000
    assert len(report) <= 16 + 1
    others = [s for s in report if s.key is None]
    assert len(others) == 1 and others[0].keys == 10_000 - 16


def test_left_out_counts_waiting_for_a_report_are_bounded_too():
    """Windows that end one after another between two reports (a new name each time,
    back once its window is over, so its count waits for the next report)."""
    b, clock = budget(per_key=1, total=10**9, max_keys=8)
    for i in range(100):
        allowed(b, f"bot{i}", 2)  # 1 left out
        clock.now += WINDOW
        assert b.allow(f"bot{i}")  # a new window: the old one's count waits
    report = b.due()
    assert sum(s.count for s in report) == 100
    assert len(report) <= 8 + 1


# ---------------------------------------------------------------- summary lines


def test_summary_names_the_biggest_and_puts_the_rest_in_one_line():
    skipped = [Skipped(f"u{i}@example.com", 100 - i) for i in range(30)]
    skipped.append(Skipped(None, 7, 3))
    lines = summarize(skipped, "bad-input lines", limit=10)
    assert len(lines) == 11
    assert (
        lines[0] == "100 more bad-input lines from u0@example.com in the last minute (not logged)"
    )
    assert "u9@example.com" in lines[9] and "u10@example.com" not in "\n".join(lines)
    rest = sum(100 - i for i in range(10, 30)) + 7
    assert lines[10] == (
        f"{rest} more bad-input lines from {20 + 3} other(s) in the last minute (not logged)"
    )
    counts = [int(re.match(r"\d+", line).group()) for line in lines]  # type: ignore[union-attr]
    assert sum(counts) == sum(s.count for s in skipped)


def test_summary_of_a_few_keys_names_each():
    lines = summarize([Skipped("a@example.com", 5), Skipped("b@example.com", 2)], "connections")
    assert lines == [
        "5 more connections from a@example.com in the last minute (not logged)",
        "2 more connections from b@example.com in the last minute (not logged)",
    ]
    assert summarize([], "connections") == []


def test_summary_is_bounded_whatever_the_report():
    b, clock = budget(per_key=1, total=10**9, max_keys=4096)
    for i in range(5000):
        allowed(b, f"bot{i}", 2)
    clock.now += WINDOW
    assert len(summarize(b.due(), "connections")) <= 11


# ---------------------------------------------------------------- the relay's reports


def test_the_relay_reports_left_out_lines_once_their_window_ended(caplog):
    """What the relay's periodic report writes (every few seconds): nothing while the
    windows run, then one summary line, then nothing more."""
    clock = Clock()
    relay = Relay(RelayConfig())
    relay.bad_input_log = LogBudget(2, 100, window=WINDOW, clock=clock)
    relay.connection_log = LogBudget(1, 100, window=WINDOW, clock=clock)
    for _ in range(5):
        relay.bad_input_log.allow("mallory@example.com")
        relay.connection_log.allow("churn@example.com")
    caplog.set_level(logging.INFO, "hotlink.server")

    def reported() -> list[str]:
        lines = [r.getMessage() for r in caplog.records if r.name == "hotlink.server"]
        caplog.clear()
        return lines

    relay.report_skipped_lines()
    assert reported() == []
    clock.now += WINDOW
    relay.report_skipped_lines()
    assert reported() == [
        "4 more connections from churn@example.com in the last minute (not logged)",
        "3 more bad-input lines from mallory@example.com in the last minute (not logged)",
    ]
    relay.report_skipped_lines()
    relay.report_skipped_lines(everything=True)
    assert reported() == []
