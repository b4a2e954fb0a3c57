"""An echo load through one completion port: the server half runs in the test process, the
client half in a child process (``python echo_load.py clients ...``), so each process needs
only one descriptor per connection and 10,000 connections fit under a 20,000 ``ulimit -n``.

Every completion is handled by whichever worker thread dequeued it, through the object given
as the handle's completion key (``on_completion``).  Clients send random chunks, one round trip
at a time per connection, and compare every echoed byte with what they sent.
"""

from __future__ import annotations

import json
import random
import socket
import sys
import threading
import time
from typing import Any, Protocol

import portio

#: Largest chunk a client sends in one round trip; chunks are 1..MAX_CHUNK bytes at random, so
#: both tiny writes and writes larger than a socket buffer (short sends) happen.
MAX_CHUNK = 32 * 1024
#: Connects in flight at once: below the listen backlog, so no SYN is dropped and retried.
CONNECTS_IN_FLIGHT = 256


class Handler(Protocol):
    def on_completion(self, completion: portio.Completion) -> None: ...


def run_workers(port: portio.CompletionPort, stop: threading.Event, errors: list[str],
                count: int = 2) -> list[threading.Thread]:
    """Start ``count`` threads that dequeue completions in batches and hand each to its key."""

    def work() -> None:
        try:
            while not stop.is_set():
                for completion in port.get_many(128, timeout=0.1):
                    handler: Handler = completion.key
                    handler.on_completion(completion)
        except portio.PortClosed:
            pass
        except BaseException as exc:
            errors.append(f"worker died: {exc!r}")
            stop.set()

    threads = [threading.Thread(target=work, daemon=True, name=f"echo-worker-{i}")
               for i in range(count)]
    for thread in threads:
        thread.start()
    return threads


class EchoServer:
    """Accepts ``expected`` connections and echoes each until its client closes."""

    def __init__(self, port: portio.CompletionPort, listener: socket.socket,
                 expected: int) -> None:
        self.port = port
        self.listener = listener
        self.expected = expected
        self.lock = threading.Lock()
        self.accepted = 0
        self.closed = 0
        self.echoed = 0
        self.errors: list[str] = []
        self.all_closed = threading.Event()
        port.register(listener, self)
        port.accept(listener)

    def on_completion(self, completion: portio.Completion) -> None:
        if completion.error is not None:
            if not isinstance(completion.error, portio.OperationCancelled):
                self.errors.append(f"accept: {completion.error!r}")
                self.port.accept(self.listener)
            return
        conn, _ = completion.result
        with self.lock:
            self.accepted += 1
            more = self.accepted < self.expected
        if more:
            self.port.accept(self.listener)
        self.port.register(conn, _ServerConnection(self, conn))
        self.port.recv(conn, 65536)

    def connection_closed(self, echoed: int) -> None:
        with self.lock:
            self.closed += 1
            self.echoed += echoed
            if self.closed == self.expected:
                self.all_closed.set()


class _ServerConnection:
    """One accepted connection: recv, send it back, recv again; close at end of stream."""

    __slots__ = ("conn", "echoed", "server")

    def __init__(self, server: EchoServer, conn: socket.socket) -> None:
        self.server = server
        self.conn = conn
        self.echoed = 0

    def on_completion(self, completion: portio.Completion) -> None:
        port = self.server.port
        if completion.error is not None:
            self.server.errors.append(f"server {completion.kind}: {completion.error!r}")
            port.close_handle(self.conn)
            self.server.connection_closed(self.echoed)
        elif completion.kind == "send":
            self.echoed += completion.nbytes
            port.recv(self.conn, 65536)
        elif completion.result:
            port.send(self.conn, completion.result)
        else:  # end of stream
            port.close_handle(self.conn)
            self.server.connection_closed(self.echoed)


class EchoClients:
    """``count`` clients that send random chunks until ``deadline`` and verify every echo."""

    def __init__(self, port: portio.CompletionPort, address: tuple[str, int], count: int,
                 deadline: float, seed: int) -> None:
        self.port = port
        self.address = address
        self.count = count
        self.deadline = deadline
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.connected = 0
        self.finished = 0
        self.round_trips = 0
        self.verified = 0
        self.all_finished = threading.Event()
        self.all_connected = threading.Event()
        self.clients = [_ClientConnection(self, random.Random(seed + i)) for i in range(count)]
        self.to_connect = list(self.clients)
        for _ in range(min(CONNECTS_IN_FLIGHT, count)):
            self.connect_next()

    def connect_next(self) -> None:
        with self.lock:
            if not self.to_connect:
                return
            client = self.to_connect.pop()
        self.port.register(client.sock, client)
        self.port.connect(client.sock, self.address)

    def fail(self, message: str) -> None:
        with self.lock:
            if len(self.errors) < 20:
                self.errors.append(message)

    def connection_up(self) -> None:
        with self.lock:
            self.connected += 1
            if self.connected == self.count:
                self.all_connected.set()
        self.connect_next()

    def connection_done(self, round_trips: int, verified: int) -> None:
        with self.lock:
            self.finished += 1
            self.round_trips += round_trips
            self.verified += verified
            if self.finished == self.count:
                self.all_finished.set()


