"""Waiting: a zero timeout still looks at the OS, a busy queue never starves I/O, and any
non-negative timeout (finite or infinite) works, for get, get_many, dispatch and operations."""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable

import pytest

import portio

from .loopback import WAIT

Pair = tuple[socket.socket, socket.socket]


def poll_until(probe: Callable[[], object], limit: float = WAIT) -> object:
    """Call ``probe`` (a zero-timeout poll) until it returns something truthy."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.001)
    raise AssertionError("a zero-timeout poll never saw the finished I/O")


def test_get_many_with_zero_timeout_reaps_the_os(port: portio.CompletionPort,
                                                 tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    op = port.recv(ours, 100)
    peer.sendall(b"polled")
    got = poll_until(lambda: port.get_many(timeout=0))
    assert isinstance(got, list) and [c.op for c in got] == [op]
    assert got[0].result == b"polled"


def test_get_with_zero_timeout_reaps_the_os(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    op = port.recv(ours, 100)
    peer.sendall(b"polled")

    def probe() -> portio.Completion | None:
        try:
            return port.get(timeout=0)
        except TimeoutError:
            return None

    completion = poll_until(probe)
    assert isinstance(completion, portio.Completion) and completion.op is op


def test_dispatch_with_zero_timeout_reaps_the_os(port: portio.CompletionPort,
                                                 tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    seen: list[bytes] = []
    port.recv(ours, 100, callback=lambda c: seen.append(c.result))
    peer.sendall(b"routine")
    poll_until(lambda: port.dispatch(timeout=0))
    assert seen == [b"routine"]


def test_a_queue_kept_busy_by_posts_still_delivers_io(port: portio.CompletionPort,
                                                      tcp_pair: Pair) -> None:
    """A thread keeps posting, so the queue is never empty when get looks; the recv's
    completion must still arrive, within a bounded time."""
    ours, peer = tcp_pair
    for _ in range(4):
        port.post("busy")
    stop = threading.Event()

    def keep_busy() -> None:
        while not stop.is_set():
            port.post("busy")
            time.sleep(0.0002)

    poster = threading.Thread(target=keep_busy)
    poster.start()
    try:
        op = port.recv(ours, 100)
        peer.sendall(b"starved?")
        deadline = time.monotonic() + WAIT
        while True:
            completion = port.get(timeout=WAIT)
            if completion.op is op:
                break
            assert completion.key == "busy"
            assert time.monotonic() < deadline, "I/O starved behind a never-empty queue"
    finally:
        stop.set()
        poster.join(WAIT)
    assert completion.result == b"starved?"


@pytest.mark.parametrize("timeout", [25 * 86400.0, 1e10, 1e300, math.inf])
def test_long_timeouts_work_everywhere(port: portio.CompletionPort, tcp_pair: Pair,
                                       timeout: float) -> None:
    ours, peer = tcp_pair
    # An operation with such a timeout must not break any wait on the port.
    waiting = port.recv(ours, 100, timeout=timeout)
    port.post("first")
    assert port.get(timeout=timeout).key == "first"
    port.post("second")
    assert [c.key for c in port.get_many(timeout=timeout)] == ["second"]
    peer.sendall(b"data")
    completion = port.get(timeout=timeout)
    assert completion.op is waiting and completion.result == b"data"
    port.recv(ours, 100, timeout=timeout, callback=lambda c: None)
    peer.sendall(b"more")
    assert port.dispatch(timeout=timeout) == 1


@pytest.mark.parametrize("timeout", [25 * 86400.0, 1e300, math.inf])
def test_a_long_wait_is_woken_by_a_post(port: portio.CompletionPort, timeout: float) -> None:
    threading.Timer(0.1, port.post, args=("late",)).start()
    assert port.get(timeout=timeout).key == "late"
