"""Faults every backend must survive: resets, close_handle and close under load, cancel and
timeout races, refused connects, running out of descriptors, a peer that never reads.

The invariants checked: every started operation completes exactly once (until the port
closes), errors have the documented types, and no received byte is lost or duplicated.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import random
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

import portio
from tests.contract.support import xfail_if_wine_took_the_reset_for_end_of_stream

from .loopback import (
    CAN_SAMPLE,
    WAIT,
    assert_nothing_queued,
    complete,
    free_tcp_port,
    read_to_eof,
    reset,
    rss_bytes,
    tcp_pair,
)

Pair = tuple[socket.socket, socket.socket]
Reaped = tuple[Pair, "queue.Queue[portio.Completion]"]

#: Large enough to fill both loopback socket buffers many times over, so a send stays pending.
BIG = 64 * 1024 * 1024


def fill_until_pending(port: portio.CompletionPort, sock: socket.socket) -> portio.Operation:
    """Start a send the peer's full buffers keep pending, and check it stays pending."""
    op = port.send(sock, bytes(BIG), data="big")
    with pytest.raises(TimeoutError):
        port.get(timeout=0.3)
    assert not op.done
    return op


# ---------------------------------------------------------------- peer reset
def test_peer_reset_fails_pending_recv(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    peer.sendall(b"before the reset")
    first = complete(port, port.recv(ours, 100))
    assert first.result == b"before the reset"
    op = port.recv(ours, 100, data="pending")
    reset(peer)
    completion = complete(port, op)
    xfail_if_wine_took_the_reset_for_end_of_stream(port, completion)
    assert isinstance(completion.error, ConnectionResetError)
    assert completion.result is None and completion.data == "pending"
    assert_nothing_queued(port)


def test_peer_reset_fails_pending_send(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    op = fill_until_pending(port, ours)
    reset(peer)
    completion = complete(port, op)
    assert isinstance(completion.error, (ConnectionResetError, BrokenPipeError))
    assert 0 <= completion.nbytes < BIG
    assert_nothing_queued(port)


def test_peer_reset_with_recv_and_send_pending(port: portio.CompletionPort,
                                              tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    send_op = fill_until_pending(port, ours)
    recv_op = port.recv(ours, 4096)
    reset(peer)
    got = {port.get(timeout=WAIT).op for _ in range(2)}
    assert got == {send_op, recv_op}
    assert send_op.done and recv_op.done
    assert_nothing_queued(port)


# ---------------------------------------------------------------- close_handle
def test_close_handle_cancels_every_pending_operation(port: portio.CompletionPort,
                                                      tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    send_op = fill_until_pending(port, ours)
    queued_send = port.send(ours, b"never started", data="queued send")
    recvs = [port.recv(ours, 10, data=i) for i in range(3)]
    timed = port.recv(ours, 10, timeout=60, data="timed")
    port.close_handle(ours)
    assert ours.fileno() == -1
    completions = [port.get(timeout=WAIT) for _ in range(6)]
    assert {c.op for c in completions} == {send_op, queued_send, *recvs, timed}
    for c in completions:
        assert isinstance(c.error, portio.OperationCancelled), c
        assert c.error.errno == errno.ECANCELED
    assert next(c for c in completions if c.op is queued_send).nbytes == 0
    assert_nothing_queued(port)
    # The peer sees the stream end (FIN or RST), not a hang.
    peer.settimeout(WAIT)
    with contextlib.suppress(ConnectionResetError):
        read_to_eof(peer)


# ---------------------------------------------------------------- close with blocked threads
def test_close_wakes_every_blocked_thread(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, _peer = tcp_pair
    port.recv(ours, 10)  # something pending in the OS while the port closes
    port.recv(ours, 10, callback=lambda c: None)
    outcomes: queue.Queue[tuple[str, BaseException | object]] = queue.Queue()

    def blocked(name: str) -> None:
        try:
            if name.startswith("get_many"):
                result: object = port.get_many(timeout=WAIT * 3)
            elif name.startswith("get"):
                result = port.get(timeout=WAIT * 3)
            else:
                result = port.dispatch(timeout=WAIT * 3)
        except BaseException as exc:
            result = exc
        outcomes.put((name, result))

    names = [f"{kind}{i}" for kind in ("get", "get_many", "dispatch") for i in range(3)]
    threads = [threading.Thread(target=blocked, args=(name,), daemon=True) for name in names]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # let them all block
    assert outcomes.empty()
    port.close()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive(), "a thread stayed blocked after close()"
    results = dict(outcomes.get_nowait() for _ in names)
    assert set(results) == set(names)
    for name, result in results.items():
        assert isinstance(result, portio.PortClosed), (name, result)
    with pytest.raises(portio.PortClosed):
        port.get(timeout=0)
    assert ours.fileno() != -1  # close() leaves user sockets open


# ---------------------------------------------------------------- cancel / timeout races
@pytest.fixture
def stream_with_reaper(port: portio.CompletionPort) -> Iterator[Reaped]:
    """A pair whose first socket is registered, and a thread that dequeues every completion
    (so the backend is polling while the test races it)."""
    ours, peer = tcp_pair()
    port.register(ours)
    out: queue.Queue[portio.Completion] = queue.Queue()
    stop = threading.Event()

    def reap() -> None:
        while not stop.is_set():
            try:
                out.put(port.get(timeout=0.05))
            except TimeoutError:
                continue
            except portio.PortClosed:
                return

    reaper = threading.Thread(target=reap, daemon=True)
    reaper.start()
    try:
        yield (ours, peer), out
    finally:
        stop.set()
        reaper.join(WAIT)
        ours.close()
        peer.close()
    assert not reaper.is_alive()


def catch_up(port: portio.CompletionPort, ours: socket.socket,
             out: queue.Queue[portio.Completion]) -> bytes:
    """After a round that delivered nothing, receive the chunk it left in the stream, so the
    next round starts with an empty socket buffer and races again."""
    op = port.recv(ours, 65536)
    completion = out.get(timeout=WAIT)
    assert completion.op is op and completion.error is None and completion.result, completion
    chunk: bytes = completion.result
    return chunk


def drain_rest(port: portio.CompletionPort, ours: socket.socket,
               out: queue.Queue[portio.Completion]) -> bytes:
    """Receive through the port until EOF; what the races left in the stream."""
    rest = bytearray()
    while True:
        op = port.recv(ours, 65536)
        completion = out.get(timeout=WAIT)
        assert completion.op is op and completion.error is None, completion
        if not completion.result:
            return bytes(rest)
        rest += completion.result


#: Delays for the races: ints are busy loop turns (0 to ~1 ms; they keep the GIL, so the
#: other threads only run at the interpreter's switch interval), floats are sleeps (they let
#: the poller and the sender thread run at once).
DELAYS: tuple[float, ...] = (0, 10, 100, 1000, 10000, 0.0, 0.0002, 0.001)


def pause(delay: float) -> None:
    """Wait ``delay``, one of :data:`DELAYS`."""
    if isinstance(delay, float):
        time.sleep(delay)
        return
    for _ in range(delay):
        pass


def test_cancel_racing_data_loses_no_byte(
        port: portio.CompletionPort,
        stream_with_reaper: Reaped) -> None:
    """Half the rounds send, then cancel; the other half send from another thread while this
    one cancels, each after a delay from :data:`DELAYS`.  The first kind races a readiness
    backend (selector): the bytes only count as received once the poller takes them.  It
    cannot race a completion backend (iocp, io_uring), whose kernel fills the pending
    receive during the send itself; only a send running alongside the cancel can lose."""
    (ours, peer), out = stream_with_reaper
    rounds = 3000
    rng = random.Random(7)
    received = bytearray()
    sent = bytearray()
    cancelled = delivered = 0
    to_send: queue.Queue[tuple[bytes, float] | None] = queue.Queue()
    sent_one = threading.Semaphore(0)

    def sender() -> None:
        while (job := to_send.get()) is not None:
            pause(job[1])
            peer.sendall(job[0])
            sent_one.release()

    sending = threading.Thread(target=sender, daemon=True)
    sending.start()
    try:
        for i in range(rounds):
            chunk = i.to_bytes(4, "big") * rng.randint(1, 8)
            op = port.recv(ours, 1024)
            concurrent = rng.random() < 0.5
            if concurrent:
                to_send.put((chunk, rng.choice(DELAYS)))
            else:
                peer.sendall(chunk)
            sent += chunk
            pause(rng.choice(DELAYS))  # vary who wins, the data or the cancel
            op.cancel()
            completion = out.get(timeout=WAIT)
            if concurrent:
                assert sent_one.acquire(timeout=WAIT), "the sender thread stalled"
            assert completion.op is op, completion
            if completion.error is None:
                assert completion.result, "EOF in the middle of the stream"
                received += completion.result
                delivered += 1
            else:
                assert isinstance(completion.error, portio.OperationCancelled), completion
                assert completion.nbytes == 0
                cancelled += 1
                received += catch_up(port, ours, out)
    finally:
        to_send.put(None)
        sending.join(WAIT)
    peer.shutdown(socket.SHUT_WR)
    received += drain_rest(port, ours, out)
    assert received == sent
    assert cancelled + delivered == rounds
    assert cancelled and delivered, "the race was never run both ways: retune the delays"
    assert out.empty()
    print(f"cancel race: {delivered} delivered, {cancelled} cancelled of {rounds}")


def test_timeouts_racing_data_lose_no_byte(
        port: portio.CompletionPort,
        stream_with_reaper: Reaped) -> None:
    (ours, peer), out = stream_with_reaper
    rounds = 300
    rng = random.Random(11)
    received = bytearray()
    sent = bytearray()
    timed_out = 0
    for i in range(rounds):
        chunk = i.to_bytes(4, "big")
        op = port.recv(ours, 1024, timeout=rng.uniform(0, 0.002))
        time.sleep(rng.uniform(0, 0.002))
        peer.sendall(chunk)
        sent += chunk
        completion = out.get(timeout=WAIT)
        assert completion.op is op, completion
        if completion.error is None:
            received += completion.result
        else:
            assert isinstance(completion.error, TimeoutError), completion
            assert not isinstance(completion.error, portio.OperationCancelled)
            timed_out += 1
            received += catch_up(port, ours, out)
    peer.shutdown(socket.SHUT_WR)
    received += drain_rest(port, ours, out)
    assert received == sent
    assert out.empty()
    print(f"timeout race: {timed_out} timed out of {rounds}")


def test_timeout_fires_with_no_data(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    started = time.monotonic()
    completion = complete(port, port.recv(ours, 10, timeout=0.2))
    assert isinstance(completion.error, TimeoutError)
    assert 0.15 <= time.monotonic() - started < WAIT
    peer.sendall(b"still here")  # the stream survives a timed-out receive
    assert complete(port, port.recv(ours, 100)).result == b"still here"


# ---------------------------------------------------------------- connect refused
def test_connect_refused(port: portio.CompletionPort) -> None:
    with socket.socket() as sock:
        port.register(sock, "client")
        completion = complete(port, port.connect(sock, ("127.0.0.1", free_tcp_port())))
        assert isinstance(completion.error, ConnectionRefusedError)
        assert completion.key == "client" and completion.result is None
    assert_nothing_queued(port)


# ---------------------------------------------------------------- out of descriptors
EMFILE_CHILD = textwrap.dedent("""
    import errno, json, os, resource, socket, sys
    import portio

    port = portio.open_port(sys.argv[1])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port.register(listener, "listener")
    clients = [socket.create_connection(listener.getsockname(), timeout=10) for _ in range(2)]

    def wait(op):
        c = port.get(timeout=10)
        assert c.op is op, c
        return c

    def echo(conn, client, payload):
        client.sendall(payload)
        got = wait(port.recv(conn, 100)).result
        wait(port.send(conn, got))
        return client.recv(100)

    first = wait(port.accept(listener)).result[0]
    port.register(first, "first")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    hoard = []
    try:
        while True:
            hoard.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == errno.EMFILE

    starved = wait(port.accept(listener))
    report = {"error_errno": getattr(starved.error, "errno", None),
              "error_type": type(starved.error).__name__}
    report["first_echo"] = echo(first, clients[0], b"still serving").decode()
    for fd in hoard[:8]:
        os.close(fd)
    second = wait(port.accept(listener))
    report["second_error"] = repr(second.error)
    conn = second.result[0]
    port.register(conn, "second")
    report["second_echo"] = echo(conn, clients[1], b"served after EMFILE").decode()
    port.close()
    print(json.dumps(report))
""")


@pytest.mark.skipif(sys.platform == "win32",
                    reason="RLIMIT_NOFILE is POSIX: Windows has no per-process descriptor limit "
                           "to lower (sockets are bounded by memory), so accept cannot be "
                           "starved this way")
def test_accept_out_of_descriptors_reports_emfile_and_keeps_serving(backend: str) -> None:
    done = subprocess.run([sys.executable, "-c", EMFILE_CHILD, backend], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {
        "error_errno": errno.EMFILE, "error_type": "OSError",
        "first_echo": "still serving",
        "second_error": "None", "second_echo": "served after EMFILE",
    }


# ---------------------------------------------------------------- a peer that never reads
@pytest.mark.skipif(not CAN_SAMPLE, reason="RSS is sampled on Linux (/proc) and Windows only")
def test_peer_that_never_reads(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    payload = os.urandom(BIG)
    rss_before = rss_bytes()
    op = port.send(ours, payload, data="stuck")
    # While the send waits, the other direction keeps working: the peer talks, we listen.
    for i in range(50):
        peer.sendall(b"%d;" % i)
        assert complete(port, port.recv(ours, 100)).error is None
    with pytest.raises(TimeoutError):
        port.get(timeout=1.0)
    assert not op.done
    growth = rss_bytes() - rss_before
    # The pending send holds the caller's buffer, not copies of it: 8 MiB covers the kernel's
    # socket buffers being charged to us and allocator noise, far below one 64 MiB copy.
    assert growth < 8 * 1024 * 1024, f"RSS grew {growth} bytes while a send was pending"
    assert op.cancel()
    completion = complete(port, op)
    assert isinstance(completion.error, portio.OperationCancelled)
    assert 0 < completion.nbytes < BIG
    assert payload[:1000] == peer.recv(1000, socket.MSG_WAITALL)
    port.close_handle(ours)
    assert ours.fileno() == -1
    assert_nothing_queued(port)


def test_peer_that_never_reads_close_handle(port: portio.CompletionPort, tcp_pair: Pair) -> None:
    ours, _peer = tcp_pair
    op = fill_until_pending(port, ours)
    port.close_handle(ours)
    completion = complete(port, op)
    assert isinstance(completion.error, portio.OperationCancelled)
    assert 0 < completion.nbytes < BIG
    assert_nothing_queued(port)
