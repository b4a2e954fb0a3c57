"""C10K and beyond: 15,000 idle connections to ``portio-echo serve``, every byte of one round
trip on each verified, and the server's memory per idle connection bounded.

The bound, :data:`KIB_PER_IDLE_CONNECTION`, is 3 KiB. Measured here with 15,000 connections
(``python -m portio.bench.idle`` runs all four servers in one run): uvloop 1.36 KiB, asyncio's
Protocol server 1.69, portio-echo 2.3-2.7 (io_uring and selector; the compiled build 2.65). What
a portio connection holds while idle is Python objects: the socket, the port's handle entry (its
two operation FIFOs, empty deques of 760 bytes each, are most of it), the pending receive's
Operation and the echo server's per-client data. 3 KiB is ~2.2x uvloop, above portio's figures
by more than the ~0.1 KiB run-to-run noise seen; any receive buffer held while idle breaks it at
once (the echo server's 64 KiB is 20x it, even a 4 KiB one is over). The kernel's socket memory
is not in the RSS, for any server. Marked ``slow`` (~5 s a backend here).
"""

from __future__ import annotations

import sys

import pytest

from portio.bench.idle import measure, portio_server, raise_fd_limit

CONNECTIONS = 15_000
#: See the module docstring for the measured figures this is argued from.
KIB_PER_IDLE_CONNECTION = 3.0


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the server's RSS is read from /proc (Linux)")
def test_15000_idle_connections_cost_a_few_kib_each(backend: str) -> None:
    needed = CONNECTIONS + 512
    soft = raise_fd_limit(needed)
    if soft < needed:
        pytest.skip(f"{CONNECTIONS} connections need {needed} descriptors in each process; "
                    f"the hard limit allows {soft}")
    report = measure(portio_server(backend), CONNECTIONS)
    print(f"\nidle connections [{backend}]: {report}")
    assert report["bytes_verified"] == CONNECTIONS * 64
    assert report["kib_per_connection"] <= KIB_PER_IDLE_CONNECTION, report
