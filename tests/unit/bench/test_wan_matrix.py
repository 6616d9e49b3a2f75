"""The WAN matrix's bookkeeping: which goal a shape has, what counts as measured, the
verdicts and the table; and the one measurement that needs no namespace (loopback)."""

from __future__ import annotations

import asyncio

import pytest
from bench.wan import rate_bits, tbf_args
from bench.wan_matrix import (
    Cell,
    CellResult,
    FlowResult,
    MatrixConfig,
    MatrixResult,
    all_cells,
    markdown,
    matrix_goals,
    windowed_throughput,
)

P2P = {"alice→bob": "p2p-host", "bob→alice": "p2p-host"}


def flow(path: str, mbit: float, rtt: float, transport: dict[str, str] | None = None) -> FlowResult:
    return FlowResult(
        path,
        throughput_mbit_s=mbit,
        rtt_ms={"p50": rtt, "p99": rtt},
        transport=transport if transport is not None else ({} if path.startswith("tcp") else P2P),
    )


def cell_result(cell: Cell, p2p_mbit: float, p2p_rtt: float, **extra: FlowResult) -> CellResult:
    flows = {
        "tcp-cubic": flow("tcp-cubic", 90.0, cell.rtt_ms),
        "tcp-bbr": flow("tcp-bbr", 95.0, cell.rtt_ms + 0.2),
        "p2p-libdatachannel": flow("p2p-libdatachannel", p2p_mbit, p2p_rtt),
    }
    flows.update(extra)
    return CellResult(cell, handshake_rtt_ms=cell.rtt_ms, flows=flows)


@pytest.mark.parametrize(
    ("rtt", "loss", "goal"),
    [(2, 0, 0.8), (20, 0, 0.8), (40, 0, 0.8), (80, 0, 0.5), (2, 1, 0.5), (40, 1, 0.5)],
)
def test_goal_per_shape_is_the_issues(rtt: float, loss: float, goal: float) -> None:
    assert Cell(rtt, loss, "100mbit").throughput_goal == goal


def test_full_matrix_has_every_shape_once() -> None:
    cells = all_cells()
    assert len({c.key for c in cells}) == len(cells) == 4 * 2 * 2
    assert all(c in cells for c in MatrixConfig.quick_config().cells)


def test_rates_parse_and_tbf_fits_a_frame() -> None:
    assert rate_bits("100mbit") == 100_000_000
    assert rate_bits("1gbit") == 1_000_000_000
    args = tbf_args("100mbit")
    assert int(args[args.index("burst") + 1]) >= 32 * 1024
    with pytest.raises(ValueError, match="100mbit"):
        rate_bits("fast")


def test_ratios_and_verdicts_against_each_tcp() -> None:
    near = Cell(20, 0, "100mbit")
    r = cell_result(near, p2p_mbit=76.0, p2p_rtt=20.5)
    assert r.ratio("libdatachannel", "cubic") == pytest.approx(76 / 90)
    # 0.84 of CUBIC meets 80 %, 0.8 of BBR meets it too; RTT 0.5 ms over the best TCP.
    assert r.verdict("libdatachannel", ["cubic", "bbr"]) == {
        "throughput_vs_cubic": True,
        "throughput_vs_bbr": True,
        "rtt": True,
    }
    slow = cell_result(near, p2p_mbit=40.0, p2p_rtt=22.0)
    assert slow.verdict("libdatachannel", ["cubic"]) == {"throughput_vs_cubic": False, "rtt": False}


def test_a_row_that_fell_back_to_the_websocket_is_not_measured() -> None:
    cell = Cell(40, 0, "100mbit")
    ws = flow("p2p-libdatachannel", 95.0, 40.0, transport={"alice→bob": "ws"})
    r = cell_result(cell, 0.0, 0.0, **{"p2p-libdatachannel": ws})
    assert r.ratio("libdatachannel", "cubic") is None
    assert set(r.verdict("libdatachannel", ["cubic"]).values()) == {None}


def test_goals_name_the_missed_cells_and_never_pass_on_gaps() -> None:
    cfg = MatrixConfig(cells=(Cell(2, 0, "100mbit"), Cell(80, 1, "100mbit")),
                       backends=("libdatachannel",))  # fmt: skip
    good = cell_result(cfg.cells[0], p2p_mbit=88.0, p2p_rtt=2.5)
    failed = flow("p2p-libdatachannel", 0.0, 0.0)
    failed.error = "StackError: boom"
    gap = cell_result(cfg.cells[1], 0.0, 0.0, **{"p2p-libdatachannel": failed})
    goals = {g.name: g for g in matrix_goals(MatrixResult(cfg, [good, gap]))}
    cubic = goals["WAN matrix: P2P libdatachannel throughput vs TCP CUBIC"]
    assert cubic.met is None and "1 not measured" in cubic.measured

    bad = cell_result(cfg.cells[1], p2p_mbit=10.0, p2p_rtt=90.0)
    goals = {g.name: g for g in matrix_goals(MatrixResult(cfg, [good, bad]))}
    cubic = goals["WAN matrix: P2P libdatachannel throughput vs TCP CUBIC"]
    assert cubic.met is False and "80ms-1%-100mbit 0.11x" in cubic.measured
    assert goals["WAN matrix: P2P libdatachannel RTT p50 vs TCP (64 B)"].met is False


def test_markdown_shows_every_cell_and_the_failures() -> None:
    cfg = MatrixConfig(cells=(Cell(2, 0, "100mbit"), Cell(40, 1, "300mbit")),
                       backends=("libdatachannel",))  # fmt: skip
    failed = flow("p2p-libdatachannel", 0.0, 0.0)
    failed.error = "RuntimeError: no data channel"
    rows = [
        cell_result(cfg.cells[0], 88.0, 2.5),
        cell_result(cfg.cells[1], 0.0, 0.0, **{"p2p-libdatachannel": failed}),
    ]
    rows[0].flows["p2p-libdatachannel"].cpu_busy = 0.934
    text = markdown(MatrixResult(cfg, rows, method="test"))
    assert "| 2 ms, no loss, 100 Mbit/s |" in text
    assert "| 88.0 (93%) |" in text
    assert "| 40 ms, 1 % loss, 300 Mbit/s |" in text
    assert "40ms-1%-300mbit p2p-libdatachannel: RuntimeError: no data channel" in text


async def test_windowed_throughput_counts_what_arrives() -> None:
    received: asyncio.Queue[asyncio.StreamReader] = asyncio.Queue(1)

    async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await received.put(r)
        await asyncio.sleep(5)
        w.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        reader = await asyncio.wait_for(received.get(), 10)
        window = await windowed_throughput(writer, reader, 0.05, 0.2)
        assert window.nbytes > 0 and window.seconds > 0
        # This test's own sending keeps at least part of one core busy.
        assert window.cpu_busy is not None and 0 < window.cpu_busy <= 1
        writer.transport.abort()
    finally:
        server.close()


async def test_windowed_throughput_reports_a_receiver_that_ends() -> None:
    reader = asyncio.StreamReader()
    reader.feed_eof()

    class Sink:
        def write(self, data: bytes) -> None:
            pass

        async def drain(self) -> None:
            await asyncio.sleep(0.01)

    with pytest.raises(RuntimeError, match="EOF"):
        await windowed_throughput(Sink(), reader, 0.01, 0.05)  # type: ignore[arg-type]
