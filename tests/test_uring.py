"""io_uring backend tests: the ring's own failure modes (overflow, a full SQ, thousands in flight,
cancel races, refusal by the kernel).  The shared behaviour is in tests/contract/."""

from __future__ import annotations

import errno
import importlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import portio
from tests.contract.support import WAIT

if not sys.platform.startswith("linux"):
    pytest.skip(f"io_uring is Linux-only; this is {sys.platform}", allow_module_level=True)
_REASON = portio.backend_status().get("io_uring")
if _REASON is not None:
    pytest.skip(f"io_uring is unavailable on this Linux: {_REASON}", allow_module_level=True)

# Imported by name: mypy cannot follow setuptools' package-dir mapping of portio.backends.
uring: Any = importlib.import_module("portio.backends.uring")


@pytest.fixture
def port() -> Iterator[Any]:
    p = portio.open_port("io_uring", concurrency=4)
    assert isinstance(p, uring.UringPort)
    with p:
        yield p


@pytest.fixture
def small_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A port on a tiny ring (8 SQEs, 16 CQEs) so overflow and SQ pressure happen early."""
    monkeypatch.setattr(uring, "_SQ_ENTRIES", 8)
    monkeypatch.setattr(uring, "_CQ_ENTRIES", 16)
    p = uring.UringPort(concurrency=4)
    assert p.ring_info["cq_entries"] == 16
    with p:
        yield p


def _pairs(port: portio.CompletionPort, n: int) -> list[tuple[socket.socket, socket.socket]]:
    pairs = []
    for i in range(n):
        a, b = socket.socketpair()
        port.register(a, i)
        pairs.append((a, b))
    return pairs


def _close_pairs(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    for a, b in pairs:
        a.close()
        b.close()


def _drain(port: portio.CompletionPort, count: int) -> list[portio.Completion]:
    got: list[portio.Completion] = []
    while len(got) < count:
        batch = port.get_many(1024, timeout=WAIT)
        assert batch, f"only {len(got)} of {count} completions arrived"
        got.extend(batch)
    return got


@pytest.fixture(autouse=True)
def _more_fds() -> None:
    import resource  # POSIX only: imported after the module-level skip for other platforms

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (8192, hard))


def test_ring_features_are_reported() -> None:
    info = uring.ring_features()
    assert info["feat:nodrop"] is True
    assert info["used:cq_entries"] >= uring._CQ_ENTRIES


def test_cq_overflow_flood_of_short_recvs_loses_nothing(small_port: Any) -> None:
    # 600 recvs that all complete at once into a 16-entry CQ: most go through the kernel's
    # overflow list (IORING_FEAT_NODROP), then the reaper drains it.
    pairs = _pairs(small_port, 600)
    try:
        for i, (_, b) in enumerate(pairs):
            b.sendall(b"%05d" % i)
        ops = {small_port.recv(a, 1, data=i) for i, (a, _) in enumerate(pairs)}
        got = _drain(small_port, len(ops))
        assert {c.op for c in got} == ops
        assert all(c.result == (b"%05d" % c.data)[:1] for c in got)
        assert small_port.ring_info["inflight"] == 0
        assert small_port.ring_info["overflow_flushes"] > 0  # the overflow path really ran
    finally:
        _close_pairs(pairs)


def test_cq_overflow_while_posts_flood_from_threads(small_port: Any) -> None:
    pairs = _pairs(small_port, 200)
    posts_per_thread = 500
    try:
        def poster(t: int) -> None:
            for j in range(posts_per_thread):
                small_port.post(("post", t), nbytes=j)
                small_port._wakeup()  # hammer the wake-up NOP too

        threads = [threading.Thread(target=poster, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for _, b in pairs:
            b.sendall(b"xy")
        for a, _ in pairs:
            small_port.recv(a, 1)
            small_port.recv(a, 1)
        for t in threads:
            t.join()
        got = _drain(small_port, 4 * posts_per_thread + 2 * len(pairs))
        assert sum(c.kind == "post" for c in got) == 4 * posts_per_thread
        recvd = [c for c in got if c.kind == "recv"]
        assert all(c.error is None for c in recvd)
        by_key: dict[Any, bytes] = {}
        for c in recvd:  # per socket, the two one-byte recvs arrive in order
            by_key[c.key] = by_key.get(c.key, b"") + c.result
        assert set(by_key.values()) == {b"xy"}
    finally:
        _close_pairs(pairs)


class _FlakyLib:
    """Proxy for the cffi lib whose pio_push and pio_push_buf report a full SQ every other call."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.calls = 0
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)

    def pio_push(self, *args: Any) -> int:
        return self._refuse_or_call(self._lib.pio_push, args)

    def pio_push_buf(self, *args: Any) -> int:
        return self._refuse_or_call(self._lib.pio_push_buf, args)

    def _refuse_or_call(self, push: Any, args: tuple[Any, ...]) -> int:
        self.calls += 1
        if self.calls % 2:
            self.refused += 1
            return 0
        result: int = push(*args)
        return result


