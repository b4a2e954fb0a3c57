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
from types import FrameType
from typing import Any

from portio import Completion, CompletionPort, OperationCancelled

__all__ = ["BUFFER_SIZE", "COPY_LIMIT", "MAX_SENDS_IN_FLIGHT", "SHUTDOWN_GRACE",
           "STOP_POLL_INTERVAL", "STREAM_BUFFER_SIZE", "Client", "EchoServer", "IoData",
           "StopFlag", "format_address", "open_listener", "print_ready", "ready_line"]

log = logging.getLogger("portio.echo")

#: One receive buffer per client: big enough that a multi-MiB echo needs few round trips
#: through the port, small enough that 10 000 clients cost well under 1 GiB.
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


#: Echo sends one client may have in flight.  Like the seed's server (on a read completion it
#: calls WSASend and then WSARecv at once), a streaming client gets its next receive while the
#: echo of the last one is being sent, so its bytes keep flowing both ways; at this bound the
#: next receive waits for a send to complete.  A client that never reads therefore holds at
#: most this many buffers in sends plus the one its receive uses.
MAX_SENDS_IN_FLIGHT = 2
#: A receive of more than this many bytes means the client streams: more bytes are probably
#: waiting, so the buffer goes to the echo send and the next receive starts at once, into
#: another buffer.  A smaller receive is a message whose sender most likely waits for its echo:
#: a receive started now would find nothing and wait, which costs every backend more than one
#: started when the bytes are there (io_uring arms a poll; the selector backend makes a failed
#: recv and an epoll change), so it starts when the send completes, into the same buffer.  (If
#: another send is still in flight, the echo is a copy: that send's completion may restart the
#: receive first.  For a few KiB a copy costs less than a second buffer.)
COPY_LIMIT = 16 * 1024


# ---------------------------------------------------------------------- per-handle / per-I/O data
class Client:
    """Per-handle data, the completion key of one client: its socket and its address, and the
    state of its echo pipeline (receive buffer, spare buffers, sends in flight)."""

    __slots__ = ("address", "ended", "io", "lock", "receiving", "sends", "sock", "spare")

    def __init__(self, sock: socket.socket, address: Any) -> None:
        self.sock = sock
        self.address = address
        #: Serialises the pipeline state: in the port model a receive's completion and a
        #: send's can be handled by two workers at once.
        self.lock = threading.Lock()
        #: The per-I/O data of the receive in flight (or the next one).
        self.io = IoData(bytearray(BUFFER_SIZE))
        #: Buffers of the current size that completed sends gave back (at most
        #: MAX_SENDS_IN_FLIGHT of them).
        self.spare: list[IoData] = []
        #: Echo sends started and not yet completed.
        self.sends = 0
        #: A receive is posted; False while the client waits at MAX_SENDS_IN_FLIGHT.
        self.receiving = True
        #: The client closed its side: it is closed once the echo sends in flight are done.
        self.ended = False

    def next_receive_buffer(self, filled: bool) -> IoData:
        """(lock held) The per-I/O data for the next receive, once the last one's buffer went
        to a send: a larger buffer if that receive ``filled`` it (the client streams), else a
        spare one of the same size, else a new one."""
        size = len(self.io.buffer)
        if filled and size < STREAM_BUFFER_SIZE:
            self.spare.clear()  # smaller buffers are no use any more
            return IoData(bytearray(STREAM_BUFFER_SIZE))
        return self.spare.pop() if self.spare else IoData(bytearray(size))

    def give_back(self, io: IoData) -> None:
        """(lock held) A send completed: keep its buffer for a later receive, unless the client
        has moved to larger buffers meanwhile."""
        if len(io.buffer) == len(self.io.buffer):
            self.spare.append(io)

    def __repr__(self) -> str:
        return f"<Client {format_address(self.address)}>"


class IoData:
    """Per-I/O data of a receive, and of the send that echoes it from the same buffer: the
    buffer.  (A send of a small copy carries none.)"""

    __slots__ = ("buffer",)

    def __init__(self, buffer: bytearray) -> None:
        self.buffer = buffer

    def __repr__(self) -> str:
        return f"<IoData {len(self.buffer)} bytes>"


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
        # The server's one receive call: every receive of every client starts here.
        self.port.recv(client.sock, client.io.buffer, data=client.io, callback=callback)

    def on_completion(self, completion: Completion,
                      callback: Callable[[Completion], object] | None) -> None:
        """The echo state machine for one completed recv or send of one client; ``callback``
        is what the next operation is started with (None in the port model)."""
        client: Client = completion.key
        error = completion.error
        if error is not None:
            if not isinstance(error, OperationCancelled):
                self.close_client(client, f"{type(error).__name__}: {error}")
            # (cancelled: close_handle did it, and whoever closed the client owns the cleanup)
            return
        try:
            if completion.kind == "recv":
                self._echo(client, completion.data, completion.nbytes, callback)
            else:
                self._sent(client, completion.data, callback)
        except (ValueError, OSError) as exc:
            # The client (or the port) was closed meanwhile, by shutdown.
            self.close_client(client, f"{type(exc).__name__}: {exc}")

    def _echo(self, client: Client, io: IoData, nbytes: int,
              callback: Callable[[Completion], object] | None) -> None:
        """A receive completed: send its bytes back; receive again at once if the client
        streams and is below its bound of sends in flight (else when a send completes)."""
        if nbytes == 0:
            # End of its stream.  The echo still in flight is owed to the client (close_handle
            # would cancel it), so the last send's completion closes it if one is pending.
            with client.lock:
                client.ended = True
                idle = client.sends == 0
            if idle:
                self.close_client(client, "closed by peer")
            return
        payload: bytes | memoryview
        with client.lock:
            client.sends += 1
            if nbytes <= COPY_LIMIT:
                if client.sends == 1:
                    # No other send can complete first and restart the receive into this
                    # buffer: echo straight from it (it is free again once this send is).
                    payload, sent_io = memoryview(io.buffer)[:nbytes], io
                else:
                    payload, sent_io = bytes(memoryview(io.buffer)[:nbytes]), None
                again = client.receiving = False
            else:
                # The send owns this buffer until it completes; the next receive takes another.
                payload, sent_io = memoryview(io.buffer)[:nbytes], io
                client.io = client.next_receive_buffer(nbytes == len(io.buffer))
                again = client.receiving = client.sends < MAX_SENDS_IN_FLIGHT
            # Started under the lock: a send completing on another worker must not restart
            # the receive, and have its bytes echoed, before these are queued.
            self.port.send(client.sock, payload, data=sent_io, callback=callback)
        if again:
            self._start_recv(client, callback)

    def _sent(self, client: Client, io: IoData | None,
              callback: Callable[[Completion], object] | None) -> None:
        """An echo send completed: keep its buffer, and resume receiving if the client was
        held at its bound (or close it, if it ended its stream and this was its last echo)."""
        with client.lock:
            client.sends -= 1
            if io is not None and io is not client.io:
                client.give_back(io)
            finished = client.ended and client.sends == 0
            resume = not (client.receiving or client.ended)
            if resume:
                client.receiving = True
        if finished:
            self.close_client(client, "closed by peer")
        elif resume:
            self._start_recv(client, callback)

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
