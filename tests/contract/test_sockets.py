"""Socket operations: accept, connect, recv, send, UDP, ordering, cancel, timeouts, faults."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest

import portio
from tests.contract.support import (
    WAIT,
    complete,
    complete_all,
    recv_exactly,
    xfail_if_wine_took_the_reset_for_end_of_stream,
)

Pair = tuple[socket.socket, socket.socket]


def test_accept_and_connect(port: portio.CompletionPort, listener: socket.socket) -> None:
    port.register(listener, "listener")
    client = socket.socket()
    with client:
        port.register(client, "client")
        accept = port.accept(listener, data="a")
        connect = port.connect(client, listener.getsockname(), data="c")
        completions = {c.kind: c for c in complete_all(port, 2)}
        assert completions["accept"].op is accept and completions["connect"].op is connect
        assert completions["accept"].key == "listener" and completions["accept"].data == "a"
        assert completions["connect"].key == "client" and completions["connect"].data == "c"
        assert completions["connect"].result is None and completions["connect"].error is None
        conn, address = completions["accept"].result
        with conn:
            assert isinstance(conn, socket.socket)
            assert address == client.getsockname()
            # The accepted socket is not registered: the caller does it with its own key.
            with pytest.raises(ValueError, match="not registered"):
                port.recv(conn, 1)
            port.register(conn, "conn")
            port.send(client, b"ping")
            assert complete_all(port, 1)[0].kind == "send"
            assert recv_exactly(port, conn, 4) == b"ping"


def test_connect_by_host_name(port: portio.CompletionPort, listener: socket.socket) -> None:
    with socket.socket() as client:
        port.register(client)
        op = port.connect(client, ("localhost", listener.getsockname()[1]))
        assert complete(port, op).error is None


def test_recv_returns_bytes_and_send_reports_all_sent(port: portio.CompletionPort,
                                                      tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    peer.sendall(b"hello")
    completion = complete(port, port.recv(ours, 100, data="per-io"))
    assert completion.result == b"hello" and completion.nbytes == 5
    assert completion.key == "ours" and completion.data == "per-io" and completion.kind == "recv"
    completion = complete(port, port.send(ours, bytearray(b"world")))
    assert completion.result == 5 and completion.nbytes == 5
    assert peer.recv(5) == b"world"


def test_recv_into_a_buffer(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    buffer = bytearray(10)
    peer.sendall(b"abc")
    completion = complete(port, port.recv(ours, memoryview(buffer)[2:]))
    assert completion.result == 3 and completion.nbytes == 3
    assert buffer == b"\0\0abc\0\0\0\0\0"


def test_end_of_stream(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    peer.shutdown(socket.SHUT_WR)
    assert complete(port, port.recv(ours, 10)).result == b""
    assert complete(port, port.recv(ours, bytearray(4))).result == 0


def test_large_payload_both_ways(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    payload = os.urandom(8 * 1024 * 1024)
    received = bytearray()
    reader = threading.Thread(target=lambda: received.extend(_read_n(peer, len(payload))))
    reader.start()
    completion = complete(port, port.send(ours, payload))
    reader.join(WAIT * 3)
    assert completion.result == len(payload)
    assert received == payload
    writer = threading.Thread(target=peer.sendall, args=(payload,))
    writer.start()
    assert recv_exactly(port, ours, len(payload)) == payload
    writer.join(WAIT)


def _read_n(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(1 << 20, size - len(chunks)))
        if not chunk:
            break
        chunks += chunk
    return bytes(chunks)


def test_pending_sends_keep_their_order(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    chunks = [bytes([i]) * 300_000 for i in range(8)]  # big enough to fill the socket buffer
    ops = [port.send(ours, chunk, data=i) for i, chunk in enumerate(chunks)]
    received = bytearray()
    reader = threading.Thread(
        target=lambda: received.extend(_read_n(peer, sum(map(len, chunks)))))
    reader.start()
    completions = complete_all(port, len(ops))
    reader.join(WAIT * 3)
    assert [c.op for c in completions] == ops
    assert received == b"".join(chunks)


def test_pending_recvs_are_served_in_order(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    ops = [port.recv(ours, 3, data=i) for i in range(5)]
    peer.sendall(b"000111222333444")
    completions = complete_all(port, 5)
    assert [c.op for c in completions] == ops
    assert b"".join(c.result for c in completions) == b"000111222333444"


def test_send_of_nothing_completes(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, _ = tcp_pair
    completion = complete(port, port.send(ours, b""))
    assert completion.result == 0 and completion.error is None


def test_cancel_a_pending_recv_loses_no_bytes(port: portio.CompletionPort,
                                              tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    op = port.recv(ours, 10, data="x")
    assert not op.done
    assert op.cancel()
    completion = complete(port, op)
    assert isinstance(completion.error, portio.OperationCancelled)
    assert completion.result is None and completion.data == "x"
    assert op.done and not op.cancel()  # already complete: nothing to cancel
    peer.sendall(b"after")
    assert recv_exactly(port, ours, 5) == b"after"


def test_cancel_racing_data_never_loses_bytes(port: portio.CompletionPort,
                                              tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    received = bytearray()
    for i in range(200):
        op = port.recv(ours, 1)
        peer.sendall(bytes([i % 256]))
        op.cancel()
        completion = complete(port, op)
        if completion.error is None:
            received += completion.result
        else:
            assert isinstance(completion.error, portio.OperationCancelled)
    expected = bytes(i % 256 for i in range(200))
    received += recv_exactly(port, ours, len(expected) - len(received)) \
        if len(received) < len(expected) else b""
    assert received == expected


def test_cancel_of_a_queued_recv_keeps_the_others(port: portio.CompletionPort,
                                                 tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    first, second, third = (port.recv(ours, 2, data=i) for i in range(3))
    assert second.cancel()
    assert isinstance(complete(port, second).error, portio.OperationCancelled)
    peer.sendall(b"aabb")
    results = complete_all(port, 2)
    assert [c.op for c in results] == [first, third]
    assert [c.result for c in results] == [b"aa", b"bb"]


def test_timeout_then_data_is_still_readable(port: portio.CompletionPort,
                                             tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    started = time.monotonic()
    op = port.recv(ours, 10, timeout=0.1)
    completion = complete(port, op)
    assert isinstance(completion.error, TimeoutError)
    assert 0.05 <= time.monotonic() - started < WAIT
    peer.sendall(b"late")
    assert recv_exactly(port, ours, 4) == b"late"


def test_timeout_does_not_fire_when_data_arrives(port: portio.CompletionPort,
                                                 tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    peer.sendall(b"now")
    completion = complete(port, port.recv(ours, 10, timeout=5))
    assert completion.error is None and completion.result == b"now"


def test_earlier_deadline_wakes_a_sleeping_poller(port: portio.CompletionPort,
                                                  tcp_pair: Pair) -> None:
    ours, _ = tcp_pair
    got: list[portio.Completion] = []
    waiter = threading.Thread(target=lambda: got.append(port.get(timeout=WAIT)))
    waiter.start()
    time.sleep(0.1)  # the waiter now sleeps in the OS with no deadline
    started = time.monotonic()
    port.recv(ours, 1, timeout=0.1)
    waiter.join(WAIT)
    assert got and isinstance(got[0].error, TimeoutError)
    assert time.monotonic() - started < WAIT / 2


def test_peer_reset_is_connection_reset(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    op = port.recv(ours, 10)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    completion = complete(port, op)
    xfail_if_wine_took_the_reset_for_end_of_stream(port, completion)
    assert isinstance(completion.error, ConnectionResetError)


def test_send_after_peer_reset_fails(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    time.sleep(0.05)
    error = None
    for _ in range(5):  # the first send may still be accepted by the kernel
        error = complete(port, port.send(ours, b"x" * 65536)).error
        if error is not None:
            break
    assert isinstance(error, (ConnectionResetError, BrokenPipeError))


def test_connect_refused(port: portio.CompletionPort) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # bound, never listening: refuses
        with socket.socket() as client:
            port.register(client)
            completion = complete(port, port.connect(client, ("127.0.0.1", closed_port)))
            assert isinstance(completion.error, ConnectionRefusedError)


def test_close_handle_cancels_pending_and_closes(port: portio.CompletionPort,
                                                 tcp_pair: Pair) -> None:
    ours, _ = tcp_pair
    ops = [port.recv(ours, 10, data=i) for i in range(3)]
    port.close_handle(ours)
    assert ours.fileno() == -1
    completions = complete_all(port, 3)
    assert [c.op for c in completions] == ops
    assert all(isinstance(c.error, portio.OperationCancelled) for c in completions)
    with pytest.raises(ValueError):
        port.recv(ours, 1)


def test_close_handle_of_an_int_fd(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    _, peer = tcp_pair
    duplicate = peer.dup()
    fd = duplicate.detach()
    port.register(fd, "int")
    peer.close()  # the duplicate keeps the connection open
    op = port.recv(fd, 1)
    port.close_handle(fd)
    assert isinstance(complete(port, op).error, portio.OperationCancelled)
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by close_handle


def test_close_leaves_user_sockets_open(backend: str) -> None:
    port = portio.open_port(backend)
    a, b = socket.socketpair()
    with a, b:
        port.register(a)
        port.recv(a, 10)
        port.close()
        assert a.fileno() != -1
        b.sendall(b"still here")
        a.setblocking(True)
        assert a.recv(10) == b"still here"


def test_register_twice_is_refused(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, _ = tcp_pair
    with pytest.raises(ValueError, match="already registered"):
        port.register(ours)


def test_reused_descriptor_number_can_be_registered(port: portio.CompletionPort) -> None:
    first = socket.socket()
    port.register(first)
    number = first.fileno()
    first.close()  # closed without close_handle: the number may be reused
    second = socket.socket()
    with second:
        if second.fileno() != number:
            pytest.skip("the OS did not reuse the descriptor number")
        port.register(second)


def test_udp_sendto_and_recvfrom(port: portio.CompletionPort) -> None:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with a, b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        port.register(a, "a")
        port.register(b, "b")
        recv = port.recvfrom(b, 100, data="r")
        send = port.sendto(a, b"datagram", b.getsockname(), data="s")
        completions = {c.op: c for c in complete_all(port, 2)}
        assert completions[send].result == 8 and completions[send].key == "a"
        payload, address = completions[recv].result
        assert payload == b"datagram" and address == a.getsockname()
        assert completions[recv].nbytes == 8 and completions[recv].data == "r"
        buffer = bytearray(16)
        recv = port.recvfrom(b, buffer)
        port.sendto(a, b"xy", b.getsockname())
        completions = {c.op: c for c in complete_all(port, 2)}
        assert completions[recv].result == (2, a.getsockname()) and buffer[:2] == b"xy"


def test_ipv6_loopback(port: portio.CompletionPort) -> None:
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6")
    try:
        listener = socket.socket(socket.AF_INET6)
        listener.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no ::1 on this machine: {exc}")
    with listener, socket.socket(socket.AF_INET6) as client:
        listener.listen()
        port.register(listener)
        port.register(client)
        port.accept(listener)
        port.connect(client, listener.getsockname()[:2])
        completions = {c.kind: c for c in complete_all(port, 2)}
        assert completions["connect"].error is None
        conn, _ = completions["accept"].result
        conn.close()