def test_sq_full_keeps_operations_in_user_space_and_in_order(
        port: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    flaky = _FlakyLib(uring._lib)
    monkeypatch.setattr(uring, "_lib", flaky)
    a, b = socket.socketpair()
    with a, b:
        port.register(a)
        ops = [port.send(a, bytes([i]) * 1000) for i in range(50)]
        got = _drain(port, 50)
        assert [c.op for c in got] == ops
        data = b""
        b.settimeout(WAIT)
        while len(data) < 50_000:
            data += b.recv(65536)
        assert data == b"".join(bytes([i]) * 1000 for i in range(50))
    assert flaky.refused > 0
    assert port.ring_info["backlog"] == 0


def test_sq_full_at_the_c_level_refuses_what_does_not_fit() -> None:
    ffi, lib = uring._ffi, uring._lib
    ring, err = uring._open_ring(8, 16, 0)
    assert ring is not None, os.strerror(err)

    def push_nops(first: int, count: int) -> int:
        return sum(lib.pio_push(ring, lib.IORING_OP_NOP, 0, -1, 0, 0, 0, 0, first + i,
                                lib.PIO_QUEUE_ONLY) for i in range(count))

    try:
        assert lib.pio_sq_space(ring) == 8
        assert push_nops(100, 12) == 8  # the rest is the caller's to keep
        assert lib.pio_sq_space(ring) == 0
        assert lib.pio_enter(ring, 8, 1_000_000_000) == 8
        assert push_nops(108, 12) == 8
        assert lib.pio_enter(ring, 0, 0) == 8
        cqes = ffi.new("pio_cqe[32]")
        time.sleep(0.01)
        n = lib.pio_reap(ring, cqes, 32)
        assert sorted(cqes[i].user_data for i in range(n)) == list(range(100, 116))
    finally:
        lib.pio_teardown(ring)


def test_thousands_of_operations_in_flight(port: Any) -> None:
    pairs = _pairs(port, 2500)
    try:
        ops = {port.recv(a, 16, data=i) for i, (a, _) in enumerate(pairs)}
        assert port.ring_info["inflight"] == 2500
        for i, (_, b) in enumerate(pairs):
            b.send(b"%d" % i)
        got = _drain(port, len(ops))
        assert {c.op for c in got} == ops
        assert all(c.result == b"%d" % c.data for c in got)
    finally:
        _close_pairs(pairs)


def _filled(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        while True:
            sock.send(b"\0" * 65536)
    except BlockingIOError:
        pass


@pytest.mark.parametrize("kind", ["accept", "connect", "recv", "send", "recvfrom", "sendto",
                                  "read", "write"])
def test_cancel_each_kind(port: Any, kind: str, tmp_path: Any) -> None:
    """A pending operation cancelled completes once with OperationCancelled; one the kernel
    already finished (UDP sends, file I/O) completes once with its real result."""
    closing: list[Any] = []
    try:
        if kind in ("accept", "connect"):
            lst = socket.socket()
            closing.append(lst)
            lst.bind(("127.0.0.1", 0))
            lst.listen(0)
            if kind == "accept":
                port.register(lst)
                op = port.accept(lst)
            else:
                # Fill the listener's backlog so a further connect's SYN goes unanswered.
                for _ in range(4):
                    s = socket.socket()
                    closing.append(s)
                    s.setblocking(False)
                    s.connect_ex(lst.getsockname())
                time.sleep(0.05)
                c = socket.socket()
                closing.append(c)
                port.register(c)
                op = port.connect(c, lst.getsockname())
        elif kind in ("recv", "send"):
            a, b = socket.socketpair()
            closing += [a, b]
            port.register(a)
            if kind == "send":
                _filled(a)
                op = port.send(a, b"x" * 100_000)
            else:
                op = port.recv(a, 10)
        elif kind in ("recvfrom", "sendto"):
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            closing.append(u)
            u.bind(("127.0.0.1", 0))
            port.register(u)
            op = (port.recvfrom(u, 100) if kind == "recvfrom"
                  else port.sendto(u, b"d", u.getsockname()))
        else:
            f = portio.open_file(tmp_path / "f", "w+b")
            closing.append(f)
            port.register(f)
            op = port.read(f, 10, 0) if kind == "read" else port.write(f, b"abc", 0)
        time.sleep(0.02)
        op.cancel()
        c = port.get(timeout=WAIT)
        assert c.op is op
        if kind in ("sendto", "read", "write"):
            assert c.error is None or isinstance(c.error, portio.OperationCancelled)
        elif kind == "connect" and c.error is not None and \
                not isinstance(c.error, portio.OperationCancelled):
            pytest.skip(f"the loopback answered the connect: {c.error!r}")
        else:
            assert isinstance(c.error, portio.OperationCancelled), c
        with pytest.raises(TimeoutError):
            port.get(timeout=0.05)  # exactly once
        assert port.ring_info["inflight"] == 0
    finally:
        for obj in closing:
            obj.close()


def test_timeout_racing_data_never_loses_bytes(port: Any) -> None:
    a, b = socket.socketpair()
    with a, b:
        port.register(a)
        received = bytearray()
        sent = bytearray()
        timeouts = 0
        for i in range(200):
            chunk = bytes([i % 256]) * (1 + i % 7)
            sent += chunk
            # The peer writes while this thread waits in get(): timeout first, a close race,
            # or data first.
            delay = (0.003, 0.001, 0.0)[i % 3]
            writer = threading.Timer(delay, b.send, args=(chunk,))
            op = port.recv(a, 64, timeout=0.001)
            writer.start()
            c = port.get(timeout=WAIT)
            writer.join()
            assert c.op is op
            if c.error is None:
                received += c.result
            else:
                assert isinstance(c.error, TimeoutError)
                timeouts += 1
        while len(received) < len(sent):
            op = port.recv(a, 4096)
            c = port.get(timeout=WAIT)
            assert c.op is op and c.error is None
            received += c.result
        assert received == sent
        assert timeouts > 0


def test_recv_survives_the_thread_that_started_it(port: Any) -> None:
    # io_uring runs a socket's completion work in the task that submitted it; the request must
    # still complete after that thread exits.
    a, b = socket.socketpair()
    with a, b:
        port.register(a)
        box: list[portio.Operation] = []
        t = threading.Thread(target=lambda: box.append(port.recv(a, 10)))
        t.start()
        t.join()
        time.sleep(0.05)
        b.send(b"late")
        c = port.get(timeout=WAIT)
        assert c.op is box[0] and c.result == b"late"


def test_close_waits_for_the_kernel_to_let_go(port: Any) -> None:
    pairs = _pairs(port, 100)
    try:
        for a, _ in pairs:
            port.recv(a, 1 << 16)
        inflight = port._inflight
        port.close()
        assert not inflight  # every buffer's CQE arrived before the ring was freed
        assert port._ring.fd == -1
    finally:
        _close_pairs(pairs)


def test_accept_gives_a_working_socket_and_address(port: Any) -> None:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as lst:
            try:
                lst.bind((host, 0))
            except OSError:
                continue
            lst.listen()
            port.register(lst)
            op = port.accept(lst)
            with socket.create_connection(lst.getsockname()[:2]) as c:
                comp = port.get(timeout=WAIT)
                assert comp.op is op
                conn, address = comp.result
                with conn:
                    assert address[:2] == c.getsockname()[:2]
                    conn.sendall(b"hi")
                    assert c.recv(2) == b"hi"


class _RefusingLib:
    """The C core of a kernel that refuses io_uring_setup with ``err``."""

    def __init__(self, lib: Any, err: int) -> None:
        self._lib = lib
        self._err = err

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)

    def pio_setup(self, *args: Any) -> int:
        return -self._err


@pytest.mark.parametrize("err", [errno.EPERM, errno.ENOSYS])
def test_refused_io_uring_falls_back_to_selector(monkeypatch: pytest.MonkeyPatch,
                                                 err: int) -> None:
    monkeypatch.delenv("PORTIO_BACKEND", raising=False)
    monkeypatch.setattr(uring, "_lib", _RefusingLib(uring._lib, err))
    try:
        status = portio.backend_status(refresh=True)
        reason = status["io_uring"]
        assert reason is not None
        assert ("EPERM" if err == errno.EPERM else "ENOSYS") in reason
        assert portio.available_backends() == ["selector"]
        with portio.open_port() as p:
            assert p.backend == "selector"
        with pytest.raises(portio.BackendUnavailable, match="io_uring"):
            portio.open_port("io_uring")
    finally:
        monkeypatch.undo()
        assert portio.backend_status(refresh=True)["io_uring"] is None


def test_missing_extension_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uring, "_lib", None)
    monkeypatch.setattr(uring, "_IMPORT_ERROR", "No module named 'portio.backends._uring_cffi'")
    try:
        reason = portio.backend_status(refresh=True)["io_uring"]
        assert reason is not None and "not built" in reason
        assert portio.available_backends() == ["selector"]
    finally:
        monkeypatch.undo()
        portio.backend_status(refresh=True)


