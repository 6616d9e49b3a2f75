"""The JSON objects our own signal kinds carry in ``tok`` (``flow_credit``, ``p2p_host``)."""

from __future__ import annotations

import json
from typing import Any

from .errors import ProtocolError


def json_object(tok: str, what: str, max_len: int) -> dict[str, Any]:
    """The object in ``tok``; ProtocolError naming ``what`` when it is longer than
    ``max_len`` characters, not JSON, or not an object. Checking the length first keeps a
    hostile token from costing a parse."""
    if len(tok) > max_len:
        raise ProtocolError(f"{what} is {len(tok)} bytes; the limit is {max_len}")
    try:
        obj = json.loads(tok)
    except ValueError as exc:
        raise ProtocolError(f"{what} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return obj
