"""The CompletionPort interface and the machinery every backend shares.

A backend only knows how to *start* I/O and how to *wait* for the OS; everything else lives
here, once: argument checks, the per-handle FIFO of operations, per-operation deadlines, the
completion queue, the concurrency cap, the LIFO release of waiting threads, the routing of
``callback=`` operations to :meth:`CompletionPort.dispatch`, and the close bookkeeping.

Threads and the one lock
------------------------
All shared state is guarded by one ``threading.Lock`` (``self._lock``); nothing relies on the
GIL.  Waiting follows the leader/followers pattern: the first thread that finds nothing to take
becomes the *poller* and waits in the OS (``_poll``, lock released); every other thread waits on
its own condition variable, pushed on a stack so the most recent waiter is woken first (LIFO, as
IOCP releases threads: a hot thread keeps its cache).  When the poller returns it hands the
poller role to the most recent waiter.  A completion produced by a thread that is not the poller
(a post, an operation that finished at once) wakes a waiter, or the poller through
``_wakeup()`` when nobody else could take it.

Ordering
--------
Operations of one direction on a socket ("in": accept/recv/recvfrom; "out": connect/send/sendto)
are started one at a time, in the order they were issued; the rest wait in a FIFO.  That is how
a stream is never reordered, whatever the OS would do with two concurrent receives, and it
makes "a send completes only when all its bytes are sent" safe to implement by re-submitting the
rest.  File reads and writes carry their own offsets and start at once.

Lifetimes
---------
An :class:`Operation` holds its buffer (a memoryview, which also pins a bytearray's size) and its
per-I/O data until it completes; the backend's registry of in-flight operations holds the
operation until the OS has let go of the buffer, even after a cancel or a close.  A socket
receive given a *size* holds no buffer at all (``buffer`` is None, ``size`` says how much): the
backend waits for the data to arrive, without a buffer, then takes it with one non-blocking
call (:meth:`PortBase._receive_ready`), so an idle connection costs no ``size`` bytes.
"""

from __future__ import annotations

import _thread
import abc
import contextlib
import errno
import heapq
import io
import itertools
import math
import os
import signal
import socket
import sys
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from portio._borrowed import BorrowedSocket
from portio.errors import OperationCancelled, PortClosed, operation_timed_out

__all__ = ["MAX_IO_SIZE", "Completion", "CompletionPort", "HandleEntry", "Operation", "PortBase"]

OperationKind = Literal["accept", "connect", "recv", "send", "recvfrom", "sendto", "read", "write"]

#: Largest transfer one operation accepts: Linux caps a single read/write at this many bytes
#: (0x7ffff000), and using one limit everywhere keeps the contract the same on every backend.
MAX_IO_SIZE = 0x7FFFF000
#: How often a thread held back by the concurrency cap looks for running threads that ended.
_CAP_RECHECK = 0.5
#: ``post(nbytes=)`` is a DWORD on Windows.
MAX_POST_NBYTES = 0xFFFFFFFF
#: The longest single OS wait (seconds).  A longer timeout is served by waiting again: epoll
#: takes an int of milliseconds (24.8 days), Windows a DWORD of them (49.7 days), io_uring
#: nanoseconds in 64 bits, so any timeout, 1e300 s included, must be cut into waits.
_MAX_OS_WAIT = 3600.0
#: How long completions the OS has finished may wait while the queue is never empty (posts
#: keep it busy): a thread that takes from the queue reaps the OS once this has passed.  Well
#: above the interpreter's GIL switch interval (5 ms): a thread that let go of the GIL for a
#: system call more often than that would starve every other thread (CPython only forces a
#: switch after a whole interval without one).
_REAP_INTERVAL = 0.02
#: ``bytes`` of a ``sun_path`` (``struct sockaddr_un``): 104 on the BSDs and macOS, 108 else.
_SUN_PATH_MAX = 104 if sys.platform == "darwin" or "bsd" in sys.platform else 108
#: Dead deadline entries (operations that completed first) tolerated before the heap is
#: rebuilt: beyond this and beyond half the heap, they are swept out (as asyncio does).
_DEAD_TIMERS_SWEEP = 64

# A descriptor is a C int on POSIX; a SOCKET/HANDLE is pointer-sized on Windows.
_MAX_HANDLE = 2**64 - 1 if os.name == "nt" else 2**31 - 1

#: A receive that must never block, even on a socket the user made blocking again (Windows
#: has no such flag; its sockets are only read after the kernel said data is there).
_DONTWAIT = int(getattr(socket, "MSG_DONTWAIT", 0))
_WINDOWS = sys.platform == "win32"

#: A stream receive given a size up to this is a plain ``recv(size)``; above it, it reads into
#: the port's scratch buffer of _SCRATCH_SIZE and copies what came.  glibc serves a malloc of
#: 128 KiB or more with mmap, so a fresh 256 KiB bytes object costs page faults and munmap
#: however little arrived (measured: recv(256 KiB) 17 us for 64 bytes and 36 us for 64 KiB;
#: recv_into a reused buffer 1.4 and 4.5 us; recv(64 KiB) 0.9 and 4.3 us).
_DIRECT_RECV = 64 * 1024
_SCRATCH_SIZE = 256 * 1024

#: The direction of each socket operation: its FIFO on the handle.
_DIRECTION = {"accept": "in", "recv": "in", "recvfrom": "in",
              "connect": "out", "send": "out", "sendto": "out"}

Handle = Any  # a socket, an object with fileno(), or an int fd/HANDLE
Callback = Callable[["Completion"], object]


class Completion:
    """One dequeued completion packet: what ``GetQueuedCompletionStatus`` returns.

    ``key`` is the per-handle completion key given to ``register`` (or to ``post``); ``op`` the
    finished :class:`Operation` (``None`` for a post); ``kind`` the operation's kind or ``"post"``;
    ``nbytes`` the bytes transferred (a post's given ``nbytes``); ``result`` the operation's value
    (``None`` when it failed); ``error`` ``None`` or the ``OSError`` it failed with; ``data`` the
    per-I/O data the operation (or post) was started with.
    """

    __slots__ = ("data", "error", "key", "kind", "nbytes", "op", "result")

    def __init__(
        self,
        key: Any,
        op: Operation | None,
        kind: str,
        nbytes: int,
        result: Any,
        error: OSError | None,
        data: Any,
    ) -> None:
        self.key = key
        self.op = op
        self.kind = kind
        self.nbytes = nbytes
        self.result = result
        self.error = error
        self.data = data

    def __repr__(self) -> str:
        outcome = f"error={self.error!r}" if self.error is not None else f"nbytes={self.nbytes}"
        return f"<Completion {self.kind} key={self.key!r} {outcome}>"


class HandleEntry:
    """What the port knows about one registered handle (the per-handle data).

    ``sock`` is a ``socket.socket`` for sockets (for an int fd, a wrapper the port made and will
    detach, never close behind the user's back), else ``None``.  ``inbound``/``outbound`` are
    the FIFOs of socket operations per direction; their head is the started one.
    """

    __slots__ = (
        "closed",
        "family",
        "fd",
        "inbound",
        "key",
        "native",
        "obj",
        "outbound",
        "owns_wrapper",
        "pending",
        "seekable",
        "sock",
        "type",
    )

    def __init__(self, fd: int, obj: Handle, key: Any, sock: socket.socket | None,
                 owns_wrapper: bool, seekable: bool) -> None:
        self.fd = fd
        self.obj = obj
        self.key = key
        self.sock = sock
        self.owns_wrapper = owns_wrapper
        self.family = sock.family if sock is not None else None
        self.type = sock.type if sock is not None else None
        self.seekable = seekable
        self.inbound: deque[Operation] = deque()
        self.outbound: deque[Operation] = deque()
        # file operations not yet completed, in the order they were started (dicts keep
        # order); a socket's are in its two FIFOs
        self.pending: dict[Operation, None] = {}
        self.closed = False
        self.native: Any = None

    def operations(self) -> list[Operation]:
        """Every operation on this handle not yet completed."""
        return [*self.inbound, *self.outbound, *self.pending]


