"""Why "symmetric NAT + all candidate types" once never opened (issue 6), kept as tests.

Found: when the TURN server has no route to a peer address, coturn's relay ``sendto()`` fails
with ENETUNREACH and coturn closes the whole allocation at once (log: ``closed (2nd stage)
... reason: general``). With all candidate types each peer asks its TURN allocation to check
the other's *host* candidate (a private LAN address), so both allocations die within
milliseconds of being made. The clients' next request on the same 5-tuple lands in a fresh
coturn session (``438 Wrong nonce``), and the allocation refresh ~15-20 s later gets ``437
Invalid allocation``. Relay-only peers never send to host candidates, so they worked.

The first namespace topology had no default route in the public namespace, which no host on
the internet lacks; the topology now has one (into a sink device), and the default
configuration connects. These tests keep both halves visible:

* the canary shows coturn still tears allocations down on ENETUNREACH; if it fails because
  the channel opens, coturn changed and the explanation above is history;
* the mitigations show what works even where the TURN server lacks such routes:
  ``denied-peer-ip`` for the private ranges (coturn then answers 403 to those permissions
  instead of sending, which is also the recommended hardening), or relay-only peers.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from hotlink.webrtc import BackendUnavailableError, load_backend
from nat.lab import NatLab
from nat.topology import LAN_NETS

pytestmark = [pytest.mark.nat, pytest.mark.slow]

OPEN_TIMEOUT = 20.0
NO_OPEN_WINDOW = 8.0
ALLOCATION_DROPPED = re.compile(r"session \d+: closed \(2nd stage\).* reason: general")


@pytest.fixture(autouse=True)
def _libdatachannel() -> None:
    try:
        load_backend("libdatachannel")
    except BackendUnavailableError as exc:
        pytest.skip(f"libdatachannel backend not available here: {exc}")


def test_canary_coturn_drops_allocations_when_a_peer_has_no_route(
    make_lab: Callable[..., NatLab], nat_report: Callable[[str], None]
) -> None:
    lab = make_lab(symmetric=True, internet_sink=False)
    result = lab.run_pair(ice="turn", open_timeout=NO_OPEN_WINDOW, label="no route, all types")
    dropped = ALLOCATION_DROPPED.findall(result.coturn_log)
    nat_report(
        f"canary (TURN server without a default route, all candidate types): "
        f"open={result.opened}, coturn dropped {len(dropped)} allocation(s)"
    )
    assert not result.opened and dropped, (
        "coturn no longer drops an allocation when relaying to an unroutable peer fails "
        "(or the channel opened anyway): the analysis in this module's docstring is out of "
        "date.\n" + result.explain()
    )


def _denied_private_lans() -> list[str]:
    return [f"--denied-peer-ip={net}.0-{net}.255" for net, _ in LAN_NETS.values()]


@pytest.mark.parametrize(
    ("coturn_args", "policy"),
    [(_denied_private_lans(), "all"), ([], "relay")],
    ids=["denied-peer-ip", "relay-only"],
)
def test_mitigations_without_a_route_to_the_lans(
    make_lab: Callable[..., NatLab],
    nat_report: Callable[[str], None],
    coturn_args: list[str],
    policy: str,
) -> None:
    lab = make_lab(symmetric=True, internet_sink=False, coturn_args=coturn_args)
    label = f"no route, {'denied-peer-ip' if coturn_args else 'relay-only policy'}"
    result = lab.run_pair(ice="turn", policy=policy, open_timeout=OPEN_TIMEOUT, label=label)
    nat_report(result.summary())
    assert result.opened, result.explain()
    assert not ALLOCATION_DROPPED.findall(result.coturn_log), result.explain()
