"""``portio-echo client``: the *stable* echo client.

It keeps reading until every byte it sent has come back, which is the only correct way to use a
TCP stream (one ``send`` may come back in many ``recv``\\ s).  In a terminal it is the classic
interactive client; with stdin redirected it echoes stdin as it comes; ``--count N --size S
--connections C`` is a scripted run on a completion port that verifies every byte.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import portio
from portio import Completion, CompletionPort
from portio.echo.server import BUFFER_SIZE, log

__all__ = ["ScriptedRun", "client", "percentile"]

#: How often piped mode looks whether stdin has ended while it waits for the echo.
STDIN_POLL_INTERVAL = 0.05


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Keep reading until ``size`` bytes came back: the stable client's inner loop."""
    parts: list[bytes] = []
    received = 0
    while received < size:
        chunk = sock.recv(min(size - received, BUFFER_SIZE))
        if not chunk:
            raise ConnectionError(f"server closed the connection after {received} of "
                                  f"{size} bytes")
        parts.append(chunk)
        received += len(chunk)
    return b"".join(parts)


def _echo(sock: socket.socket, data: bytes) -> bytes:
    """Send ``data`` and return its echo, one chunk at a time: a client that sent a message
    larger than the socket buffers before reading would deadlock with the server, which stops
    reading from a client whose echo it cannot send."""
    view = memoryview(data)
    echoed = bytearray()
    for start in range(0, len(view), BUFFER_SIZE):
        chunk = view[start:start + BUFFER_SIZE]
        sock.sendall(chunk)
        echoed += _recv_exactly(sock, len(chunk))
    return bytes(echoed)


def _client_interactive(sock: socket.socket) -> int:
    while True:
        try:
            message = input("Input message(Q to quit): ")
        except EOFError:
            return 0
        if message in ("q", "Q"):
            return 0
        data = message.encode()
        if data:
            print("Message from server:", _echo(sock, data).decode(errors="replace"))