class Operation:
    """One overlapped operation in flight: the portable ``OVERLAPPED``.

    Returned at once by every operation-starting method.  ``kind``, ``handle`` and ``data`` are
    what it was started with; ``done`` turns true when its completion has been produced.
    ``cancel()`` asks for it to complete early with :class:`~portio.OperationCancelled`.
    The other attributes belong to portio and its backends.
    """

    __slots__ = (
        "_done",
        "_port",
        "_started",
        "_timer",
        "address",
        "buffer",
        "callback",
        "cancel_error",
        "data",
        "entry",
        "handle",
        "kind",
        "native",
        "offset",
        "pinned",
        "queue",
        "sent",
        "size",
        "timeout",
        "want_bytes",
    )

    def __init__(self, port: weakref.ref[PortBase], kind: OperationKind, entry: HandleEntry,
                 handle: Handle, data: Any, callback: Callback | None, timeout: float | None,
                 buffer: memoryview | None, want_bytes: bool, offset: int,
                 address: Any, queue: deque[Operation] | None, size: int = 0) -> None:
        # A weak reference: an operation must not keep its port alive, so that a port dropped
        # without close() is collected (and releases its OS objects) even while operations,
        # or completions holding them, are still referenced.
        self._port = port
        self.kind: OperationKind = kind
        self.entry = entry
        self.handle = handle
        self.data = data
        self.callback = callback
        self.timeout = timeout
        self.buffer = buffer
        self.want_bytes = want_bytes
        #: A socket receive given a size: that size, with ``buffer`` None (0 otherwise).
        self.size = size
        self.offset = offset
        self.address = address
        #: The FIFO of its handle and direction, None for file I/O (started at once).
        self.queue = queue
        self.sent = 0
        self.cancel_error: OSError | None = None
        #: The backend's own: its id for the operation, and what the OS must keep alive besides
        #: ``buffer`` (never a cffi object exporting ``buffer``: the cyclic GC could clear the
        #: view under it, see tests/contract/test_lifetimes.py).
        self.native: Any = None
        self.pinned: Any = None
        self._started = False
        self._done = False
        #: Its entry ``[deadline, sequence, op]`` in the port's deadline heap, if it has a
        #: timeout: the entry lets go of the operation the moment it completes.
        self._timer: list[Any] | None = None

    @property
    def done(self) -> bool:
        """True once the operation's completion has been produced (it may not be dequeued yet)."""
        return self._done

    def cancel(self) -> bool:
        """Ask for the operation to complete now with :class:`~portio.OperationCancelled`.

        Returns False when it had already completed (or the port is closed), True otherwise.  If
        the OS finishes the operation before the cancel reaches it, the real result is delivered
        instead: received bytes are never dropped.  Either way it completes exactly once.
        """
        port = self._port()
        if port is None:
            return False  # the port was collected: it was closed, and so was this operation
        return port._cancel_operation(self, OperationCancelled())

    def recv_result(self, nbytes: int) -> bytes | int:
        """The result of a receive of ``nbytes``: a copy of the bytes when the caller passed a
        size, the count when the caller passed its own buffer."""
        if self.want_bytes:
            assert self.buffer is not None
            return bytes(self.buffer[:nbytes])
        return nbytes

    def __repr__(self) -> str:
        state = "done" if self._done else ("started" if self._started else "queued")
        fd = self.entry.fd if self.entry is not None else None
        return f"<Operation {self.kind} fd={fd} {state}>"


class CompletionPort(abc.ABC):
    """An I/O completion port: start overlapped operations, dequeue their completions.

    Obtain one with :func:`portio.open_port`.  Every method is safe to call from any number of
    threads at once.

    Every operation method returns an :class:`Operation` at once and takes three keyword-only
    arguments: ``data`` (the per-I/O data, given back as ``Completion.data``), ``timeout``
    (seconds; on expiry the operation completes with ``TimeoutError``) and ``callback``.  A
    ``callback`` is a completion routine: it is called with one argument, the operation's
    :class:`Completion`, by :meth:`dispatch` in the thread that calls it, and the operation
    never comes out of :meth:`get`/:meth:`get_many`; its return value is ignored.  The payload
    of :meth:`send`, :meth:`sendto` and :meth:`write` is positional only, so ``data=`` always
    means the per-I/O data.
    """

    __slots__ = ()  # so that PortBase's slots leave a port without a __dict__

    backend: ClassVar[str]

    @property
    @abc.abstractmethod
    def concurrency(self) -> int:
        """How many threads may be released from ``get``/``get_many`` at once (never 0)."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once :meth:`close` was called."""

    @abc.abstractmethod
    def register(self, handle: Handle, key: Any = None) -> None:
        """Associate ``handle`` (a socket, an object with ``fileno()``, or an int fd/HANDLE,
        e.g. a :func:`portio.open_file` file) with the port; ``key`` comes back as
        ``Completion.key`` on each of its completions.  A socket is left non-blocking (the
        port needs it so; it stays non-blocking for its lifetime, so blocking calls of your
        own on it raise ``BlockingIOError`` where they would have waited).

        Raises ``TypeError`` for something that is not a handle, ``ValueError`` if it is closed
        or already registered, :class:`~portio.PortClosed` if the port is closed.
        """

    @abc.abstractmethod
    def accept(self, sock: Handle, *, data: Any = None, timeout: float | None = None,
               callback: Callback | None = None) -> Operation:
        """Accept a connection on the listening ``sock``; result ``(conn_socket, address)``.
        The new socket is not registered."""

    @abc.abstractmethod
    def connect(self, sock: Handle, address: Any, *, data: Any = None,
                timeout: float | None = None, callback: Callback | None = None) -> Operation:
        """Connect ``sock`` to ``address``; result ``None``.  A host name in ``address`` is
        resolved at once, in the calling thread: one that does not resolve raises
        :class:`socket.gaierror` from this call (no operation is started)."""

    @abc.abstractmethod
    def recv(self, sock: Handle, size_or_buffer: int | Any, *, data: Any = None,
             timeout: float | None = None, callback: Callback | None = None) -> Operation:
        """Receive up to ``size_or_buffer`` bytes (result ``bytes``) or into the writable buffer
        (result: the count).  ``b""``/0 means the peer closed its side.  Given a size, no
        buffer is held while nothing has arrived: an idle receive costs no ``size`` bytes."""

    @abc.abstractmethod
    def send(self, sock: Handle, payload: Any, /, *, data: Any = None,
             timeout: float | None = None, callback: Callback | None = None) -> Operation:
        """Send every byte of the bytes-like ``payload`` (positional only: ``data=`` is the
        per-I/O data); completes when all are sent (short sends are retried inside portio);
        result and ``nbytes``: the number sent."""

    @abc.abstractmethod
    def recvfrom(self, sock: Handle, size_or_buffer: int | Any, *, data: Any = None,
                 timeout: float | None = None, callback: Callback | None = None) -> Operation:
        """Receive one datagram; result ``(bytes_or_count, address)``.  Given a size, no
        buffer is held while nothing has arrived (as for :meth:`recv`)."""

    @abc.abstractmethod
    def sendto(self, sock: Handle, payload: Any, /, address: Any, *, data: Any = None,
               timeout: float | None = None, callback: Callback | None = None) -> Operation:
        """Send ``payload`` (positional only) as one datagram to ``address``; result: the number
        of bytes sent.  A host name in ``address`` is resolved at once, in the calling thread:
        one that does not resolve raises :class:`socket.gaierror` from this call (no operation
        is started)."""

    @abc.abstractmethod
    def read(self, file: Handle, size_or_buffer: int | Any, offset: int, *, data: Any = None,
             timeout: float | None = None, callback: Callback | None = None) -> Operation:
        """Read at ``offset``; result ``bytes`` or a count (``b""``/0 past end of file)."""

    @abc.abstractmethod
    def write(self, file: Handle, payload: Any, /, offset: int, *, data: Any = None,
              timeout: float | None = None, callback: Callback | None = None) -> Operation:
        """Write all of ``payload`` (positional only) at ``offset``; result: the number of
        bytes written."""

    @abc.abstractmethod
    def post(self, key: Any = None, *, nbytes: int = 0, data: Any = None) -> None:
        """Queue a user completion (``PostQueuedCompletionStatus``): ``kind == "post"``."""

    @abc.abstractmethod
    def get(self, timeout: float | None = None) -> Completion:
        """Dequeue one completion, waiting up to ``timeout`` seconds (``None``: forever).

        Raises ``TimeoutError`` on timeout and :class:`~portio.PortClosed` if the port closes.
        """

    @abc.abstractmethod
    def get_many(self, max_entries: int = 64, timeout: float | None = None) -> list[Completion]:
        """Dequeue everything already queued, up to ``max_entries``, waiting only while nothing
        is; ``[]`` on timeout (``GetQueuedCompletionStatusEx``)."""

    @abc.abstractmethod
    def dispatch(self, timeout: float | None = None) -> int:
        """The alertable wait: run, in this thread, the callbacks of completed operations that
        were started with ``callback=``; wait up to ``timeout`` for at least one; return how many
        ran (0 on timeout).  Such operations never come out of ``get``/``get_many``."""

    @abc.abstractmethod
    def close_handle(self, handle: Handle) -> None:
        """Cancel every pending operation on ``handle`` (each completes with
        :class:`~portio.OperationCancelled`), unregister it, then close it."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the port: pending operations are cancelled and not delivered, every thread
        blocked in ``get``/``get_many``/``dispatch`` raises :class:`~portio.PortClosed`, and so
        does any later call.  Registered handles stay open (only ``close_handle`` closes them).
        Idempotent."""

    def __enter__(self) -> CompletionPort:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Waiter:
    """A thread blocked in get/get_many (wants "get") or dispatch (wants "dispatch")."""

    __slots__ = ("cond", "ident", "notified", "wants")

    def __init__(self, lock: threading.RLock, wants: str) -> None:
        self.cond = threading.Condition(lock)
        self.wants = wants
        self.notified = False
        self.ident = threading.get_ident()


