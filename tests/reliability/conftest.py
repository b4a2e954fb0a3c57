"""Fixtures for the reliability suite.

``backend`` and ``port`` mirror the shared ones in ``tests/conftest.py`` (same names, same
meaning), so these tests run against every backend ``portio.available_backends()`` reports, or
only ``$PORTIO_BACKEND`` when it is set.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from hypothesis_profiles import load as load_hypothesis_profile

import portio

load_hypothesis_profile()


def backends_under_test() -> list[str]:
    """Every backend available here, or just ``$PORTIO_BACKEND`` when it is set."""
    chosen = os.environ.get("PORTIO_BACKEND")
    return [chosen] if chosen else portio.available_backends()


@pytest.fixture(params=backends_under_test())
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def port(backend: str) -> Iterator[portio.CompletionPort]:
    with portio.open_port(backend) as p:
        yield p


@pytest.fixture
def tcp_pair(port: portio.CompletionPort) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback TCP pair: the first is registered with ``port`` (key "ours"), the
    second is a plain blocking socket playing the peer (10 s timeout, so nothing hangs)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        peer = socket.create_connection(server.getsockname(), timeout=5)
        ours, _ = server.accept()
    peer.settimeout(10)
    port.register(ours, "ours")
    try:
        yield ours, peer
    finally:
        ours.close()
        peer.close()