class _Piped:
    """Piped mode: stdin goes to the server from one thread while the echo goes to stdout from
    the other, as it comes back, and the end of stdin ends the stream (a half-close), as socat
    does.  Waiting for each chunk's whole echo before writing on would make every chunk a
    round trip, and would hang on a server that echoes in fixed pieces: it holds a chunk's last
    partial piece until more bytes, or the end of the stream, arrive.  Memory stays bounded:
    stdin is read at most BUFFER_SIZE bytes at a time, and the sender blocks when the
    server does."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self.lock = threading.Lock()
        self.sent = 0
        self.stdin_done = False
        self.error: BaseException | None = None

    def _send(self) -> None:
        # os.read, not sys.stdin.buffer: this daemon thread may still be reading when the main
        # thread exits, and a buffered reader's lock held then makes CPython's shutdown abort
        # ("could not acquire lock ... at interpreter shutdown, possibly due to daemon threads").
        # It also sends what a producer wrote at once, without waiting for the line to end.
        stdin = sys.stdin.fileno()
        try:
            while chunk := os.read(stdin, BUFFER_SIZE):
                with self.lock:
                    self.sent += len(chunk)
                self.sock.sendall(chunk)
            with self.lock:
                self.stdin_done = True
            # Tell the server there is no more: it may close once it has echoed everything.
            self.sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:  # reported by run(), in the main thread
            with self.lock:
                self.error = exc

    def run(self) -> int:
        """Echo stdin to stdout through the server; raise OSError on failure."""
        out = sys.stdout.buffer
        sender = threading.Thread(target=self._send, name="portio-echo-stdin", daemon=True)
        sender.start()
        received = 0
        quiet_since = time.monotonic()
        while True:
            with self.lock:
                if self.error is not None:
                    raise self.error
                if self.stdin_done and received >= self.sent:
                    return 0
            # A bounded wait, so that the end of stdin is seen even when no byte is owed.
            if select.select([self.sock], [], [], STDIN_POLL_INTERVAL)[0]:
                chunk = self.sock.recv(BUFFER_SIZE)
                if not chunk:
                    with self.lock:
                        sent, stdin_done = self.sent, self.stdin_done
                    # The server closes once it has echoed everything after the half-close,
                    # which may come between the check above and this recv.
                    if stdin_done and received >= sent:
                        return 0
                    raise ConnectionError(f"server closed the connection after echoing "
                                          f"{received} of {sent} bytes")
                out.write(chunk)
                out.flush()
                received += len(chunk)
                quiet_since = time.monotonic()
            elif received < self.sent and time.monotonic() - quiet_since > self.timeout:
                raise TimeoutError(f"no echo for {self.timeout:g} s "
                                   f"({received} of {self.sent} bytes echoed)")


@dataclass(eq=False)
class _Connection:
    """One scripted-mode connection: its per-handle data."""

    sock: socket.socket
    buffer: bytearray
    remaining: int
    payload: bytes = b""
    received: int = 0
    started: float = 0.0


class ScriptedRun:
    """``--count N --size S --connections C``: C connections each send N messages of S random
    bytes, one at a time, and verify every byte of each echo before sending the next.

    It runs on a completion port, in one thread: each connection keeps one send and one recv in
    flight at once, which a message larger than the socket buffers needs (a client that sent
    everything before reading would deadlock with the server, whose echo it would not read).
    """

    def __init__(self, port: CompletionPort, address: tuple[str, int], *, count: int,
                 size: int, connections: int) -> None:
        self.port = port
        self.address = address
        self.count = count
        self.size = size
        self.connections = connections
        self.latencies: list[float] = []
        self._open: dict[int, _Connection] = {}

    def run(self, timeout: float) -> None:
        """Run to the end; raise ``ConnectionError``, ``TimeoutError`` or another ``OSError``
        on the first failure or mismatch."""
        deadline = time.monotonic() + timeout
        try:
            for _ in range(self.connections):
                family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
                conn = _Connection(socket.socket(family), bytearray(min(self.size, BUFFER_SIZE)),
                                   self.count)
                self._open[id(conn)] = conn
                self.port.register(conn.sock, conn)
                self.port.connect(conn.sock, self.address)
            while self._open:
                left = deadline - time.monotonic()
                batch = self.port.get_many(64, max(0.0, left))
                if not batch and left <= 0:
                    raise TimeoutError(f"not done within {timeout:g} s "
                                       f"({len(self.latencies)} messages echoed)")
                for completion in batch:
                    self._on_completion(completion)
        finally:
            for conn in self._open.values():
                self.port.close_handle(conn.sock)
            self._open.clear()

    def _on_completion(self, completion: Completion) -> None:
        conn: _Connection = completion.key
        if completion.error is not None:
            raise completion.error
        if completion.kind == "connect":
            self._next_message(conn)
        elif completion.kind == "recv":
            n = completion.nbytes
            if n == 0:
                raise ConnectionError(f"server closed the connection after {conn.received} of "
                                      f"{self.size} bytes of a message")
            expected = conn.payload[conn.received:conn.received + n]
            got = conn.buffer[:n]
            if got != expected:
                offset = next(i for i in range(n) if got[i] != expected[i])
                raise ConnectionError(f"echo mismatch at byte {conn.received + offset} of a "
                                      f"{self.size}-byte message")
            conn.received += n
            if conn.received < self.size:
                self._recv_more(conn)
            else:
                self.latencies.append(time.perf_counter() - conn.started)
                self._next_message(conn)
        # A send completion needs nothing: a message is done when its whole echo is back.

    def _recv_more(self, conn: _Connection) -> None:
        # Never ask for more than the rest of this message: bytes are only checked against it.
        want = min(len(conn.buffer), self.size - conn.received)
        self.port.recv(conn.sock, memoryview(conn.buffer)[:want])

    def _next_message(self, conn: _Connection) -> None:
        if conn.remaining == 0:
            del self._open[id(conn)]
            self.port.close_handle(conn.sock)
            return
        conn.remaining -= 1
        conn.payload = os.urandom(self.size)
        conn.received = 0
        conn.started = time.perf_counter()
        # Send and receive at once: the echo starts coming back before the send has finished.
        self.port.send(conn.sock, conn.payload)
        self._recv_more(conn)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (0.0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, round(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _client_scripted(args: argparse.Namespace) -> int:
    try:
        port = portio.open_port(args.backend, concurrency=1)
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    run = ScriptedRun(port, (args.host, args.port), count=args.count, size=args.size,
                      connections=args.connections)
    started = time.perf_counter()
    try:
        with port:
            run.run(args.timeout)
    except OSError as exc:  # ConnectionError and TimeoutError are OSErrors
        print(f"portio-echo client: FAILED after {len(run.latencies)} messages: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    messages = len(run.latencies)
    latencies = sorted(run.latencies)
    print(f"portio-echo client: {messages} messages x {args.size} bytes over "
          f"{args.connections} connections in {elapsed:.2f} s: "
          f"{messages / elapsed:.0f} msg/s, "
          f"{messages * args.size / elapsed / 2**20:.1f} MiB/s; "
          f"latency p50 {percentile(latencies, 0.50) * 1e3:.2f} ms "
          f"p99 {percentile(latencies, 0.99) * 1e3:.2f} ms; all bytes verified", flush=True)
    return 0


def client(args: argparse.Namespace) -> int:
    """``portio-echo client``."""
    if args.count is not None:
        return _client_scripted(args)
    try:
        sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
    except OSError as exc:
        print(f"portio-echo client: cannot connect to {args.host}:{args.port}: {exc}",
              file=sys.stderr)
        return 1
    with sock:
        try:
            if sys.stdin.isatty():
                print("Connected...........")
                return _client_interactive(sock)
            return _Piped(sock, args.timeout).run()
        except OSError as exc:
            print(f"portio-echo client: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130

