"""What both echo server models share: the per-handle and per-I/O data, the echo state machine,
client bookkeeping, the stop flag, the listening socket and the ready line.

The models themselves (how completions are waited for and how clients are accepted) are
:mod:`portio.echo.server_port` and :mod:`portio.echo.server_routine`.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal

from portio import Completion, CompletionPort, OperationCancelled

__all__ = ["BUFFER_SIZE", "SHUTDOWN_GRACE", "STOP_POLL_INTERVAL", "STREAM_BUFFER_SIZE", "Client",
           "EchoServer", "IoData", "StopFlag", "format_address", "open_listener", "print_ready",
           "ready_line"]

log = logging.getLogger("portio.echo")

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
    that client only.  This class is what the models share; ``model`` picks how completions
    are waited for (:mod:`~portio.echo.server_port` or :mod:`~portio.echo.server_routine`).
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

    def run(self) -> None:
        """Serve until the stop flag is set, then shut down cleanly."""
        # Imported here: each model module builds on this one.
        from portio.echo import server_port, server_routine

        (server_routine.serve if self.model == "routine" else server_port.serve)(self)

    def port_failed(self, where: str) -> None:
        """(in an ``except`` block) The port itself failed: log it, stop the server, exit 1."""
        log.exception("the completion port failed in %s; stopping", where)
        self.failed = True
        self.stop.set()

    def add_client(self, conn: socket.socket, address: Any) -> Client | None:
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

    def close_client(self, client: Client, reason: str) -> None:
        """Close one client, once, whoever asks first (its worker, or shutdown)."""
        if not self._forget(client):
            return
        log.info("disconnected: %s (%s)", client, reason)
        try:
            self.port.close_handle(client.sock)
        except (ValueError, OSError):
            # The port is already closed (PortClosed is a ValueError) or the handle with it.
            client.sock.close()

    def start_client(self, client: Client,
                     callback: Callable[[Completion], object] | None) -> None:
        """Start serving a client just accepted: its first receive."""
        try:
            self._start_recv(client, callback)
        except (ValueError, OSError) as exc:
            self.close_client(client, f"{type(exc).__name__}: {exc}")

    def _start_recv(self, client: Client, callback: Callable[[Completion], object] | None
                    ) -> None:
        io = client.io
        io.mode = "read"
        self.port.recv(client.sock, io.size if io.buffer is None else io.buffer, data=io,
                       callback=callback)

    def on_completion(self, completion: Completion,
                      callback: Callable[[Completion], object] | None) -> None:
        """The echo state machine for one completed recv or send of one client; ``callback``
        is what the next operation is started with (None in the port model)."""
        client: Client = completion.key
        io: IoData = completion.data
        if isinstance(completion.error, OperationCancelled):
            return  # close_handle cancelled it: whoever closed the client owns the cleanup
        if completion.error is not None:
            self.close_client(client, f"{type(completion.error).__name__}: {completion.error}")
            return
        try:
            if io.mode == "read":
                if completion.nbytes == 0:
                    self.close_client(client, "closed by peer")
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
            self.close_client(client, f"{type(exc).__name__}: {exc}")

    def close_all(self) -> None:
        """Close every client (shutdown)."""
        with self._clients_lock:
            clients = list(self._clients.values())
        for client in clients:
            self.close_client(client, "server shutting down")


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


def print_ready(line: str) -> None:
    """Print the ready line, at once (scripts wait for it on a pipe)."""
    print(line, flush=True)
