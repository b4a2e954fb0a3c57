"""Fixtures shared by every test: the backend parameter and ports and sockets on loopback."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

import portio

# Hypothesis profiles: "ci" (the default run) and "nightly" (many more examples); pick one with
# HYPOTHESIS_PROFILE=nightly.
settings.register_profile(
    "ci", max_examples=25, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "nightly", max_examples=500, stateful_step_count=100, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def backends_under_test() -> list[str]:
    """Every backend available here, or just $PORTIO_BACKEND when it is set."""
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
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    with sock:
        yield sock


@pytest.fixture
def tcp_pair(port: portio.CompletionPort) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback TCP pair: the first is registered with ``port`` (key "ours"), the
    second is a plain blocking socket playing the peer."""
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
