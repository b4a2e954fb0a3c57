"""What the port keeps alive, and for how long: finalizers that call the port, operations
with timeouts that completed, and ports dropped without close()."""

from __future__ import annotations

import gc
import socket
import sys
import threading
import warnings
import weakref
from typing import Any

import pytest

import portio

from .loopback import WAIT, fd_count

Pair = tuple[socket.socket, socket.socket]


class CallsPortWhenCollected:
    """A ``data=`` object whose finalizer posts to the port, as a user's cleanup might."""

    def __init__(self, port: portio.CompletionPort, outcomes: list[object]) -> None:
        self.port = port
        self.outcomes = outcomes

    def __del__(self) -> None:
        try:
            self.port.post("from __del__")
            self.outcomes.append("posted")
        except portio.PortClosed as exc:
            self.outcomes.append(type(exc))  # (the exception's traceback would keep frames)


def close_within(port: portio.CompletionPort, limit: float = WAIT) -> None:
    closer = threading.Thread(target=port.close)
    closer.start()
    closer.join(limit)
    assert not closer.is_alive(), "close() deadlocked"


def test_close_drops_finalizers_outside_the_lock(backend: str, tcp_pair_factory: Any) -> None:
    port = portio.open_port(backend)
    ours, _peer = tcp_pair_factory()
    port.register(ours)
    outcomes: list[object] = []
    port.recv(ours, 100, data=CallsPortWhenCollected(port, outcomes))  # pending
    port.post("queued", data=CallsPortWhenCollected(port, outcomes))  # queued, never taken
    close_within(port)
    gc.collect()
    assert len(outcomes) == 2
    assert outcomes == [portio.PortClosed, portio.PortClosed]


def test_a_finalizer_that_posts_while_the_port_is_busy(port: portio.CompletionPort) -> None:
    outcomes: list[object] = []
    for _ in range(50):
        port.post("work", data=CallsPortWhenCollected(port, outcomes))
    keys: list[object] = []
    while keys.count("work") < 50:  # each completion dropped here posts again, from __del__
        completion = port.get(timeout=WAIT)
        keys.append(completion.key)
        del completion
    while len(keys) < 100:
        keys.append(port.get(timeout=WAIT).key)
    assert outcomes == ["posted"] * 50
    assert keys.count("from __del__") == 50


def test_completed_timed_operations_are_let_go_at_once(port: portio.CompletionPort,
                                                       tcp_pair: Pair) -> None:
    """An earlier deadline is pending (a keep-alive timer); operations with later deadlines
    that completed must not stay referenced (their buffers and data=) until then."""
    ours, _peer = tcp_pair
    with socket.socket() as other_server:
        other_server.bind(("127.0.0.1", 0))
        other_server.listen(1)
        other_server.setblocking(False)
        port.register(other_server)
        keep_alive = port.accept(other_server, timeout=3600)  # the earliest deadline, pending

        class Data:
            pass

        refs = []
        for i in range(200):
            data = Data()
            refs.append(weakref.ref(data))
            port.send(ours, b"x", data=data, timeout=7200 + i)
            del data
            completion = port.get(timeout=WAIT)
            assert completion.error is None
            del completion
        gc.collect()
        alive = sum(ref() is not None for ref in refs)
        assert alive == 0, f"{alive} completed operations still referenced by their deadline"
        assert keep_alive.cancel()
        assert port.get(timeout=WAIT).op is keep_alive


def test_a_dropped_port_releases_itself_and_nothing_of_the_callers(backend: str) -> None:
    baseline = fd_count()
    threads = threading.active_count()
    for _ in range(20):
        # A pair per port: Windows ties a socket to one completion port for its whole life.
        a, b = socket.socketpair()
        with a, b:
            port = portio.open_port(backend)
            port.register(a.fileno())  # an int: the caller's, never closed by the port
            port.recv(a.fileno(), 10)  # pending while the port is dropped
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                del port
                gc.collect()
            assert any(issubclass(w.category, ResourceWarning) for w in caught)
            a.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)  # still open: the caller's
            a.setblocking(True)
            b.sendall(b"ok")
            assert a.recv(10) == b"ok"  # and nothing of a dropped port consumed it
    assert fd_count() <= baseline, "dropped ports leaked descriptors"
    assert threading.active_count() <= threads


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="io_uring is Linux-only")
def test_a_dropped_io_uring_port_closes_its_ring() -> None:
    if portio.backend_status()["io_uring"] is not None:
        pytest.skip(f"io_uring is unavailable here: {portio.backend_status()['io_uring']}")
    from portio.backends import uring

    before = fd_count()
    for _ in range(50):
        port = portio.open_port("io_uring")
        port.post("x")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            del port
            gc.collect()
    assert fd_count() <= before
    assert not uring._LIVE, "a dropped port's in-flight registry was kept"


@pytest.fixture
def tcp_pair_factory() -> Any:
    made: list[socket.socket] = []

    def make() -> tuple[socket.socket, socket.socket]:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            peer = socket.create_connection(server.getsockname(), timeout=WAIT)
            ours, _ = server.accept()
        made.extend((ours, peer))
        return ours, peer

    yield make
    for sock in made:
        sock.close()