def test_a_deferred_operation_is_submitted_without_a_poll(port: Any) -> None:
    # Started with no thread polling, a send is left for the next poll; the C flusher must
    # submit it anyway, since this thread now blocks on the peer instead of calling get().
    a, b = socket.socketpair()
    with a, b:
        port.register(a)
        port.send(a, b"ping")
        b.settimeout(WAIT)
        t = time.monotonic()
        assert b.recv(4) == b"ping"
        assert time.monotonic() - t < 0.5
        assert port.get(timeout=WAIT).result == 4


def test_deferred_operations_are_submitted_while_the_flusher_ticks_and_after_it_slept(
        port: Any) -> None:
    # The flusher keeps ticking through short lulls and sleeps after ~100 ms with nothing
    # deferred; a deferral must reach the kernel promptly in both states.
    a, b = socket.socketpair()
    with a, b:
        port.register(a)
        b.settimeout(WAIT)
        for pause in (0.0, 0.01, 0.3, 0.0, 0.5):  # ticking, ticking, asleep, ticking, asleep
            time.sleep(pause)
            port.send(a, b"ping")
            t = time.monotonic()
            assert b.recv(4) == b"ping"
            assert time.monotonic() - t < 0.5
            assert port.get(timeout=WAIT).result == 4


def test_timed_wait_without_ext_arg(port: Any) -> None:
    # Kernels before 5.11 lack IORING_FEAT_EXT_ARG: a timeout SQE bounds the wait instead.
    port._ext_arg = False
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        port.get(timeout=0.05)
    assert 0.04 <= time.monotonic() - t < 1.0
    a, b = socket.socketpair()
    with a, b:
        port.register(a)
        op = port.recv(a, 10)
        threading.Timer(0.05, b.send, args=(b"late",)).start()
        c = port.get(timeout=WAIT)
        assert c.op is op and c.result == b"late"



