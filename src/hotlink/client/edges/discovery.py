"""Finding files by name in the local datasites tree: ACL files, IPC and tunnel markers.

The ACL publisher, the IPC hub and the TCP proxy each poll for their files every 250 ms; they
share this walk so that all of them skip the client's own ``.syftbox`` folder and see the
files in the same (sorted) order on every pass.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# Folders that hold the client's own state, never shared files or markers.
SKIP_DIRS = frozenset({".syftbox"})


def find_named(datasites: Path, name: str, under: Path | None = None) -> Iterator[tuple[str, str]]:
    """``(full path, datasite-relative path)`` of each file called ``name`` below ``under``
    (default: the whole tree), sorted; the relative path uses ``/`` on every platform."""
    for dirpath, dirnames, filenames in os.walk(under if under is not None else datasites):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        if name in filenames:
            full = os.path.join(dirpath, name)
            yield full, os.path.relpath(full, datasites).replace(os.sep, "/")