def _check_timeout(timeout: object, what: str) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{what} must be a number of seconds or None, not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"{what} must be >= 0 seconds, got {timeout!r}")
    return float(timeout)


def _writable_buffer(size_or_buffer: Any, what: str) -> tuple[memoryview, bool]:
    """(buffer, want_bytes) for a receive given a size or a caller's buffer."""
    if type(size_or_buffer) is bytearray and size_or_buffer:  # the hot path: a reused buffer
        return memoryview(size_or_buffer), False
    if isinstance(size_or_buffer, bool):
        raise TypeError(f"{what}() needs a size (int) or a writable buffer, not bool")
    if isinstance(size_or_buffer, int):
        return memoryview(bytearray(_check_size(size_or_buffer, what))), True
    try:
        view = memoryview(size_or_buffer)
    except TypeError:
        raise TypeError(f"{what}() needs a size (int) or a writable buffer, "
                        f"not {type(size_or_buffer).__name__}") from None
    if view.readonly:
        raise TypeError(f"{what}() needs a writable buffer; "
                        f"{type(size_or_buffer).__name__} is read-only")
    return _byte_view(view, what), False


def _check_size(size: int, what: str) -> int:
    if not 1 <= size <= MAX_IO_SIZE:
        raise ValueError(f"{what}() size must be between 1 and {MAX_IO_SIZE}, got {size}")
    return int(size)


def _receive_args(size_or_buffer: Any, what: str) -> tuple[memoryview | None, bool, int]:
    """(buffer, want_bytes, size) for a socket receive: given a size, no buffer (the backend
    takes the bytes once they have arrived, see ``PortBase._receive_ready``)."""
    if isinstance(size_or_buffer, int) and not isinstance(size_or_buffer, bool):
        return None, True, _check_size(size_or_buffer, what)
    buffer, want_bytes = _writable_buffer(size_or_buffer, what)
    return buffer, want_bytes, 0


def _readable_buffer(data: Any, what: str) -> memoryview:
    if type(data) is bytes:  # the hot paths: bytes, and a slice of a byte buffer
        return memoryview(data) if len(data) <= MAX_IO_SIZE else _byte_view(memoryview(data), what)
    if type(data) is memoryview and data.format == "B" and data.ndim == 1 and data.c_contiguous \
            and data.nbytes <= MAX_IO_SIZE:
        return data.toreadonly()  # a view of our own: the caller may release theirs
    if isinstance(data, str):
        raise TypeError(f"{what}() needs bytes-like data, not str (encode it first)")
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"{what}() needs bytes-like data, not {type(data).__name__}") from None
    return _byte_view(view, what).toreadonly()


def _byte_view(view: memoryview, what: str) -> memoryview:
    if not view.c_contiguous:
        raise TypeError(f"{what}() needs a contiguous buffer")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if view.nbytes > MAX_IO_SIZE:
        raise ValueError(f"{what}() buffer is larger than {MAX_IO_SIZE} bytes")
    if what not in ("send", "sendto", "write") and view.nbytes == 0:
        raise ValueError(f"{what}() needs a non-empty buffer: a 0-byte receive cannot tell "
                         "data from end of stream")
    return view


def _fileno_of(handle: Handle) -> int:
    if type(handle) is socket.socket:  # the hot path: every operation on a socket asks
        fd: int = handle.fileno()
        if fd < 0:
            raise ValueError(f"handle {handle!r} is closed")
        return fd
    if isinstance(handle, bool):
        raise TypeError("a handle must be a socket, an object with fileno() or an int, not bool")
    if isinstance(handle, int):
        fd = handle
    else:
        fileno = getattr(handle, "fileno", None)
        if fileno is None:
            raise TypeError("a handle must be a socket, an object with fileno() or an int, "
                            f"not {type(handle).__name__}")
        try:
            fd = fileno()
        except (ValueError, OSError) as exc:  # io objects raise ValueError once closed
            raise ValueError(f"handle {handle!r} is closed") from exc
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"{type(handle).__name__}.fileno() returned "
                            f"{type(fd).__name__}, not int")
    if fd < 0:
        raise ValueError(f"handle {handle!r} is closed")
    if fd > _MAX_HANDLE:
        raise ValueError(f"handle {handle!r} is not a valid descriptor (too large)")
    return fd


def _resolve_address(sock: socket.socket, address: Any, what: str) -> Any:
    """A numeric, checked address for ``sock``'s family, so that backends never resolve names
    and never copy more than a ``struct sockaddr`` holds.  Called *without* the port lock: a
    host name costs a ``getaddrinfo``, which may take seconds (``socket.gaierror`` if it fails).
    """
    family = sock.family
    if family in (socket.AF_INET, socket.AF_INET6):
        if not isinstance(address, tuple) or len(address) not in ((2, 4) if family ==
                                                                  socket.AF_INET6 else (2,)):
            raise TypeError(f"{what}() address must be a (host, port) tuple for "
                            f"{family.name}, not {address!r}")
        host, port_number = address[0], address[1]
        if not isinstance(host, str) or isinstance(port_number, bool) \
                or not isinstance(port_number, int):
            raise TypeError(f"{what}() address must be (str host, int port), not {address!r}")
        if not 0 <= port_number <= 65535:
            raise ValueError(f"{what}() port must be 0-65535, got {port_number}")
        if len(address) == 4:
            flowinfo, scope_id = address[2], address[3]
            if isinstance(flowinfo, bool) or not isinstance(flowinfo, int) \
                    or isinstance(scope_id, bool) or not isinstance(scope_id, int):
                raise TypeError(f"{what}() flowinfo and scope_id must be ints, not {address!r}")
            if not 0 <= flowinfo < 2**20 or not 0 <= scope_id < 2**32:
                raise ValueError(f"{what}() flowinfo must be 0..2**20-1 and scope_id "
                                 f"0..2**32-1, got {address!r}")
        try:  # a numeric host needs no resolver (the hot path of sendto)
            socket.inet_pton(family, host)
            return address
        except (OSError, ValueError):
            pass
        if "\0" in host:
            raise ValueError(f"{what}() host contains a NUL character: {host!r}")
        infos = socket.getaddrinfo(host, port_number, family, sock.type)
        resolved: Any = infos[0][4]
        if family == socket.AF_INET6 and len(address) == 4:
            resolved = (resolved[0], resolved[1], address[2], address[3])
        return resolved
    if hasattr(socket, "AF_UNIX") and family == socket.AF_UNIX:
        if not isinstance(address, (str, bytes)):
            raise TypeError(f"{what}() address must be a path for AF_UNIX, not {address!r}")
        path = os.fsencode(address)
        if len(path) > _SUN_PATH_MAX:
            raise ValueError(f"{what}() AF_UNIX path is {len(path)} bytes; sun_path holds at "
                             f"most {_SUN_PATH_MAX}")
        if path and path[0] != 0 and 0 in path:
            raise ValueError(f"{what}() AF_UNIX path contains a NUL character: {address!r}")
        return address
    return address


