"""Progress lines of a benchmark run: on stderr, so stdout stays the report (or JSON)."""

from __future__ import annotations

import sys


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