class _ClientConnection:
    __slots__ = ("clients", "draining", "lock", "matched", "outstanding", "rng", "round_trips",
                 "sock", "verified")

    def __init__(self, clients: EchoClients, rng: random.Random) -> None:
        self.clients = clients
        self.rng = rng
        self.sock = socket.socket()
        self.lock = threading.Lock()
        self.outstanding = b""  # the chunk whose echo is awaited
        self.matched = 0  # bytes of it echoed so far
        self.round_trips = 0
        self.verified = 0
        self.draining = False

    def start(self) -> None:
        with self.lock:
            self.clients.port.recv(self.sock, 65536)
            self.send_chunk()

    def send_chunk(self) -> None:
        self.outstanding = self.rng.randbytes(self.rng.randint(1, MAX_CHUNK))
        self.matched = 0
        # data= carries the length: the echo can be handled before this send's completion is,
        # by which time ``outstanding`` already holds the next chunk.
        self.clients.port.send(self.sock, self.outstanding, data=len(self.outstanding))

    def on_completion(self, completion: portio.Completion) -> None:
        port = self.clients.port
        with self.lock:
            if completion.error is not None:
                self.clients.fail(f"client {completion.kind}: {completion.error!r}")
                port.close_handle(self.sock)
                self.clients.connection_done(self.round_trips, self.verified)
                return
            if completion.kind == "connect":
                self.clients.connection_up()  # the echo starts once every client is up
            elif completion.kind == "send":
                if completion.nbytes != completion.data:
                    self.clients.fail(f"send completed {completion.nbytes} of "
                                      f"{completion.data} bytes")
            elif completion.result:
                self.check_echo(completion.result)
                port.recv(self.sock, 65536)
            else:
                if not self.draining or self.matched != len(self.outstanding):
                    self.clients.fail("the server closed a connection early")
                port.close_handle(self.sock)
                self.clients.connection_done(self.round_trips, self.verified)

    def check_echo(self, data: bytes) -> None:
        end = self.matched + len(data)
        if data != self.outstanding[self.matched:end]:
            self.clients.fail(f"echo mismatch after {self.verified + self.matched} bytes")
        self.matched = end
        if self.matched == len(self.outstanding):
            self.round_trips += 1
            self.verified += len(self.outstanding)
            if time.monotonic() < self.clients.deadline:
                self.send_chunk()
            else:
                self.draining = True
                self.sock.shutdown(socket.SHUT_WR)


def run_clients(backend: str, host: str, port_number: int, count: int, seconds: float,
                seed: int) -> dict[str, Any]:
    """The child process's job: connect ``count`` clients, echo for ``seconds``, report."""
    started = time.monotonic()
    stop = threading.Event()
    worker_errors: list[str] = []
    with portio.open_port(backend) as port:
        workers = run_workers(port, stop, worker_errors)
        # Connect everyone first, then echo on all connections at once until the deadline.
        clients = EchoClients(port, (host, port_number), count, time.monotonic() + 3600, seed)
        connected = clients.all_connected.wait(120)
        connect_seconds = time.monotonic() - started
        clients.deadline = time.monotonic() + seconds
        for client in clients.clients if connected else []:
            client.start()
        finished = connected and clients.all_finished.wait(seconds + 120)
        stop.set()
        for worker in workers:
            worker.join(10)
    return {
        "connections": count, "connected": clients.connected, "all_connected": connected,
        "finished": clients.finished, "all_finished": finished,
        "round_trips": clients.round_trips, "bytes_verified": clients.verified,
        "connect_seconds": round(connect_seconds, 2),
        "echo_seconds": round(time.monotonic() - started - connect_seconds, 2),
        "errors": clients.errors + worker_errors,
    }


if __name__ == "__main__":
    # python echo_load.py clients BACKEND HOST PORT COUNT SECONDS SEED
    _, _, backend_arg, host_arg, port_arg, count_arg, seconds_arg, seed_arg = sys.argv
    report = run_clients(backend_arg, host_arg, int(port_arg), int(count_arg),
                         float(seconds_arg), int(seed_arg))
    print(json.dumps(report))
