"""Completion routines: operations started with callback= run in dispatch(), never in get()."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest

import portio
from tests.contract.support import WAIT

Pair = tuple[socket.socket, socket.socket]


def test_callback_runs_in_dispatch_not_get(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    ran: list[tuple[portio.Completion, int]] = []
    op = port.recv(ours, 10, data="d",
                   callback=lambda c: ran.append((c, threading.get_ident())))
    peer.sendall(b"routine")
    with pytest.raises(TimeoutError):
        port.get(timeout=0.2)  # callback operations never come out of get
    assert port.dispatch(timeout=WAIT) == 1
    (completion, ident), = ran
    assert ident == threading.get_ident()  # in the calling thread
    assert completion.op is op and completion.result == b"routine"
    assert completion.key == "ours" and completion.data == "d"


def test_dispatch_times_out_with_zero(port: portio.CompletionPort) -> None:
    started = time.monotonic()
    assert port.dispatch(timeout=0.05) == 0
    assert time.monotonic() - started < WAIT
    assert port.dispatch(timeout=0) == 0


def test_dispatch_runs_everything_ready_in_order(port: portio.CompletionPort,
                                                 tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    order: list[int] = []
    def routine(i: int) -> Callable[[portio.Completion], None]:
        return lambda _: order.append(i)

    for i in range(5):
        port.recv(ours, 1, callback=routine(i))
    peer.sendall(b"12345")
    total = 0
    deadline = time.monotonic() + WAIT
    while total < 5 and time.monotonic() < deadline:
        total += port.dispatch(timeout=WAIT)
    assert total == 5 and order == [0, 1, 2, 3, 4]


def test_posts_do_not_wake_dispatch(port: portio.CompletionPort) -> None:
    port.post("for get")
    assert port.dispatch(timeout=0.05) == 0
    assert port.get(timeout=WAIT).key == "for get"


def test_a_failing_callback_keeps_the_rest_queued(port: portio.CompletionPort,
                                                 tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    ran: list[int] = []

    def boom(_: portio.Completion) -> None:
        raise RuntimeError("callback failed")

    port.recv(ours, 1, callback=boom)
    port.recv(ours, 1, callback=lambda c: ran.append(1))
    peer.sendall(b"ab")
    time.sleep(0.2)
    with pytest.raises(RuntimeError, match="callback failed"):
        while True:
            port.dispatch(timeout=WAIT)
    assert port.dispatch(timeout=WAIT) == 1 and ran == [1]


def test_routine_echo_round_trip(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    """The classic completion-routine echo: read-done starts the write, write-done the read."""
    ours, peer = tcp_pair
    echoed = bytearray()

    def on_read(c: portio.Completion) -> None:
        if c.result:
            port.send(ours, c.result, callback=on_write)

    def on_write(c: portio.Completion) -> None:
        echoed.extend(b"w")
        port.recv(ours, 100, callback=on_read)

    port.recv(ours, 100, callback=on_read)
    peer.sendall(b"one")
    deadline = time.monotonic() + WAIT
    while len(echoed) < 1 and time.monotonic() < deadline:
        port.dispatch(timeout=0.5)
    assert peer.recv(100) == b"one"


def test_callback_must_be_callable(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, _ = tcp_pair
    with pytest.raises(TypeError, match="callable"):
        port.recv(ours, 1, callback="not callable")  # type: ignore[arg-type]
