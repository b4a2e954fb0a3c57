"""portio-echo: the classic IOCP echo programs, rebuilt on one completion port.

The classic teaching sequence for Windows I/O has three programs; each has a counterpart here:

``portio-echo serve --model routine``
    The overlapped echo server driven by *completion routines* in an alertable wait: one
    thread, every operation started with ``callback=``, and :meth:`CompletionPort.dispatch`
    (the ``SleepEx(..., TRUE)`` analog) runs the routines.  Read-done starts the echo send,
    write-done starts the next recv.
``portio-echo serve`` (``--model port``, the default)
    The *completion-port* echo server: the main thread accepts, registers each client with its
    per-handle data (the socket and the address) as the completion key, and starts a recv whose
    per-I/O data is the buffer and whether it is a read or a write; ``--threads`` workers loop
    on :meth:`CompletionPort.get_many`.
``portio-echo client``
    The *stable* echo client: it keeps reading until every byte it sent has come back, which is
    the only correct way to use a TCP stream (one ``send`` may come back in many ``recv``\\ s).

Memory per client is bounded: each client has one receive of ``size`` bytes in flight, and the
next recv is only started once the echo of the previous one has been sent.  The receive is
given a size, not a buffer, so an idle client holds no receive buffer at all: the bytes object
exists only once data has arrived, and only until its echo is sent.  Only a client whose
receives fill their size (it streams) gets a reused 256 KiB buffer, until one no longer does.
A client that never reads stalls only itself (the kernel's socket buffers fill and its send
waits): backpressure instead of unbounded buffering.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal

import portio
from portio import Completion, CompletionPort, OperationCancelled, PortClosed

__all__ = ["BUFFER_SIZE", "STREAM_BUFFER_SIZE", "Client", "EchoServer", "IoData", "main"]

log = logging.getLogger("portio.echo")

DEFAULT_PORT = 9190
#: The size of a client's receives: big enough that a multi-MiB echo needs few round trips
#: through the port; costs memory only while data flows (an idle receive holds no buffer).
BUFFER_SIZE = 64 * 1024
#: What the buffer grows to once a receive fills it (the client streams): every operation
#: costs the same few microseconds of Python whatever its size, so a stream moves in 4x fewer
#: round trips; asyncio reads up to this much at a time too.  Only streaming clients pay it.
STREAM_BUFFER_SIZE = 256 * 1024
#: How often a blocking wait wakes to look at the stop flag set by SIGINT/SIGTERM.  Python runs
#: signal handlers between bytecodes of the main thread and retries an interrupted system call
#: (PEP 475), so a wait with no timeout would never notice the flag.
STOP_POLL_INTERVAL = 0.2
#: How long shutdown waits for worker threads or worker processes before giving up on them.
SHUTDOWN_GRACE = 5.0


# ---------------------------------------------------------------------- per-handle / per-I/O data
@dataclass(eq=False, slots=True)
class Client:
    """Per-handle data, the completion key of one client: its socket and its address."""

    sock: socket.socket
    address: Any
    io: IoData = field(init=False)

    def __post_init__(self) -> None:
        self.io = IoData()

    def __repr__(self) -> str:
        return f"<Client {format_address(self.address)}>"


@dataclass(eq=False, slots=True)
class IoData:
    """Per-I/O data carried by each operation: the receive size (and, while the client
    streams, a buffer), and whether a receive or the echo's send is in flight.  A client has
    exactly one, so exactly one operation per client is in flight."""

    size: int = BUFFER_SIZE
    #: Only while the client streams: a reused buffer, since a fresh 256 KiB bytes object per
    #: receive costs an mmap; None otherwise, so a receive given ``size`` holds no memory.
    buffer: bytearray | None = None
    mode: Literal["read", "write"] = "read"
    #: The last receive filled its whole size: the client is streaming.
    filled: bool = False

    def grow_if_streaming(self) -> None:
        """Give a streaming client the larger receive size and a buffer, and take the buffer
        back once a receive no longer fills it (between a send's completion and the next
        receive, when no operation uses the buffer)."""
        if not self.filled:
            self.buffer = None
        elif self.buffer is None:
            self.size = STREAM_BUFFER_SIZE
            self.buffer = bytearray(STREAM_BUFFER_SIZE)


def format_address(address: Any) -> str:
    """``host:port`` for an IPv4/IPv6 address tuple, ``str()`` of anything else."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = f"[{address[0]}]" if ":" in str(address[0]) else str(address[0])
        return f"{host}:{address[1]}"
    return str(address)