# ---------------------------------------------------------------------- signals and fork
# Ctrl-C.  Python runs a signal handler in the main thread between two bytecodes, so its
# KeyboardInterrupt can surface in the middle of the port's bookkeeping: between taking a
# completion and returning it, between starting an operation and recording it.  Rather than
# make every line of the port safe against an exception that may come from anywhere, the port
# keeps Ctrl-C out of its own code, as trio does: while Python's *default* SIGINT handler is in
# place, it is replaced (once, from the main thread) by one that behaves the same outside the
# port, and inside it only records the interrupt.  The interrupt is then raised at a safe
# point: where a waiting thread loops (``_wait_until``), or as soon as the main thread is back
# in the caller's code (a helper thread re-raises the signal every millisecond and wakes the
# main thread's waits until it is delivered).  A handler the user installed is left alone.

#: Modules whose frames are "inside the port", and modules the port calls whose frames are
#: looked through to their caller.
_PORT_MODULES = frozenset({"portio._port", "portio._files", "portio._sockaddr", "portio.errors"})
_LIBRARY_MODULES = frozenset({
    "threading", "selectors", "socket", "heapq", "weakref", "_weakrefset", "warnings", "enum",
    "collections", "os", "time", "abc", "io", "struct", "types", "typing", "signal"})
#: Every port not yet collected: for the fork handler and to wake the main thread's waits.
_PORTS: weakref.WeakSet[PortBase] = weakref.WeakSet()
_MAIN_IDENT: int = threading.main_thread().ident or 0
_interrupt_pending = False  # a Ctrl-C arrived inside the port and is not delivered yet
_interrupt_retrip = False  # the next SIGINT is the helper's re-raise, not a new Ctrl-C
_interrupt_handler_checked = False


def _inside_port(frame: Any) -> bool:
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name in _LIBRARY_MODULES:
            frame = frame.f_back
            continue
        return name in _PORT_MODULES or name.startswith("portio.backends.")
    return False


def _sigint_handler(signum: int, frame: Any) -> None:
    """Python's default SIGINT behaviour, except that a KeyboardInterrupt is never raised in
    the middle of the port's own code: there it waits for a safe point (see above)."""
    global _interrupt_pending, _interrupt_retrip
    if _interrupt_retrip:
        _interrupt_retrip = False
        if not _interrupt_pending:
            return  # delivered at a safe point meanwhile
    if not _inside_port(frame):
        _interrupt_pending = False
        raise KeyboardInterrupt
    if not _interrupt_pending:
        _interrupt_pending = True
        threading.Thread(target=_deliver_interrupt, name="portio-sigint", daemon=True).start()


def _deliver_interrupt() -> None:
    global _interrupt_pending, _interrupt_retrip
    if sys.platform != "win32":  # the kernel should give Ctrl-C to the main thread
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    while _interrupt_pending:
        if signal.getsignal(signal.SIGINT) is not _sigint_handler:
            _interrupt_pending = False  # the program handles SIGINT itself now
            return
        for port in list(_PORTS):
            port._wake_thread(_MAIN_IDENT)  # a main thread blocked in the port loops, and raises
        time.sleep(0.001)
        if _interrupt_pending:
            _interrupt_retrip = True
            _thread.interrupt_main(signal.SIGINT)  # the main thread may be back in user code


def _raise_pending_interrupt() -> None:
    """(a safe point, in the main thread) Raise the Ctrl-C that arrived inside the port."""
    global _interrupt_pending
    _interrupt_pending = False
    if signal.getsignal(signal.SIGINT) is _sigint_handler:  # (not if SIGINT was re-handled)
        raise KeyboardInterrupt


def _protect_from_keyboard_interrupt() -> None:
    global _interrupt_handler_checked
    if _interrupt_handler_checked or threading.get_ident() != _MAIN_IDENT:
        return  # signal.signal() works only in the main thread
    _interrupt_handler_checked = True
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _sigint_handler)
    except (ValueError, OSError):  # an embedded interpreter without signal support
        pass


def _after_fork_in_child() -> None:
    for port in list(_PORTS):
        port._inherited()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _default_concurrency() -> int:
    """The CPUs this process may run on (its affinity mask), not the machine's: a server pinned
    to one CPU gains nothing from releasing two threads at once, it only trades the GIL."""
    if sys.version_info >= (3, 13):
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


