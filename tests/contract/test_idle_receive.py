"""A receive given a size holds no buffer while nothing has arrived, on every backend, and its
results are those of any receive: the exact bytes, the end of stream, errors, cancel, timeout
and close_handle."""

from __future__ import annotations

import socket
import struct
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

import portio

from .support import (
    WAIT,
    complete,
    complete_all,
    recv_exactly,
    xfail_if_wine_took_the_reset_for_end_of_stream,
)

Pair = tuple[socket.socket, socket.socket]

#: Receives left pending at once in the memory test, and the size each asks for: an eager
#: buffer would cost PENDING x SIZE = 16 MiB, which no backend's bookkeeping comes near.
PENDING = 16
SIZE = 1 << 20


def settle(port: portio.CompletionPort) -> None:
    """Let the backend submit and wait for what was started (nothing completes)."""
    assert port.get_many(timeout=0.05) == []


def start_pending(port: portio.CompletionPort,
                  start: Callable[[], list[portio.Operation]]) -> list[portio.Operation]:
    """``start()`` the receives, let them settle, and check they hold no ``SIZE`` buffers."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ops = start()
        settle(port)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Bookkeeping is a few hundred bytes an operation; one eager buffer alone is SIZE.
    assert held < PENDING * SIZE // 16, f"{held} bytes held by {len(ops)} pending receives"
    return ops


@pytest.fixture
def tcp_pairs(port: portio.CompletionPort) -> Iterator[list[Pair]]:
    """PENDING connected loopback pairs, the first of each registered with ``port``."""
    pairs: list[Pair] = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(PENDING)
        try:
            for _ in range(PENDING):
                peer = socket.create_connection(server.getsockname(), timeout=WAIT)
                ours, _ = server.accept()
                pairs.append((ours, peer))
                port.register(ours)
            yield pairs
        finally:
            for ours, peer in pairs:
                ours.close()
                peer.close()


@pytest.fixture
def udp_pairs(port: portio.CompletionPort) -> Iterator[list[Pair]]:
    """PENDING pairs of bound loopback UDP sockets, the first of each registered."""
    pairs: list[Pair] = []
    try:
        for _ in range(PENDING):
            ours, peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            pairs.append((ours, peer))
            ours.bind(("127.0.0.1", 0))
            peer.bind(("127.0.0.1", 0))
            port.register(ours)
        yield pairs
    finally:
        for ours, peer in pairs:
            ours.close()
            peer.close()


def test_pending_recvs_given_a_size_hold_no_buffer(port: portio.CompletionPort,
                                                   tcp_pairs: list[Pair]) -> None:
    ops = start_pending(port, lambda: [port.recv(ours, SIZE, data=i)
                                       for i, (ours, _) in enumerate(tcp_pairs)])
    for i, (_, peer) in enumerate(tcp_pairs):
        peer.sendall(b"%d" % i)
    completions = complete_all(port, PENDING)
    assert {c.op for c in completions} == set(ops)
    assert all(c.error is None and c.result == b"%d" % c.data and c.nbytes == len(c.result)
               for c in completions)


def test_pending_recvfroms_given_a_size_hold_no_buffer(port: portio.CompletionPort,
                                                       udp_pairs: list[Pair]) -> None:
    ops = start_pending(port, lambda: [port.recvfrom(ours, SIZE, data=i)
                                       for i, (ours, _) in enumerate(udp_pairs)])
    for i, (ours, peer) in enumerate(udp_pairs):
        peer.sendto(b"%d" % i, ours.getsockname())
    completions = complete_all(port, PENDING)
    assert {c.op for c in completions} == set(ops)
    for c in completions:
        assert c.error is None
        assert c.result == (b"%d" % c.data, udp_pairs[c.data][1].getsockname())


def test_a_pending_recv_gets_exactly_what_arrived(port: portio.CompletionPort,
                                                  tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    op = port.recv(ours, 10)
    settle(port)
    peer.sendall(b"abc")
    completion = complete(port, op)
    assert (completion.result, completion.nbytes) == (b"abc", 3)
    payload = bytes(range(25))
    peer.sendall(payload)
    ops = [port.recv(ours, 10) for _ in range(3)]
    results = [c.result for c in complete_all(port, 3)]
    # however the stream was cut, no receive exceeds its size and nothing is lost or reordered
    assert all(0 < len(r) <= 10 for r in results)
    received = b"".join(results)
    received += recv_exactly(port, ours, len(payload) - len(received))
    assert received == payload and all(op.done for op in ops)


def test_a_pending_recv_larger_than_what_arrives_in_one_go(port: portio.CompletionPort,
                                                           tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    op = port.recv(ours, SIZE)
    settle(port)
    payload = bytes(range(256)) * 64
    peer.sendall(payload)
    completion = complete(port, op)
    assert completion.error is None and payload.startswith(completion.result)
    assert type(completion.result) is bytes and completion.nbytes == len(completion.result)
    assert recv_exactly(port, ours, len(payload) - completion.nbytes) == \
        payload[completion.nbytes:]


def test_end_of_stream_while_pending(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    op = port.recv(ours, 100)
    settle(port)
    peer.shutdown(socket.SHUT_WR)
    completion = complete(port, op)
    assert completion.error is None and (completion.result, completion.nbytes) == (b"", 0)


def test_reset_while_pending(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    op = port.recv(ours, 100)
    settle(port)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    completion = complete(port, op)
    xfail_if_wine_took_the_reset_for_end_of_stream(port, completion)
    assert isinstance(completion.error, ConnectionResetError)
    assert completion.result is None


@pytest.mark.parametrize("how", ["cancel", "timeout", "close_handle"])
def test_a_waiting_recv_ends_early_and_loses_nothing(port: portio.CompletionPort,
                                                     tcp_pair: Pair, how: str) -> None:
    ours, peer = tcp_pair
    op = port.recv(ours, 100, timeout=0.2 if how == "timeout" else None)
    queued = port.recv(ours, 100)
    if how != "timeout":
        settle(port)  # the first is waiting in the OS
    if how == "cancel":
        assert op.cancel()
    elif how == "close_handle":
        port.close_handle(ours)
    first = complete(port, op)
    expected = TimeoutError if how == "timeout" else portio.OperationCancelled
    assert isinstance(first.error, expected) and first.result is None
    if how == "close_handle":
        assert isinstance(complete(port, queued).error, portio.OperationCancelled)
        return
    peer.sendall(b"kept")
    second = complete(port, queued)
    assert second.error is None and second.result == b"kept"


def test_a_pending_recvfrom_gets_the_datagram_and_its_sender(port: portio.CompletionPort,
                                                             udp_pairs: list[Pair]) -> None:
    ours, peer = udp_pairs[0]
    op = port.recvfrom(ours, 100)
    settle(port)
    peer.sendto(b"one datagram", ours.getsockname())
    completion = complete(port, op)
    assert completion.result == (b"one datagram", peer.getsockname())
    assert completion.nbytes == 12


def test_a_datagram_longer_than_the_size_is_cut_to_it(port: portio.CompletionPort,
                                                      udp_pairs: list[Pair]) -> None:
    ours, peer = udp_pairs[0]
    op = port.recvfrom(ours, 4)
    settle(port)
    peer.sendto(b"0123456789", ours.getsockname())
    peer.sendto(b"next", ours.getsockname())
    completion = complete(port, op)
    assert completion.result == (b"0123", peer.getsockname()) and completion.nbytes == 4
    # the rest of a cut datagram is gone; the next datagram is whole
    assert complete(port, port.recvfrom(ours, 100)).result == (b"next", peer.getsockname())


@pytest.mark.parametrize("size", [4, 100, 100_000])
def test_recv_on_a_connected_datagram_socket(port: portio.CompletionPort,
                                             udp_pairs: list[Pair], size: int) -> None:
    """recv given a size on a connected UDP socket: the datagram, cut to the size, never
    thrown away by the bufferless wait (a zero-byte receive would discard a datagram)."""
    ours, peer = udp_pairs[0]
    ours.connect(peer.getsockname())
    op = port.recv(ours, size)
    settle(port)
    peer.sendto(b"0123456789", ours.getsockname())
    peer.sendto(b"next", ours.getsockname())
    completion = complete(port, op)
    assert completion.result == b"0123456789"[:size] and completion.nbytes == min(size, 10)
    assert complete(port, port.recv(ours, size)).result == b"next"[:size]


def test_a_cancelled_recvfrom_leaves_the_datagram_queued(port: portio.CompletionPort,
                                                         udp_pairs: list[Pair]) -> None:
    ours, peer = udp_pairs[0]
    op = port.recvfrom(ours, 100)
    settle(port)
    assert op.cancel()
    assert isinstance(complete(port, op).error, portio.OperationCancelled)
    peer.sendto(b"after", ours.getsockname())
    assert complete(port, port.recvfrom(ours, 100)).result == (b"after", peer.getsockname())
