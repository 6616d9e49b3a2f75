"""The machine CPU share shown next to the WAN matrix's throughput figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.machine_cpu import CpuTimes, busy_share, cpu_times, parse_cpu_line

# user nice system idle iowait irq softirq steal guest guest_nice
LINE = "cpu  100 5 45 800 50 0 0 0 7 0"


def test_the_aggregate_line_counts_idle_and_iowait_as_idle() -> None:
    assert parse_cpu_line(LINE) == CpuTimes(total=1000, idle=850)


@pytest.mark.parametrize("line", ["cpu0 1 2 3 4 5", "cpu 1 2", "intr 5 6 7 8 9 10"])
def test_other_lines_are_refused(line: str) -> None:
    with pytest.raises(ValueError):
        parse_cpu_line(line)


def test_busy_share_between_two_readings() -> None:
    start, end = CpuTimes(1000, 850), CpuTimes(1200, 900)
    assert busy_share(start, end) == pytest.approx(0.75)
    assert busy_share(end, start) is None
    assert busy_share(None, end) is None


def test_a_machine_without_proc_stat_has_no_figure(tmp_path: Path) -> None:
    assert cpu_times(tmp_path / "missing") is None
    bad = tmp_path / "stat"
    bad.write_text("garbage\n")
    assert cpu_times(bad) is None


def test_this_machine_reads() -> None:
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat")
    now = cpu_times()
    assert now is not None and now.total >= now.idle > 0