class PortBase(CompletionPort):
    """The shared implementation of :class:`CompletionPort`; backends subclass it and fill in
    the hooks below (see ``backends/selector.py`` for the smallest one)."""

    # Slots, here and in every backend, for speed in the pure build: CPython 3.11 keeps at most
    # 30 attributes in an instance's inline values; past that (io_uring's port has 34) the
    # instance gets a real dict, and every ``self.x`` and ``self.method()`` of the hot path
    # falls off the interpreter's specialized fast path (callgrind: up to 40 % more
    # instructions per echoed message).  Compiled, a port is a native object: no change.
    __slots__ = (
        "__weakref__", "_active", "_closed", "_closing", "_concurrency", "_constructed",
        "_dead_timers", "_deadlines", "_entries", "_forked", "_idle", "_last_poll", "_lock",
        "_poll_until", "_poller_ident", "_poller_wants", "_polling", "_ready", "_routines",
        "_scratch", "_sequence", "_start_later", "_starting", "_waiters", "_weakself",
    )

    backend: ClassVar[str] = "?"

    # ------------------------------------------------------------------ backend hooks
    @classmethod
    def probe(cls) -> None:
        """Raise :class:`~portio.BackendUnavailable` saying why this backend cannot run here.
        Must *try* the mechanism, since a kernel can refuse it at run time."""

    @abc.abstractmethod
    def _attach(self, entry: HandleEntry) -> None:
        """(lock held) Associate a newly registered handle with the OS object."""

    @abc.abstractmethod
    def _detach(self, entry: HandleEntry) -> None:
        """(lock held) Forget a handle whose operations were all cancelled; it is closed next."""

    @abc.abstractmethod
    def _start(self, op: Operation) -> None:
        """(lock held) Begin the I/O; may finish it at once with :meth:`_finish`."""

    @abc.abstractmethod
    def _cancel(self, op: Operation) -> None:
        """(lock held) Cancel a started operation: finish it with ``op.cancel_error`` now, or
        ask the OS and finish it when the OS answers (with the real result if that won)."""

    @abc.abstractmethod
    def _poll(self, timeout: float | None) -> None:
        """(lock not held; one thread at a time) Wait up to ``timeout`` seconds for the OS and
        finish whatever completed."""

    @abc.abstractmethod
    def _wakeup(self) -> None:
        """(any thread) Make a running :meth:`_poll` return soon."""

    @abc.abstractmethod
    def _shutdown(self) -> None:
        """(lock not held; once) Release the OS resources at close.  Every operation is already
        marked done; buffers must stay alive until the OS has let go of them."""

    # ------------------------------------------------------------------ construction
    def __init__(self, concurrency: object = 0) -> None:
        # ``object``, not ``int`` (here and in the backends): compiled code converts an
        # argument to its declared type on the way in, so True would arrive as 1, unrefused.
        if isinstance(concurrency, bool) or not isinstance(concurrency, int):
            raise TypeError(f"concurrency must be an int, not {type(concurrency).__name__}")
        if concurrency < 0:
            raise ValueError(f"concurrency must be >= 0 (0 means one per CPU), got {concurrency}")
        self._concurrency = concurrency or _default_concurrency()
        # Reentrant, so that a signal handler or a finalizer that runs while this thread is
        # inside the port (and calls post() or close()) cannot deadlock it; see _nested().
        self._lock = threading.RLock()
        self._closed = False
        self._closing = False  # close() has begun (it may finish in another thread)
        self._forked = False  # this is a child's copy of a port inherited across fork()
        self._weakself = weakref.ref(self)  # what operations hold (see Operation.__init__)
        self._entries: dict[int, HandleEntry] = {}
        self._ready: deque[Completion] = deque()
        self._routines: deque[tuple[Callback, Completion]] = deque()
        self._waiters: list[_Waiter] = []
        self._active: set[int] = set()  # idents of threads released from get and not back yet
        self._polling = False
        self._poller_ident = 0
        self._poller_wants = ""
        self._poll_until = math.inf
        self._idle = threading.Condition(self._lock)  # notified when the poller leaves _poll
        self._last_poll = 0.0  # time.monotonic() when a poll last returned
        # [deadline, sequence, op-or-None] lists (see Operation._timer); dead: op completed
        self._deadlines: list[list[Any]] = []
        self._dead_timers = 0
        self._sequence = itertools.count()
        self._starting = False
        self._start_later: list[deque[Operation]] = []
        self._constructed = False  # set by the backend's __init__ once its OS objects exist
        self._scratch: memoryview | None = None  # _receive_ready's buffer, made on first use
        _PORTS.add(self)
        _protect_from_keyboard_interrupt()

    @property
    def concurrency(self) -> int:
        return self._concurrency

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._entries)} handles"
        return (f"<{type(self).__name__} backend={self.backend} "
                f"concurrency={self._concurrency} {state}>")

    # ------------------------------------------------------------------ registration
    def register(self, handle: Handle, key: Any = None) -> None:
        # The caller's code (fileno(), __eq__, attribute lookups) runs before the lock is
        # taken; under it, only what was decided is checked to still hold.
        fd = _fileno_of(handle)
        self._check_not_nested("register")
        self._check_open()
        old = self._entries.get(fd)
        if old is not None and (old.obj is handle or old.obj == fd or not self._is_stale(old)):
            raise ValueError(f"handle {handle!r} (fd {fd}) is already registered")
        entry = self._make_entry(fd, handle, key)
        with self._lock:
            try:
                self._check_open()
                if self._entries.get(fd) is not old:
                    raise ValueError(f"handle {handle!r} (fd {fd}) was registered or closed "
                                     "by another thread meanwhile")
                if old is not None:
                    # The user closed the old object without close_handle and the OS reused
                    # its number: forget the stale entry instead of refusing the new handle.
                    self._forget(old)
                    if old.owns_wrapper and old.sock is not None:
                        old.sock.detach()  # its fd number now belongs to someone else
                try:
                    self._attach(entry)
                except OSError as exc:
                    # e.g. closed by another thread since fileno() was read
                    raise ValueError(f"handle {handle!r} (fd {fd}) cannot be registered: "
                                     f"{exc}") from exc
            except BaseException:
                if entry.owns_wrapper and entry.sock is not None:
                    entry.sock.detach()  # nothing was attached: the number stays the caller's
                raise
            self._entries[fd] = entry

    @staticmethod
    def _is_stale(entry: HandleEntry) -> bool:
        try:
            return bool(_fileno_of(entry.obj) != entry.fd)
        except (TypeError, ValueError):
            return True

    @staticmethod
    def _make_entry(fd: int, handle: Handle, key: Any) -> HandleEntry:
        if isinstance(handle, socket.socket):
            return HandleEntry(fd, handle, key, handle, owns_wrapper=False, seekable=False)
        if getattr(handle, "portio_file", False):
            return HandleEntry(fd, handle, key, None, owns_wrapper=False, seekable=True)
        try:
            # Raises for a descriptor that is not a socket (ENOTSOCK), which classifies it.
            wrapper = BorrowedSocket(fileno=fd)
        except OverflowError:
            raise ValueError(f"handle {handle!r} is not a valid descriptor") from None
        except OSError as exc:
            if exc.errno == errno.EBADF or _is_closed_fd(fd):
                raise ValueError(f"handle {handle!r} is not an open descriptor") from None
            return HandleEntry(fd, handle, key, None, owns_wrapper=False,
                               seekable=_is_seekable(fd))
        return HandleEntry(fd, handle, key, wrapper, owns_wrapper=True, seekable=False)

    def _entry_for(self, handle: Handle, what: str) -> HandleEntry:
        """(lock *not* held: this may call the caller's fileno()) The entry of ``handle``; the
        caller checks, under the lock, that it is still registered (:meth:`_still_registered`).
        """
        fd = _fileno_of(handle)
        entry = self._entries.get(fd)
        if entry is None:
            raise ValueError(f"{what}() on handle {handle!r} (fd {fd}), which is not registered "
                             "with this port: call register() first")
        if entry.obj is not handle:
            self._check_same_handle(entry, handle, what)
        return entry

    def _still_registered(self, entry: HandleEntry, handle: Handle, what: str) -> None:
        """(lock held) Refuse ``entry`` if close_handle() (or a re-register) got there since
        :meth:`_entry_for` found it."""
        if entry.closed or self._entries.get(entry.fd) is not entry:
            raise ValueError(f"{what}() on handle {handle!r} (fd {entry.fd}), which another "
                             "thread unregistered meanwhile (close_handle)")

    def _check_same_handle(self, entry: HandleEntry, handle: Handle, what: str) -> None:
        """``handle`` has the number of ``entry`` but is another object: accept it only if it
        is the same open descriptor (the registered object is still open with that number).
        A number registered as an int stands for whatever holds it: the caller owns it."""
        if isinstance(entry.obj, int) or not self._is_stale(entry):
            return
        raise ValueError(
            f"{what}() on handle {handle!r} (fd {entry.fd}), which is not registered with this "
            f"port: that number belonged to {entry.obj!r}, closed without close_handle() and "
            "reused by the OS; call register() first")

    def _check_open(self) -> None:
        if self._closed:
            if self._forked:
                raise PortClosed("the completion port was inherited across fork(); it belongs "
                                 "to the parent process: open a new port in the child")
            raise PortClosed("the completion port is closed")

    def _check_not_nested(self, what: str) -> None:
        """Refuse a call made from a signal handler or a finalizer that interrupted this very
        thread inside the port (its state is half-updated there); only post() and close()
        are safe in that position."""
        if self._lock._is_owned():  # type: ignore[attr-defined]
            raise RuntimeError(f"{what}() was called from a signal handler or a finalizer "
                               "that interrupted this thread inside the same port; only "
                               "post() and close() may be called there")

    # ------------------------------------------------------------------ operations
    def accept(self, sock: Handle, *, data: Any = None, timeout: float | None = None,
               callback: Callback | None = None) -> Operation:
        return self._submit("accept", sock, data, timeout, callback, None)

    def connect(self, sock: Handle, address: Any, *, data: Any = None,
                timeout: float | None = None, callback: Callback | None = None) -> Operation:
        return self._submit("connect", sock, data, timeout, callback, None,
                            address=self._address_for(sock, address, "connect"))

    def recv(self, sock: Handle, size_or_buffer: int | Any, *, data: Any = None,
             timeout: float | None = None, callback: Callback | None = None) -> Operation:
        buffer, want_bytes, size = _receive_args(size_or_buffer, "recv")
        return self._submit("recv", sock, data, timeout, callback, buffer, want_bytes, size=size)

    # The payloads below are named ``__payload`` as well as positional-only: mypyc ignores
    # ``/``, and a double-underscore name is one no caller passes as a keyword.
    def send(self, sock: Handle, __payload: Any, /, *, data: Any = None,
             timeout: float | None = None, callback: Callback | None = None) -> Operation:
        return self._submit("send", sock, data, timeout, callback,
                            _readable_buffer(__payload, "send"))

    def recvfrom(self, sock: Handle, size_or_buffer: int | Any, *, data: Any = None,
                 timeout: float | None = None, callback: Callback | None = None) -> Operation:
        buffer, want_bytes, size = _receive_args(size_or_buffer, "recvfrom")
        return self._submit("recvfrom", sock, data, timeout, callback, buffer, want_bytes,
                            size=size)

    def sendto(self, sock: Handle, __payload: Any, /, address: Any, *, data: Any = None,
               timeout: float | None = None, callback: Callback | None = None) -> Operation:
        buffer = _readable_buffer(__payload, "sendto")
        return self._submit("sendto", sock, data, timeout, callback, buffer,
                            address=self._address_for(sock, address, "sendto"))

    def _address_for(self, sock: Handle, address: Any, what: str) -> Any:
        """``address`` resolved for ``sock``'s family, before the port lock is taken (see
        ``_resolve_address``)."""
        entry = self._entries.get(_fileno_of(sock))  # a read: only family and type are used
        if entry is None:
            self._check_open()
            entry = self._entry_for(sock, what)  # raises, saying why
        if entry.sock is None:
            raise ValueError(f"{what}() needs a socket; fd {entry.fd} is not one "
                             "(use read()/write() for files)")
        return _resolve_address(entry.sock, address, what)

    def read(self, file: Handle, size_or_buffer: int | Any, offset: int, *, data: Any = None,
             timeout: float | None = None, callback: Callback | None = None) -> Operation:
        buffer, want_bytes = _writable_buffer(size_or_buffer, "read")
        return self._submit("read", file, data, timeout, callback, buffer, want_bytes,
                            offset=_check_offset(offset, "read"))

    def write(self, file: Handle, __payload: Any, /, offset: int, *, data: Any = None,
              timeout: float | None = None, callback: Callback | None = None) -> Operation:
        return self._submit("write", file, data, timeout, callback,
                            _readable_buffer(__payload, "write"),
                            offset=_check_offset(offset, "write"))

    def _submit(self, kind: OperationKind, handle: Handle, data: Any, timeout: object,
                callback: Callback | None, buffer: memoryview | None, want_bytes: bool = False,
                offset: int = 0, address: Any = None, size: int = 0) -> Operation:
        if timeout is not None:
            timeout = _check_timeout(timeout, f"{kind}() timeout")
        if callback is not None and not callable(callback):
            raise TypeError(f"{kind}() callback must be callable, not {type(callback).__name__}")
        lock = self._lock
        if lock._is_owned():  # type: ignore[attr-defined]
            self._check_not_nested(kind)
        # fileno() may be the caller's code: it runs before the lock is taken.
        entry = self._entries.get(_fileno_of(handle))
        if entry is None or entry.obj is not handle:
            if self._closed:
                self._check_open()
            entry = self._entry_for(handle, kind)  # raises, saying why
        with lock:
            if self._closed:
                self._check_open()
            if entry.closed:
                self._still_registered(entry, handle, kind)  # raises: close_handle won
            direction = _DIRECTION.get(kind)
            queue: deque[Operation] | None = None
            if direction is not None:
                if entry.sock is None:
                    raise ValueError(f"{kind}() needs a socket; fd {entry.fd} is not one "
                                     "(use read()/write() for files)")
                queue = entry.inbound if direction == "in" else entry.outbound
            elif entry.sock is not None or not entry.seekable:
                raise io.UnsupportedOperation(
                    f"{kind}() needs a file that supports offsets; fd {entry.fd} is "
                    + ("a socket (use recv()/send())" if entry.sock is not None
                       else "not seekable (a pipe or a terminal?)"))
            op = Operation(self._weakself, kind, entry, handle, data, callback, timeout, buffer,
                           want_bytes, offset, address, queue, size)
            if queue is None:
                entry.pending[op] = None
            if timeout is not None:
                deadline = time.monotonic() + timeout
                op._timer = timer = [deadline, next(self._sequence), op]
                heapq.heappush(self._deadlines, timer)
                if self._polling and deadline < self._poll_until:
                    self._wakeup()  # the poller sleeps past this deadline
            if queue is None:  # file I/O carries its offset: it starts at once
                op._started = True
                self._start_safely(op)
            else:
                queue.append(op)
                if len(queue) == 1:  # nothing ahead of it in its direction: start it now
                    op._started = True
                    try:
                        self._start(op)
                    except Exception:  # (the hot path is spelled out; the rest is shared)
                        self._start_failed(op)
            return op

    def _start_head(self, queue: deque[Operation]) -> None:
        # An operation that finishes inside _start starts the next one from _finish; doing that
        # in this loop rather than by recursion keeps a long queue of instant sends off the stack.
        if self._starting:
            self._start_later.append(queue)
            return
        self._starting = True
        try:
            while True:
                if queue and not queue[0]._started:
                    head = queue[0]
                    head._started = True
                    if head.entry.closed:
                        # close_handle: cancelled in the order they were started, after the
                        # head the OS was still working on, never started themselves.
                        self._finish(head, None, 0, head.cancel_error)
                    else:
                        self._start_safely(head)
                    continue
                if not self._start_later:
                    break
                queue = self._start_later.pop()
        finally:
            self._starting = False

    def _start_safely(self, op: Operation) -> None:
        """Start ``op``; a failure to start is its completion, so a queue can never jam."""
        try:
            self._start(op)
        except Exception:
            self._start_failed(op)

    def _start_failed(self, op: Operation) -> None:
        """(in an ``except`` block) ``op`` could not start: that is its completion."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            self._finish(op, None, op.sent, exc)
        else:  # a backend bug: surface it on the operation, keep serving
            self._finish(op, None, op.sent,
                         OSError(errno.EINVAL, f"{op.kind} could not start: {exc!r}"))

    def _receive_ready(self, op: Operation) -> bool:
        """(lock held) The socket of ``op``, a receive given a size (``op.buffer`` is None),
        is readable: take what arrived with one non-blocking call and finish ``op``.  False if
        nothing was there after all (the backend waits again); an error is the completion."""
        sock = op.entry.sock
        assert sock is not None and op.buffer is None
        if op._done:
            return True  # it completed meanwhile: the bytes stay for the next receive
        try:
            if _WINDOWS and sock.type != socket.SOCK_STREAM:
                # Windows fails a datagram longer than the buffer (WSAEMSGSIZE) where POSIX
                # cuts it to the size: take it whole (the scratch outsizes any datagram), cut.
                n, address = sock.recvfrom_into(self._scratch_buffer())
                data = bytes(self._scratch_buffer()[:min(n, op.size)])
                self._finish(op, data if op.kind == "recv" else (data, address), len(data))
            elif op.kind == "recv" and op.size <= _DIRECT_RECV:
                data = sock.recv(op.size, _DONTWAIT)
                self._finish(op, data, len(data))
            elif op.kind == "recv":
                # Larger: into the port's one scratch buffer (we hold the lock), then a copy of
                # what came.  A stream receive may return less than its size, so the scratch
                # bounds it.
                scratch = self._scratch_buffer()
                n = sock.recv_into(scratch, min(op.size, _SCRATCH_SIZE), _DONTWAIT)
                self._finish(op, bytes(scratch[:n]), n)
            else:
                data, address = sock.recvfrom(op.size, _DONTWAIT)
                self._finish(op, (data, address), len(data))
        except BlockingIOError:
            return False
        except OSError as exc:
            self._finish(op, None, 0, exc)
        return True

    def _scratch_buffer(self) -> memoryview:
        """(lock held) The port's one receive scratch buffer, made on first use."""
        scratch = self._scratch
        if scratch is None:
            scratch = self._scratch = memoryview(bytearray(_SCRATCH_SIZE))
        return scratch

    # ------------------------------------------------------------------ completion
    def _finish(self, op: Operation, result: Any, nbytes: int,
                error: OSError | None = None) -> bool:
        """(lock held) Produce ``op``'s completion, exactly once; False if it already had one."""
        if op._done:
            return False
        op._done = True
        if op._timer is not None:
            self._drop_timer(op)
        entry = op.entry
        queue = op.queue
        if queue is None:
            entry.pending.pop(op, None)
        if error is not None:
            error.__traceback__ = None  # a traceback would keep the poller's frames alive
            result = None
        if not self._closed:  # a closed port delivers nothing
            completion = Completion(entry.key, op, op.kind, nbytes, result, error, op.data)
            if op.callback is not None:
                self._routines.append((op.callback, completion))
                self._wake_one("dispatch")
            else:
                self._ready.append(completion)
                if not self._polling or self._poller_wants != "get" \
                        or self._poller_ident != threading.get_ident():
                    self._wake_one("get")  # (a get poller takes its own: see _wake_one)
        # Only now start the next operation of this direction: if it finishes at once, its
        # completion must queue behind this one.
        if queue is not None:
            if queue[0] is op:
                queue.popleft()
                if queue:
                    self._start_head(queue)
            else:
                queue.remove(op)  # cancelled before it was started
        return True

    def _wake_one(self, wants: str) -> None:
        if wants == "get" and len(self._active) >= self._concurrency:
            return  # at the cap nobody may be released: a running thread takes it next
        if self._polling and self._poller_wants == wants \
                and self._poller_ident == threading.get_ident():
            return  # the poller produced it and takes it itself (_take passes on the rest)
        for waiter in reversed(self._waiters):  # LIFO: the most recent waiter first
            if waiter.wants == wants and not waiter.notified:
                waiter.notified = True
                waiter.cond.notify()
                return
        if self._polling and self._poller_wants == wants \
                and self._poller_ident != threading.get_ident():
            self._wakeup()

    def post(self, key: Any = None, *, nbytes: int = 0, data: Any = None) -> None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, int):
            raise TypeError(f"post() nbytes must be an int, not {type(nbytes).__name__}")
        if not 0 <= nbytes <= MAX_POST_NBYTES:
            raise ValueError(f"post() nbytes must be between 0 and {MAX_POST_NBYTES}, got {nbytes}")
        completion = Completion(key, None, "post", nbytes, None, None, data)
        # True when a signal handler or a finalizer interrupted this thread inside the port.
        nested = self._lock._is_owned()  # type: ignore[attr-defined]
        with self._lock:
            self._check_open()
            self._ready.append(completion)
            if not nested:
                if self._in_own_poll():
                    self._wakeup()  # a signal handler inside this thread's own OS wait
                else:
                    self._wake_one("get")
                return
        # The interrupted code may be half-way through the waiters or the backend's OS
        # object, so the wake-up waits for it to let go of the lock, in another thread.
        threading.Thread(target=self._wake_later, name="portio-post", daemon=True).start()

    def _in_own_poll(self) -> bool:
        """True in a signal handler that interrupted this thread's own wait in the OS."""
        return self._polling and self._poller_ident == threading.get_ident()

    def _wake_later(self) -> None:
        with self._lock:
            if not self._closed:
                self._wake_one("get")

    def _wake_thread(self, ident: int) -> None:
        """Make thread ``ident``'s wait in this port return to its loop (see _sigint_handler)."""
        with self._lock:
            if self._closed:
                return
            if self._polling and self._poller_ident == ident:
                self._wakeup()
            for waiter in self._waiters:
                if waiter.ident == ident:
                    waiter.notified = True
                    waiter.cond.notify()

    # ------------------------------------------------------------------ cancellation
    def _cancel_operation(self, op: Operation, error: OSError) -> bool:
        self._check_not_nested("cancel")
        with self._lock:
            if op._done or self._closed:
                return False
            self._cancel_locked(op, error)
            return True

    def _cancel_locked(self, op: Operation, error: OSError) -> None:
        if op.cancel_error is not None:
            return  # a cancel is already on its way
        op.cancel_error = error
        if op._started:
            self._cancel(op)
        else:
            self._finish(op, None, 0, error)

    def _drop_timer(self, op: Operation) -> None:
        """(lock held) ``op`` completed before its deadline: its heap entry lets go of it at
        once (a server with keep-alive timeouts must not hold every finished operation, its
        buffer and its data, until the deadline), and dead entries are swept out in bulk."""
        assert op._timer is not None
        op._timer[2] = None
        op._timer = None
        self._dead_timers += 1
        heap = self._deadlines
        if self._dead_timers > _DEAD_TIMERS_SWEEP and self._dead_timers * 2 > len(heap):
            heap[:] = [timer for timer in heap if timer[2] is not None]
            heapq.heapify(heap)
            self._dead_timers = 0

    def _expire_deadlines(self) -> None:
        now = time.monotonic()
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            op = heapq.heappop(heap)[2]
            if op is None:
                self._dead_timers -= 1
                continue
            op._timer = None
            assert op.timeout is not None
            self._cancel_locked(op, operation_timed_out(op.kind, op.timeout))

    def _next_deadline(self) -> float:
        heap = self._deadlines
        while heap and heap[0][2] is None:
            heapq.heappop(heap)  # the deadline of an operation that completed first
            self._dead_timers -= 1
        return heap[0][0] if heap else math.inf

    # ------------------------------------------------------------------ waiting
    def get(self, timeout: float | None = None) -> Completion:
        timeout = _check_timeout(timeout, "get() timeout")
        taken = self._take(1, timeout)
        if not taken:
            raise TimeoutError(f"no completion within {timeout:g} s")
        return taken[0]

    def get_many(self, max_entries: int = 64, timeout: float | None = None) -> list[Completion]:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int):
            raise TypeError(f"get_many() max_entries must be an int, "
                            f"not {type(max_entries).__name__}")
        if max_entries < 1:
            raise ValueError(f"get_many() max_entries must be >= 1, got {max_entries}")
        return self._take(max_entries, _check_timeout(timeout, "get_many() timeout"))

    def _take(self, max_entries: int, timeout: float | None) -> list[Completion]:
        me = threading.get_ident()
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        if self._lock._is_owned():  # type: ignore[attr-defined]
            self._check_not_nested("get")
        with self._lock:
            self._active.discard(me)  # calling get again ends this thread's turn
            if not self._wait_until(self._can_take, "get", deadline):
                return []
            ready = self._ready
            taken = [ready.popleft() for _ in range(min(max_entries, len(ready)))]
            self._active.add(me)
            self._reap_if_due("get")
            if ready:
                self._wake_one("get")  # more is queued: let another thread take it
            return taken

    def _reap_if_due(self, wants: str) -> None:
        """(lock held, after taking) The queue may never empty (posts keep it busy), so no
        thread would ever wait in the OS: reap it without waiting now and then, so that the
        OS's completions join the queue in bounded time whatever it holds."""
        if not self._polling:
            now = time.monotonic()
            if now - self._last_poll >= _REAP_INTERVAL:
                self._poll_once(wants, now, now)

    def _can_take(self) -> bool:
        if not self._ready:
            return False
        if len(self._active) < self._concurrency:
            return True
        # At the cap: a thread that ended without calling get again no longer runs, so it
        # must not hold a slot forever (IOCP forgets a thread once it blocks or exits).
        self._active &= {thread.ident for thread in threading.enumerate()}
        return len(self._active) < self._concurrency

    def dispatch(self, timeout: float | None = None) -> int:
        timeout = _check_timeout(timeout, "dispatch() timeout")
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        self._check_not_nested("dispatch")
        with self._lock:
            if not self._wait_until(lambda: bool(self._routines), "dispatch", deadline):
                return 0
            batch = list(self._routines)
            self._routines.clear()
            self._reap_if_due("dispatch")
            if self._routines:
                self._wake_one("dispatch")  # reaped just now: another dispatcher may run them
        for ran, (callback, completion) in enumerate(batch):
            try:
                callback(completion)
            except BaseException:
                # Those not run yet stay queued, in order, for the next dispatch.
                with self._lock:
                    self._routines.extendleft(reversed(batch[ran + 1:]))
                raise
        return len(batch)

    def _wait_until(self, ready: Callable[[], bool], wants: str, deadline: float) -> bool:
        """(lock held) Wait until ``ready()``; False at ``deadline``.  Polls the OS when no
        other thread does, else sleeps on its own condition, keeping its place in the LIFO
        stack of waiters until it leaves."""
        waiter: _Waiter | None = None
        took = False
        polled = False
        try:
            while True:
                if _interrupt_pending and threading.get_ident() == _MAIN_IDENT:
                    _raise_pending_interrupt()  # a safe point: nothing is half-done here
                self._check_open()
                if ready():
                    took = True
                    return True
                now = time.monotonic()
                # A thread the cap holds back does not even poll: what it reaped it could not
                # take, and the running thread polls itself when it next finds nothing queued.
                capped = wants == "get" and len(self._active) >= self._concurrency
                if now >= deadline and (polled or capped or self._polling):
                    return False  # (a zero timeout still looks at the OS once)
                if not self._polling and not capped:
                    if waiter is not None:  # a poller is woken through the OS, not a condition
                        self._waiters.remove(waiter)
                        waiter = None
                    self._poll_once(wants, min(deadline, self._next_deadline()), now)
                    polled = True
                    continue
                if waiter is None:
                    waiter = _Waiter(self._lock, wants)
                    self._waiters.append(waiter)
                waiter.notified = False
                wait = deadline - now
                if capped:
                    # Nobody wakes a thread the cap holds back when a running thread ends
                    # instead of calling get again: so look again now and then.
                    wait = min(wait, _CAP_RECHECK)
                waiter.cond.wait(min(wait, threading.TIMEOUT_MAX, _MAX_OS_WAIT))
        finally:
            if waiter is not None:
                self._waiters.remove(waiter)
            # Leaving: if nobody polls now, the most recent waiter that may run takes the
            # poller role (a get waiter only below the cap, counting this thread if it took).
            if not self._polling and self._waiters and not self._closed:
                running = len(self._active) + (took and wants == "get")
                for other in reversed(self._waiters):
                    if other.wants == "dispatch" or running < self._concurrency:
                        if not other.notified:
                            other.notified = True
                            other.cond.notify()
                        break

    def _poll_once(self, wants: str, until: float, now: float) -> None:
        self._polling = True
        self._poller_ident = threading.get_ident()
        self._poller_wants = wants
        self._poll_until = until
        self._lock.release()
        try:
            self._poll(None if until == math.inf else min(max(0.0, until - now), _MAX_OS_WAIT))
        finally:
            self._lock.acquire()
            self._polling = False
            self._poll_until = math.inf
            self._last_poll = time.monotonic()
            self._idle.notify_all()
        if not self._closed:
            self._expire_deadlines()

    # ------------------------------------------------------------------ closing
    def close_handle(self, handle: Handle) -> None:
        self._check_not_nested("close_handle")
        self._check_open()
        entry = self._entry_for(handle, "close_handle")
        with self._lock:
            self._check_open()
            self._still_registered(entry, handle, "close_handle")
            self._forget(entry)
        obj = entry.obj
        if not isinstance(obj, int) and callable(getattr(obj, "close", None)):
            # Through the object, which owns the number: closing the number under it would
            # let the object close it again later, killing whatever reused it.
            if entry.owns_wrapper and entry.sock is not None:
                entry.sock.detach()
            obj.close()
        elif entry.owns_wrapper and entry.sock is not None:
            entry.sock.close()  # an int that is a socket: the wrapper closes the number
        else:
            self._close_int_handle(entry.fd)

    def _close_int_handle(self, fd: int) -> None:
        """Close a registered int that is not a socket (``close_handle``).  A backend whose
        ints are not POSIX descriptors (iocp: HANDLEs) overrides this."""
        os.close(fd)

    def _forget(self, entry: HandleEntry) -> None:
        """(lock held) Cancel every operation of ``entry`` and unregister it."""
        # Started operations are cancelled in the OS; the ones queued behind them complete,
        # in order, as each predecessor does (see _start_head), never overtaking it.
        entry.closed = True
        pending = entry.operations()
        for op in pending:
            if not op._started:
                op.cancel_error = OperationCancelled("handle closed by close_handle()")
        for op in pending:
            if op._started and not op._done:
                self._cancel_locked(op, OperationCancelled("handle closed by close_handle()"))
        self._detach(entry)
        del self._entries[entry.fd]

    def close(self) -> None:
        if self._lock._is_owned() or self._in_own_poll():  # type: ignore[attr-defined]
            # A signal handler or a finalizer interrupted this thread inside the port (its
            # state half-updated, or its OS wait, which close must wait out): the port refuses
            # work from now on, and another thread finishes the close as soon as the
            # interrupted code lets go.
            self._closed = True
            threading.Thread(target=self._close_now, name="portio-close", daemon=True).start()
            return
        self._close_now()

    def _close_now(self) -> None:
        # Nothing of the user's is dropped, and no user code runs, under the lock: the queued
        # completions and every operation (with its buffer and data=) are moved out and let go
        # of at the end, so a finalizer that calls the port finds it closed, not deadlocked.
        with self._lock:
            if self._closing:
                return
            self._closing = self._closed = True
            if self._forked:
                entries = list(self._entries.values())
                self._entries.clear()
                dropped: list[Any] = [self._ready, self._routines, entries]
                self._ready, self._routines = deque(), deque()
            else:
                operations = [op for entry in self._entries.values()
                              for op in entry.operations()]
                for op in operations:
                    op._done = True  # cancelled, never delivered: the port is gone
                    op.cancel_error = OperationCancelled("port closed")
                dropped = [self._ready, self._routines, operations, self._deadlines]
                self._ready, self._routines, self._deadlines = deque(), deque(), []
                for waiter in self._waiters:
                    waiter.notified = True
                    waiter.cond.notify()
                while self._polling:
                    self._wakeup()
                    self._idle.wait(0.05)  # the poller must leave the OS wait before we free it
                entries = list(self._entries.values())
                self._entries.clear()
            for entry in entries:  # no operation <-> entry cycles left for the GC to find
                entry.inbound.clear()
                entry.outbound.clear()
                entry.pending.clear()
        for entry in entries:
            if entry.owns_wrapper and entry.sock is not None:
                entry.sock.detach()  # the fd stays the user's
        if self._forked:
            self._abandon()
        else:
            self._shutdown()
        dropped.clear()  # here, outside the lock, user finalizers may run

    def _abandon(self) -> None:
        """(lock not held; once, in a child after fork) Release this process's copies of the
        port's OS objects, touching nothing the parent shares: no cancel, no interest change.
        The default is :meth:`_shutdown`, for backends whose objects are not inherited."""
        self._shutdown()

    def _inherited(self) -> None:
        """(in the child, right after fork) The port is the parent's: refuse all work here.

        Only the forking thread exists in the child, so locks held by others are reset."""
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._waiters = []
        self._active = set()
        self._polling = False
        self._forked = True
        self._closed = True

    def __del__(self) -> None:
        # A port dropped without close(): release its OS objects (and nothing of the
        # caller's), and say so, as an unclosed socket does.
        if not getattr(self, "_constructed", False) or self._closing:
            return  # closed, or its construction failed before the backend made OS objects
        with contextlib.suppress(Exception):  # (the interpreter may be shutting down)
            warnings.warn(f"unclosed completion port {self!r}", ResourceWarning, stacklevel=2,
                          source=self)
        self._close_now()


#: Offsets are signed 64-bit in every OS's file API.
MAX_OFFSET = 2**63 - 1


def _check_offset(offset: Any, what: str) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"{what}() offset must be an int, not {type(offset).__name__}")
    if not 0 <= offset <= MAX_OFFSET:
        raise ValueError(f"{what}() offset must be between 0 and 2**63-1, got {offset}")
    return offset


def _is_closed_fd(fd: int) -> bool:
    if os.name == "nt":
        return False  # a HANDLE is not a CRT descriptor: fstat cannot tell
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def _is_seekable(fd: int) -> bool:
    if os.name == "nt":
        return False  # a HANDLE is not a CRT descriptor: lseek cannot tell (the backend does)
    try:
        os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return False
    return True
