"""One log format for every process: ISO 8601 UTC stamps, text or one JSON object per line."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from hotlink.logs import LINE_TIME, format_time, parse_time, report_fatal, setup_logging


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def test_time_is_iso_utc_with_date_and_milliseconds_and_reads_back() -> None:
    assert format_time(0.0) == "1970-01-01T00:00:00.000Z"
    assert format_time(1738314487.1239) == "2025-01-31T09:08:07.123Z"
    assert parse_time("2025-01-31T09:08:07.123Z") == pytest.approx(1738314487.123)


def test_text_lines_keep_the_message_after_a_dated_prefix(restore_root_logging: None) -> None:
    out = io.StringIO()
    setup_logging("info", "text", stream=out)
    logging.getLogger("hotlink.client").info("connected to %s as %s", "http://x", "a@b.c")
    logging.getLogger("hotlink.client").debug("not shown at info")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    stamp = LINE_TIME.match(lines[0])
    assert stamp is not None
    assert lines[0][stamp.end() :] == "INFO hotlink.client: connected to http://x as a@b.c"


def test_json_lines_are_one_object_each_with_the_exception(restore_root_logging: None) -> None:
    out = io.StringIO()
    setup_logging("debug", "json", stream=out, quiet=["noisy.lib"])
    log = logging.getLogger("hotlink.server")
    log.debug("two\nlines → one record")
    logging.getLogger("noisy.lib").info("held at warning")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    docs = [json.loads(line) for line in lines]
    assert len(docs) == 2
    assert docs[0]["message"] == "two\nlines → one record"
    assert set(docs[0]) == {"time", "level", "logger", "message"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", docs[0]["time"])
    assert (docs[1]["level"], docs[1]["logger"]) == ("ERROR", "hotlink.server")
    assert "ValueError: boom" in docs[1]["exception"]


def test_fatal_is_a_plain_line_or_a_json_record(
    restore_root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("info", "text", stream=io.StringIO())
    report_fatal("the relay refused a@b.c: invalid email")
    assert capsys.readouterr().err == "error: the relay refused a@b.c: invalid email\n"
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    report_fatal("port in use")
    assert json.loads(out.getvalue())["message"] == "port in use"
    assert capsys.readouterr().err == ""
