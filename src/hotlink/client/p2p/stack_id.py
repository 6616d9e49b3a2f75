"""This process's network stack: the running kernel and the network namespace it sits in.

Two processes with the same id reach each other's addresses over the loopback device
(:mod:`hotlink.protocol.locality`). The kernel's boot id changes at every boot, and the
namespace's inode number is unique among live namespaces, so the pair names one stack for as
long as both ends can be running. Linux only; elsewhere there is no id and nothing changes.
"""

from __future__ import annotations

import functools
import logging
import os

log = logging.getLogger("hotlink.webrtc")

_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_NET_NS = "/proc/self/ns/net"


@functools.cache
def network_stack_id() -> bytes | None:
    """The id of this process's network stack, or None where it cannot be read."""
    try:
        with open(_BOOT_ID, encoding="ascii") as f:
            boot = f.read().strip()
        namespace = os.readlink(_NET_NS)
    except OSError as exc:
        log.debug("no network stack id here (%s): peers on this host use the default MTU", exc)
        return None
    return f"{boot}/{namespace}".encode()