# ---------------------------------------------------------------- provided-buffer receives
# A receive given a size on a stream socket is one buffer-select RECV: the kernel picks a
# buffer from the port's provided-buffer ring when data arrives (see "Idle receives").

def _took_a_provided_buffer(op: Any) -> bool:
    """``op``, a completed receive given a size, got its bytes in a buffer of the ring, not by
    waiting for readability (the poll path marks the operation ``_POLLED`` for good)."""
    return bool(op.done and op.pinned != uring._POLLED)


@pytest.fixture
def tiny_pool_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A port whose provided-buffer ring has 2 buffers, so it runs dry at once."""
    monkeypatch.setattr(uring, "_PBUF_COUNT", 2)
    p = uring.UringPort(concurrency=4)
    assert p.ring_info["pbuf_buffers"] == 2
    with p:
        yield p


def test_a_sized_stream_recv_takes_its_bytes_from_a_provided_buffer(port: Any) -> None:
    assert port.ring_info["pbuf_buffers"] == uring._PBUF_COUNT > 0
    assert uring.ring_features()["used:pbuf_ring"] == (
        f"{uring._PBUF_COUNT} x {uring._PBUF_SIZE} bytes")
    a, b = socket.socketpair()
    with a, b:
        port.register(a)
        # More receives than buffers, one after the other: each buffer went back to the ring.
        for i in range(3 * uring._PBUF_COUNT):
            payload = bytes([i % 251]) * (1 + i % 300)
            op = port.recv(a, len(payload))
            b.sendall(payload)
            c = port.get(timeout=WAIT)
            assert c.op is op and c.error is None and c.result == payload
            assert _took_a_provided_buffer(op)
        b.close()
        op = port.recv(a, 10)
        c = port.get(timeout=WAIT)
        assert c.op is op and c.error is None and c.result == b""  # end of stream
        assert _took_a_provided_buffer(op)


def test_a_recv_larger_than_a_buffer_or_on_a_datagram_socket_waits_by_poll(port: Any) -> None:
    a, b = socket.socketpair()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with a, b, u:
        port.register(a)
        u.bind(("127.0.0.1", 0))
        port.register(u)
        big = os.urandom(uring._PBUF_SIZE + 1000)
        op = port.recv(a, len(big))
        assert op.pinned == uring._POLLED  # a provided buffer would cut it short
        b.sendall(big)
        c = port.get(timeout=WAIT)
        assert c.error is None and c.result == big[:len(c.result)]
        assert len(c.result) > uring._PBUF_SIZE
        op = port.recv(u, 100)
        assert op.pinned == uring._POLLED  # a datagram is never cut to a buffer
        u.sendto(b"d" * 150, u.getsockname())
        c = port.get(timeout=WAIT)
        assert c.op is op and c.result == b"d" * 100


def test_an_empty_buffer_ring_falls_back_to_poll_and_loses_nothing(tiny_pool_port: Any) -> None:
    port = tiny_pool_port
    pairs = _pairs(port, 40)
    try:
        ops = [port.recv(a, 100, data=i) for i, (a, _) in enumerate(pairs)]
        time.sleep(0.05)  # every RECV is in the kernel, waiting for data
        # Data for all at once, with nobody reaping: 2 get a buffer, the rest -ENOBUFS.
        for i, (_, b) in enumerate(pairs):
            b.sendall(b"msg %d" % i)
        got = _drain(port, len(ops))
        assert {c.op for c in got} == set(ops)
        assert all(c.error is None and c.result == b"msg %d" % c.data for c in got), got
        fell_back = sum(op.pinned == uring._POLLED for op in ops)
        assert 0 < fell_back <= len(ops) - 1  # some waited by poll; ENOBUFS reached nobody
        # The ring still works: its buffers came back.
        a, b = pairs[0]
        op = port.recv(a, 100)
        b.sendall(b"again")
        c = port.get(timeout=WAIT)
        assert c.op is op and c.result == b"again" and _took_a_provided_buffer(op)
    finally:
        _close_pairs(pairs)


def test_cancelling_a_buffer_select_recv_holds_no_buffer(tiny_pool_port: Any) -> None:
    port = tiny_pool_port
    pairs = _pairs(port, 4)
    try:
        # Cancelled while waiting: the kernel had not picked a buffer, so none is lost.
        for a, _ in pairs:
            op = port.recv(a, 10)
            time.sleep(0.01)
            op.cancel()
            c = port.get(timeout=WAIT)
            assert c.op is op and isinstance(c.error, portio.OperationCancelled)
        for rnd in range(3):  # both buffers are still there, round after round
            for a, b in pairs[:2]:
                op = port.recv(a, 10)
                b.sendall(b"r%d" % rnd)
                c = port.get(timeout=WAIT)
                assert c.op is op and c.result == b"r%d" % rnd and _took_a_provided_buffer(op)
        assert port.ring_info["inflight"] == 0
    finally:
        _close_pairs(pairs)


@pytest.mark.parametrize("pool", [8, 0])
def test_more_connections_than_buffers_all_receiving_at_once(
        monkeypatch: pytest.MonkeyPatch, pool: int) -> None:
    """Byte-exact under pressure: 300 connections receive at once from an 8-buffer ring (0: no
    ring, the poll path), messages of 1 byte to 3 buffers' worth, several rounds."""
    monkeypatch.setattr(uring, "_PBUF_COUNT", pool)
    monkeypatch.setattr(uring, "_PBUF_SIZE", 4096)
    with uring.UringPort(concurrency=4) as port:
        assert port.ring_info["pbuf_buffers"] == pool
        pairs = _pairs(port, 300)
        try:
            for b in (b for _, b in pairs):
                b.setblocking(False)
            sent = [bytearray() for _ in pairs]
            received = [bytearray() for _ in pairs]
            for rnd in range(4):
                for i, (_, b) in enumerate(pairs):
                    chunk = bytes([(i + rnd) % 256]) * (1 + (i * 37 + rnd * 1013) % 12000)
                    b.sendall(chunk)
                    sent[i] += chunk
                pending = {port.recv(a, 4096, data=i) for i, (a, _) in enumerate(pairs)}
                while pending:
                    for c in port.get_many(1024, timeout=WAIT):
                        assert c.error is None, c
                        pending.discard(c.op)
                        received[c.data] += c.result
                        assert len(c.result) <= 4096
                        if len(received[c.data]) < len(sent[c.data]):
                            pending.add(port.recv(pairs[c.data][0], 4096, data=c.data))
            assert received == sent
            assert port.ring_info["inflight"] == 0
        finally:
            _close_pairs(pairs)