# ---------------------------------------------------------------------- the server
class StopFlag:
    """Set by SIGINT/SIGTERM.  The handler only sets a flag: raising from it could unwind the
    main thread out of the middle of a port call that holds the port's lock."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name = ""

    def install(self) -> None:
        """Route SIGINT and SIGTERM (where they exist) to :meth:`set`."""
        for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
            signum = getattr(signal, name, None)
            if signum is not None:
                signal.signal(signum, self._handler)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name
        self.event.set()

    def set(self) -> None:
        """Ask the server to stop."""
        self.event.set()

    @property
    def is_set(self) -> bool:
        """True once a stop was asked for."""
        return self.event.is_set()


class EchoServer:
    """The echo server on one completion port, in either model.

    ``run()`` serves until ``stop`` is set, then stops accepting, closes every client and the
    port, and returns.  One client's failure (reset, abrupt close, anything unexpected) closes
    that client only.
    """

    def __init__(self, listener: socket.socket, port: CompletionPort, *, model: str,
                 threads: int, max_clients: int, stop: StopFlag) -> None:
        self.listener = listener
        self.port = port
        self.model = model
        self.threads = threads
        self.max_clients = max_clients
        self.stop = stop
        self._clients: dict[int, Client] = {}  # id(client) -> client, for shutdown
        self._clients_lock = threading.Lock()
        #: Set when the port itself failed (not one client): the server stops and exits 1.
        self.failed = False

    def _port_failed(self, where: str) -> None:
        log.exception("the completion port failed in %s; stopping", where)
        self.failed = True
        self.stop.set()

    # ------------------------------------------------------------------ shared
    def _add_client(self, conn: socket.socket, address: Any) -> Client | None:
        """Register a new connection with its per-handle data; None if refused."""
        with self._clients_lock:
            full = self.max_clients and len(self._clients) >= self.max_clients
            if not full:
                client = Client(conn, address)
                self._clients[id(client)] = client
        if full:
            # Closing at once tells the client "no" immediately; leaving it in the backlog
            # would make it hang with no answer.
            log.warning("refusing %s: --max-clients %d reached",
                        format_address(address), self.max_clients)
            conn.close()
            return None
        try:
            self.port.register(conn, client)
        except (ValueError, OSError) as exc:
            log.info("cannot register %s: %s", client, exc)
            self._forget(client)
            conn.close()
            return None
        log.info("connected: %s", client)
        return client

    def _forget(self, client: Client) -> bool:
        with self._clients_lock:
            return self._clients.pop(id(client), None) is not None

    def _close_client(self, client: Client, reason: str) -> None:
        """Close one client, once, whoever asks first (its worker, or shutdown)."""
        if not self._forget(client):
            return
        log.info("disconnected: %s (%s)", client, reason)
        try:
            self.port.close_handle(client.sock)
        except (ValueError, OSError):
            # The port is already closed (PortClosed is a ValueError) or the handle with it.
            client.sock.close()

    def _start_recv(self, client: Client, callback: Callable[[Completion], object] | None
                    ) -> None:
        io = client.io
        io.mode = "read"
        self.port.recv(client.sock, io.size if io.buffer is None else io.buffer, data=io,
                       callback=callback)

    def _on_completion(self, completion: Completion,
                       callback: Callable[[Completion], object] | None) -> None:
        """The echo state machine for one completed recv or send of one client; ``callback``
        is what the next operation is started with (None in the port model)."""
        client: Client = completion.key
        io: IoData = completion.data
        if isinstance(completion.error, OperationCancelled):
            return  # close_handle cancelled it: whoever closed the client owns the cleanup
        if completion.error is not None:
            self._close_client(client, f"{type(completion.error).__name__}: {completion.error}")
            return
        try:
            if io.mode == "read":
                if completion.nbytes == 0:
                    self._close_client(client, "closed by peer")
                    return
                # The echo carries the same per-I/O data, now in write mode, and sends the
                # received bytes (or the buffer, untouched until this send completes): no copy.
                io.mode = "write"
                io.filled = completion.nbytes == io.size
                self.port.send(client.sock, completion.result if io.buffer is None
                               else memoryview(io.buffer)[:completion.nbytes], data=io,
                               callback=callback)
            else:
                io.grow_if_streaming()
                self._start_recv(client, callback)
        except (ValueError, OSError) as exc:
            # The client (or the port) was closed meanwhile, by shutdown.
            self._close_client(client, f"{type(exc).__name__}: {exc}")

    def _close_all(self) -> None:
        with self._clients_lock:
            clients = list(self._clients.values())
        for client in clients:
            self._close_client(client, "server shutting down")

    # ------------------------------------------------------------------ model "port"
    def _worker(self) -> None:
        """One worker thread: dequeue completions in batches until the port closes."""
        while True:
            try:
                batch = self.port.get_many(64)
            except PortClosed:
                return
            except Exception:
                self._port_failed(threading.current_thread().name)
                return
            for completion in batch:
                try:
                    self._on_completion(completion, None)
                except Exception:  # never let one client take a worker down
                    log.exception("unexpected error on %r", completion)
                    if isinstance(completion.key, Client):
                        self._close_client(completion.key, "unexpected error")

    def _serve_port(self) -> None:
        workers = [threading.Thread(target=self._worker, name=f"portio-echo-worker-{i}")
                   for i in range(self.threads)]
        for worker in workers:
            worker.start()
        # The main thread accepts with a *blocking* accept(), as the classic IOCP server does,
        # rather than with an accept operation on the port: accepting is the one job the main
        # thread has, so blocking costs nothing; the workers stay a pure data path (an accept
        # completion would land on any worker and need a second kind of key); and it is the
        # same code on every backend.  The accept times out every STOP_POLL_INTERVAL only so
        # that a stop asked for by a signal is seen.
        self.listener.settimeout(STOP_POLL_INTERVAL)
        try:
            while not self.stop.is_set:
                try:
                    conn, address = self.listener.accept()
                except TimeoutError:
                    continue
                except OSError as exc:  # e.g. EMFILE: say so and keep serving the others
                    log.warning("accept failed: %s", exc)
                    time.sleep(STOP_POLL_INTERVAL)
                    continue
                conn.settimeout(None)  # accepted sockets inherit the listener's timeout
                client = self._add_client(conn, address)
                if client is None:
                    continue
                try:
                    self._start_recv(client, None)
                except (ValueError, OSError) as exc:
                    self._close_client(client, f"{type(exc).__name__}: {exc}")
        finally:
            self.listener.close()  # stop accepting first: new clients are refused at once
            self._close_all()
            self.port.close()  # wakes every worker blocked in get_many with PortClosed
            for worker in workers:
                worker.join(SHUTDOWN_GRACE)
                if worker.is_alive():
                    log.warning("%s did not stop within %g s", worker.name, SHUTDOWN_GRACE)

    # ------------------------------------------------------------------ model "routine"
    def _routine(self, completion: Completion) -> None:
        """The completion routine of every client operation (read-done and write-done)."""
        try:
            self._on_completion(completion, self._routine)
        except Exception:
            log.exception("unexpected error on %r", completion)
            self._close_client(completion.key, "unexpected error")

    def _on_accept(self, completion: Completion) -> None:
        """The completion routine of the accept operation: take the client, accept again."""
        if isinstance(completion.error, OperationCancelled) or self.stop.is_set:
            if completion.result is not None:
                completion.result[0].close()
            return
        if completion.error is not None:
            log.warning("accept failed: %s", completion.error)
        else:
            conn, address = completion.result
            client = self._add_client(conn, address)
            if client is not None:
                try:
                    self._start_recv(client, self._routine)
                except (ValueError, OSError) as exc:
                    self._close_client(client, f"{type(exc).__name__}: {exc}")
        self.port.accept(self.listener, callback=self._on_accept)

    def _serve_routine(self) -> None:
        # One thread does everything, so accepting is an operation too: a blocking accept
        # would starve the routines of the clients already connected.
        self.port.register(self.listener, None)
        try:
            self.port.accept(self.listener, callback=self._on_accept)
            while not self.stop.is_set:
                self.port.dispatch(STOP_POLL_INTERVAL)  # the alertable wait
        except Exception:
            self._port_failed("dispatch")
        finally:
            try:
                self.port.close_handle(self.listener)  # cancels the pending accept
            except ValueError:
                self.listener.close()
            self._close_all()
            self.port.close()

    def run(self) -> None:
        """Serve until the stop flag is set, then shut down cleanly."""
        if self.model == "routine":
            self._serve_routine()
        else:
            self._serve_port()


def open_listener(host: str, port: int, *, reuse_port: bool = False,
                  backlog: int = socket.SOMAXCONN) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 if ``host`` is an IPv6 address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if sys.platform != "win32":
            # Restart at once on the same port despite connections in TIME_WAIT (on Windows
            # SO_REUSEADDR would instead let another process steal the port).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            if sys.platform == "win32":
                raise OSError("SO_REUSEPORT does not exist on Windows")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def ready_line(address: Any, backend: str, model: str, threads: int, workers: int = 1) -> str:
    """The one line the server prints on stdout once it accepts connections."""
    line = (f"portio-echo ready on {format_address(address)} backend={backend} "
            f"model={model} threads={threads}")
    return line + (f" workers={workers}" if workers > 1 else "")


def _print_ready(line: str) -> None:
    print(line, flush=True)


def serve(args: argparse.Namespace) -> int:
    """``portio-echo serve``."""
    stop = StopFlag()
    stop.install()
    if args.workers > 1:
        return _supervise(args, stop)
    try:
        # Concurrency 0, as the classic server's CreateIoCompletionPort(..., 0): the port runs
        # one thread per CPU this process may use, however many workers wait on it; more
        # workers than that only stand by (a worker blocked elsewhere lets another run).
        port = portio.open_port(args.backend)
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    threads = 1 if args.model == "routine" else (args.threads or port.concurrency)
    try:
        listener = open_listener(args.host, args.port, reuse_port=args.reuse_port)
    except OSError as exc:
        port.close()
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
        return 2
    server = EchoServer(listener, port, model=args.model, threads=threads,
                        max_clients=args.max_clients, stop=stop)
    _print_ready(ready_line(listener.getsockname(), port.backend, args.model, threads))
    server.run()
    log.info("stopped%s", f" by {stop.signal_name}" if stop.signal_name else "")
    return 1 if server.failed else 0


def _supervise(args: argparse.Namespace, stop: StopFlag) -> int:
    """``--workers N``: N server processes, each with its own listening socket bound to the same
    port with SO_REUSEPORT, so the kernel spreads connections over them and the server scales
    past one core despite the GIL.  This process only starts, watches and stops them."""
    if not hasattr(socket, "SO_REUSEPORT") or sys.platform == "win32":
        log.error("--workers needs SO_REUSEPORT (Linux or BSD); use --threads instead")
        return 2
    # For --port 0 the port must be chosen once for all workers: a bound (not listening)
    # placeholder with SO_REUSEPORT reserves it until the workers hold it themselves.  Not
    # listening, it is never handed a connection.
    placeholder = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    try:
        placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        placeholder.bind((args.host, args.port))
    except OSError as exc:
        placeholder.close()
        log.error("cannot bind %s:%d: %s", args.host, args.port, exc)
        return 2
    address = placeholder.getsockname()
    command = [sys.executable, "-m", "portio.echo", "serve", "--host", args.host,
               "--port", str(address[1]), "--model", args.model, "--workers", "1",
               "--reuse-port", "--max-clients", str(args.max_clients)]
    if args.backend:
        command += ["--backend", args.backend]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.verbose:
        command += ["--verbose"]
    children: list[subprocess.Popen[str]] = []
    ready: list[str] = []
    try:
        for _ in range(args.workers):
            child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            children.append(child)
            assert child.stdout is not None
            line = child.stdout.readline()  # the worker's ready line (or "" if it died)
            if not line.startswith("portio-echo ready"):
                log.error("worker %d failed to start (exit code %s)", child.pid, child.wait())
                return 2
            ready.append(line)
        placeholder.close()
        fields = dict(part.split("=", 1) for part in ready[0].split() if "=" in part)
        _print_ready(ready_line(address, fields["backend"], args.model, int(fields["threads"]),
                                args.workers))
        while not stop.is_set:
            for child in children:
                if child.poll() is not None and not stop.is_set:
                    log.error("worker %d exited with code %d; stopping the others", child.pid,
                              child.returncode)
                    stop.set()
            stop.event.wait(STOP_POLL_INTERVAL)
    finally:
        placeholder.close()
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        failed = False
        for child in children:
            try:
                code = child.wait(SHUTDOWN_GRACE)
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not stop within %g s; killing it", child.pid,
                            SHUTDOWN_GRACE)
                child.kill()
                code = child.wait()
            failed |= code not in (0, -signal.SIGTERM)
            if child.stdout is not None:
                child.stdout.close()
    return 1 if failed else 0


# ---------------------------------------------------------------------- the client
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


def _client_lines(sock: socket.socket) -> int:
    """Send stdin line by line; write each echo to stdout once every byte of it came back.
    A line longer than BUFFER_SIZE is taken in pieces, so memory stays bounded."""
    stdin, out = sys.stdin.buffer, sys.stdout.buffer
    while line := stdin.readline(BUFFER_SIZE):
        out.write(_echo(sock, line))
        out.flush()
    return 0


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
            return _client_lines(sock)
        except OSError as exc:
            print(f"portio-echo client: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130


# ---------------------------------------------------------------------- command line
def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``portio-echo`` command line."""
    parser = argparse.ArgumentParser(
        prog="portio-echo",
        description="The classic IOCP echo server and stable echo client, on a portio port.")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--host", default="127.0.0.1", help="address (default: %(default)s)")
        sub.add_argument("--port", type=_non_negative, default=DEFAULT_PORT,
                         help="TCP port (default: %(default)s; 0 = any free port, printed)")
        sub.add_argument("--backend", choices=sorted(portio.backend_status()), default=None,
                         help="portio backend (default: $PORTIO_BACKEND, else the best here)")
        sub.add_argument("-v", "--verbose", action="store_true",
                         help="log connects, disconnects and errors to stderr")

    serve_parser = commands.add_parser("serve", help="run the echo server")
    common(serve_parser)
    serve_parser.add_argument("--model", choices=("port", "routine"), default="port",
                              help="port: worker threads on get_many (default); "
                                   "routine: one thread, callbacks run by dispatch()")
    serve_parser.add_argument("--threads", type=_non_negative, default=0,
                              help="worker threads for --model port (default: CPU count)")
    serve_parser.add_argument("--workers", type=_positive, default=1,
                              help="server processes sharing the port with SO_REUSEPORT "
                                   "(Linux/BSD; default: 1)")
    serve_parser.add_argument("--max-clients", type=_non_negative, default=0,
                              help="refuse connections beyond this many (default: 0 = no limit)")
    serve_parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve_parser.set_defaults(run=serve)

    client_parser = commands.add_parser("client", help="run the stable echo client")
    common(client_parser)
    client_parser.add_argument("--count", type=_positive, default=None,
                               help="scripted run: messages per connection")
    client_parser.add_argument("--size", type=_positive, default=64,
                               help="scripted run: bytes per message (default: %(default)s)")
    client_parser.add_argument("--connections", type=_positive, default=1,
                               help="scripted run: concurrent connections (default: %(default)s)")
    client_parser.add_argument("--timeout", type=float, default=60.0,
                               help="give up after this many seconds (default: %(default)s)")
    client_parser.set_defaults(run=client)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``portio-echo``; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="portio-echo[%(process)d]: %(levelname)s %(message)s",
                        stream=sys.stderr)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
