"""Misuse gets a specific exception at once: never a crash, a hang or a leaked descriptor."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

import portio

Pair = tuple[socket.socket, socket.socket]


def test_register_rejects_non_handles(port: portio.CompletionPort) -> None:
    for bad in ("3", 3.0, None, True, object()):
        with pytest.raises(TypeError):
            port.register(bad)
    with pytest.raises(ValueError):
        port.register(-1)
    closed = socket.socket()
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        port.register(closed)


def test_operations_on_unregistered_handles(port: portio.CompletionPort) -> None:
    a, b = socket.socketpair()
    with a, b:
        calls: list[Callable[[], Any]] = [
            lambda: port.recv(a, 1), lambda: port.send(a, b"x"), lambda: port.accept(a),
            lambda: port.connect(a, ("127.0.0.1", 1)), lambda: port.recvfrom(a, 1),
            lambda: port.sendto(a, b"x", ("127.0.0.1", 1)), lambda: port.close_handle(a),
        ]
        for call in calls:
            with pytest.raises(ValueError, match="not registered"):
                call()


@pytest.mark.parametrize(("args", "error"), [
    ((0,), ValueError), ((-5,), ValueError), ((portio.MAX_IO_SIZE + 1,), ValueError),
    ((2**100,), ValueError), ((b"read-only",), TypeError), (("text",), TypeError),
    ((memoryview(b"ro"),), TypeError), ((bytearray(0),), ValueError), ((1.5,), TypeError),
    ((None,), TypeError), ((True,), TypeError),
])
def test_recv_argument_checks(port: portio.CompletionPort, tcp_pair: Pair,
                              args: tuple[Any, ...], error: type[Exception]) -> None:
    ours, _ = tcp_pair
    with pytest.raises(error):
        port.recv(ours, *args)


@pytest.mark.parametrize("bad", ["text", 42, None, [1, 2]])
def test_send_needs_bytes_like(port: portio.CompletionPort, tcp_pair: Pair, bad: Any) -> None:
    ours, _ = tcp_pair
    with pytest.raises(TypeError):
        port.send(ours, bad)


@pytest.mark.parametrize(("timeout", "error"), [
    (-1, ValueError), (float("nan"), ValueError), ("1", TypeError), (True, TypeError)])
def test_timeouts_are_checked(port: portio.CompletionPort, tcp_pair: Pair,
                              timeout: Any, error: type[Exception]) -> None:
    ours, _ = tcp_pair
    with pytest.raises(error):
        port.recv(ours, 1, timeout=timeout)
    with pytest.raises(error):
        port.get(timeout=timeout)
    with pytest.raises(error):
        port.dispatch(timeout=timeout)


def test_get_many_and_post_checks(port: portio.CompletionPort) -> None:
    with pytest.raises(ValueError):
        port.get_many(0)
    with pytest.raises(TypeError):
        port.get_many("3")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        port.post(nbytes=-1)
    with pytest.raises(ValueError):
        port.post(nbytes=2**32)
    with pytest.raises(TypeError):
        port.post(nbytes=1.0)  # type: ignore[arg-type]


def test_address_checks(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, _ = tcp_pair
    with pytest.raises(TypeError):
        port.connect(ours, "127.0.0.1:80")
    with pytest.raises(TypeError):
        port.connect(ours, ("127.0.0.1", "80"))
    with pytest.raises(ValueError):
        port.connect(ours, ("127.0.0.1", 70000))
    with pytest.raises(OSError):
        port.connect(ours, ("no such host.invalid", 80))


def test_file_offset_checks(port: portio.CompletionPort, tmp_path: Any) -> None:
    with portio.open_file(tmp_path / "f", "w+b") as f:
        port.register(f)
        with pytest.raises(ValueError):
            port.read(f, 1, -1)
        with pytest.raises(TypeError):
            port.write(f, b"x", 1.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            port.write(f, "text", 0)
        with pytest.raises(ValueError, match="needs a socket"):
            port.recv(f, 1)


def test_bad_input_leaves_the_port_working(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    for bad in (-1, "x", b"ro"):
        with pytest.raises((TypeError, ValueError)):
            port.recv(ours, bad)
    with pytest.raises(TimeoutError):
        port.get(timeout=0.05)  # the refused calls started nothing
    peer.sendall(b"ok")
    op = port.recv(ours, 2)
    assert port.get(timeout=10).result == b"ok" and op.done