class _RefusingPbufLib:
    """Proxy for the cffi lib whose kernel refuses IORING_REGISTER_PBUF_RING (Linux < 5.19)."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)

    def pio_pbuf_setup(self, *args: Any) -> int:
        return -errno.EINVAL


def test_a_kernel_without_buffer_rings_keeps_the_poll_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uring, "_lib", _RefusingPbufLib(uring._lib))
    assert "refused" in uring.ring_features()["used:pbuf_ring"]
    with uring.UringPort(concurrency=4) as port:
        assert port.ring_info["pbuf_buffers"] == 0
        a, b = socket.socketpair()
        with a, b:
            port.register(a)
            op = port.recv(a, 10)
            assert op.pinned == uring._POLLED
            b.sendall(b"polled")
            c = port.get(timeout=WAIT)
            assert c.op is op and c.result == b"polled"


def test_buffer_ring_registration_at_the_c_level() -> None:
    lib = uring._lib
    ring, err = uring._open_ring(8, 16, 0)
    assert ring is not None, os.strerror(err)
    try:
        assert lib.pio_pbuf_setup(ring, 3, 4096) == -errno.EINVAL  # not a power of two
        assert lib.pio_pbuf_setup(ring, 4, 4096) == 0
        assert lib.pio_pbuf_setup(ring, 4, 4096) == -errno.EEXIST  # one group per ring
        assert lib.pio_pbuf_base(ring) != uring._ffi.NULL
    finally:
        lib.pio_teardown(ring)
