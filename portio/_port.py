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
operation until the OS has let go of the buffer, even after a cancel or a close.
"""

from __future__ import annotations

import abc
import errno
import heapq
import io
import itertools
import math
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Literal

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

# A descriptor is a C int on POSIX; a SOCKET/HANDLE is pointer-sized on Windows.
_MAX_HANDLE = 2**64 - 1 if os.name == "nt" else 2**31 - 1

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
        "_deadline",
        "_done",
        "_port",
        "_started",
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
        "timeout",
        "want_bytes",
    )

    def __init__(self, port: PortBase, kind: OperationKind, entry: HandleEntry, handle: Handle,
                 data: Any, callback: Callback | None, timeout: float | None,
                 buffer: memoryview | None, want_bytes: bool, offset: int,
                 address: Any, queue: deque[Operation] | None) -> None:
        self._port = port
        self.kind: OperationKind = kind
        self.entry = entry
        self.handle = handle
        self.data = data
        self.callback = callback
        self.timeout = timeout
        self.buffer = buffer
        self.want_bytes = want_bytes
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
        self._deadline = math.inf

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
        return self._port._cancel_operation(self, OperationCancelled())

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
        (result: the count).  ``b""``/0 means the peer closed its side."""

    @abc.abstractmethod
    def send(self, sock: Handle, payload: Any, /, *, data: Any = None,
             timeout: float | None = None, callback: Callback | None = None) -> Operation:
        """Send every byte of the bytes-like ``payload`` (positional only: ``data=`` is the
        per-I/O data); completes when all are sent (short sends are retried inside portio);
        result and ``nbytes``: the number sent."""

    @abc.abstractmethod
    def recvfrom(self, sock: Handle, size_or_buffer: int | Any, *, data: Any = None,
                 timeout: float | None = None, callback: Callback | None = None) -> Operation:
        """Receive one datagram; result ``(bytes_or_count, address)``."""

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

    __slots__ = ("cond", "notified", "wants")

    def __init__(self, lock: threading.Lock, wants: str) -> None:
        self.cond = threading.Condition(lock)
        self.wants = wants
        self.notified = False


def _check_timeout(timeout: float | None, what: str) -> float | None:
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
        if not 1 <= size_or_buffer <= MAX_IO_SIZE:
            raise ValueError(
                f"{what}() size must be between 1 and {MAX_IO_SIZE}, got {size_or_buffer}")
        return memoryview(bytearray(size_or_buffer)), True
    try:
        view = memoryview(size_or_buffer)
    except TypeError:
        raise TypeError(f"{what}() needs a size (int) or a writable buffer, "
                        f"not {type(size_or_buffer).__name__}") from None
    if view.readonly:
        raise TypeError(f"{what}() needs a writable buffer; "
                        f"{type(size_or_buffer).__name__} is read-only")
    return _byte_view(view, what), False


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
    """A numeric address for ``sock``'s family, so backends never resolve names themselves."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        if not isinstance(address, tuple) or len(address) not in (2, 4):
            raise TypeError(f"{what}() address must be a (host, port) tuple for "
                            f"{sock.family.name}, not {address!r}")
        host, port_number = address[0], address[1]
        if not isinstance(host, str) or isinstance(port_number, bool) \
                or not isinstance(port_number, int):
            raise TypeError(f"{what}() address must be (str host, int port), not {address!r}")
        if not 0 <= port_number <= 65535:
            raise ValueError(f"{what}() port must be 0-65535, got {port_number}")
        infos = socket.getaddrinfo(host, port_number, sock.family, sock.type)
        resolved: Any = infos[0][4]
        if sock.family == socket.AF_INET6 and len(address) == 4:
            resolved = (resolved[0], resolved[1], address[2], address[3])
        return resolved
    if hasattr(socket, "AF_UNIX") and sock.family == socket.AF_UNIX:
        if not isinstance(address, (str, bytes)):
            raise TypeError(f"{what}() address must be a path for AF_UNIX, not {address!r}")
        return address
    return address


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
    def __init__(self, concurrency: int = 0) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int):
            raise TypeError(f"concurrency must be an int, not {type(concurrency).__name__}")
        if concurrency < 0:
            raise ValueError(f"concurrency must be >= 0 (0 means one per CPU), got {concurrency}")
        self._concurrency = concurrency or _default_concurrency()
        self._lock = threading.Lock()
        self._closed = False
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
        self._deadlines: list[tuple[float, int, Operation]] = []
        self._sequence = itertools.count()
        self._starting = False
        self._start_later: list[deque[Operation]] = []

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
        fd = _fileno_of(handle)
        with self._lock:
            self._check_open()
            old = self._entries.get(fd)
            if old is not None:
                if old.obj is handle or old.obj == fd or not self._is_stale(old):
                    raise ValueError(f"handle {handle!r} (fd {fd}) is already registered")
                # The user closed the old object without close_handle and the OS reused its
                # number: forget the stale entry instead of refusing the new handle.
                self._forget(old)
                if old.owns_wrapper and old.sock is not None:
                    old.sock.detach()  # its fd number now belongs to someone else
            entry = self._make_entry(fd, handle, key)
            self._attach(entry)
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
            wrapper = socket.socket(fileno=fd)
        except OverflowError:
            raise ValueError(f"handle {handle!r} is not a valid descriptor") from None
        except OSError as exc:
            if exc.errno == errno.EBADF or _is_closed_fd(fd):
                raise ValueError(f"handle {handle!r} is not an open descriptor") from None
            return HandleEntry(fd, handle, key, None, owns_wrapper=False,
                               seekable=_is_seekable(fd))
        return HandleEntry(fd, handle, key, wrapper, owns_wrapper=True, seekable=False)

    def _entry_for(self, handle: Handle, what: str) -> HandleEntry:
        fd = _fileno_of(handle)
        entry = self._entries.get(fd)
        if entry is None:
            raise ValueError(f"{what}() on handle {handle!r} (fd {fd}), which is not registered "
                             "with this port: call register() first")
        return entry

    def _check_open(self) -> None:
        if self._closed:
            raise PortClosed("the completion port is closed")

    # ------------------------------------------------------------------ operations
    def accept(self, sock: Handle, *, data: Any = None, timeout: float | None = None,
               callback: Callback | None = None) -> Operation:
        return self._submit("accept", sock, data, timeout, callback, None)

    def connect(self, sock: Handle, address: Any, *, data: Any = None,
                timeout: float | None = None, callback: Callback | None = None) -> Operation:
        return self._submit("connect", sock, data, timeout, callback, None, address=address)

    def recv(self, sock: Handle, size_or_buffer: int | Any, *, data: Any = None,
             timeout: float | None = None, callback: Callback | None = None) -> Operation:
        buffer, want_bytes = _writable_buffer(size_or_buffer, "recv")
        return self._submit("recv", sock, data, timeout, callback, buffer, want_bytes)

    def send(self, sock: Handle, payload: Any, /, *, data: Any = None,
             timeout: float | None = None, callback: Callback | None = None) -> Operation:
        return self._submit("send", sock, data, timeout, callback,
                            _readable_buffer(payload, "send"))

    def recvfrom(self, sock: Handle, size_or_buffer: int | Any, *, data: Any = None,
                 timeout: float | None = None, callback: Callback | None = None) -> Operation:
        buffer, want_bytes = _writable_buffer(size_or_buffer, "recvfrom")
        return self._submit("recvfrom", sock, data, timeout, callback, buffer, want_bytes)

    def sendto(self, sock: Handle, payload: Any, /, address: Any, *, data: Any = None,
               timeout: float | None = None, callback: Callback | None = None) -> Operation:
        return self._submit("sendto", sock, data, timeout, callback,
                            _readable_buffer(payload, "sendto"), address=address)

    def read(self, file: Handle, size_or_buffer: int | Any, offset: int, *, data: Any = None,
             timeout: float | None = None, callback: Callback | None = None) -> Operation:
        buffer, want_bytes = _writable_buffer(size_or_buffer, "read")
        return self._submit("read", file, data, timeout, callback, buffer, want_bytes,
                            offset=_check_offset(offset, "read"))

    def write(self, file: Handle, payload: Any, /, offset: int, *, data: Any = None,
              timeout: float | None = None, callback: Callback | None = None) -> Operation:
        return self._submit("write", file, data, timeout, callback,
                            _readable_buffer(payload, "write"),
                            offset=_check_offset(offset, "write"))

    def _submit(self, kind: OperationKind, handle: Handle, data: Any, timeout: float | None,
                callback: Callback | None, buffer: memoryview | None, want_bytes: bool = False,
                offset: int = 0, address: Any = None) -> Operation:
        if timeout is not None:
            timeout = _check_timeout(timeout, f"{kind}() timeout")
        if callback is not None and not callable(callback):
            raise TypeError(f"{kind}() callback must be callable, not {type(callback).__name__}")
        with self._lock:
            if self._closed:
                raise PortClosed("the completion port is closed")
            entry = self._entries.get(_fileno_of(handle))
            if entry is None:
                entry = self._entry_for(handle, kind)  # raises, saying why
            direction = _DIRECTION.get(kind)
            queue: deque[Operation] | None = None
            if direction is not None:
                if entry.sock is None:
                    raise ValueError(f"{kind}() needs a socket; fd {entry.fd} is not one "
                                     "(use read()/write() for files)")
                if kind in {"connect", "sendto"}:
                    address = _resolve_address(entry.sock, address, kind)
                queue = entry.inbound if direction == "in" else entry.outbound
            elif entry.sock is not None or not entry.seekable:
                raise io.UnsupportedOperation(
                    f"{kind}() needs a file that supports offsets; fd {entry.fd} is "
                    + ("a socket (use recv()/send())" if entry.sock is not None
                       else "not seekable (a pipe or a terminal?)"))
            op = Operation(self, kind, entry, handle, data, callback, timeout, buffer,
                           want_bytes, offset, address, queue)
            if queue is None:
                entry.pending[op] = None
            if timeout is not None:
                op._deadline = time.monotonic() + timeout
                heapq.heappush(self._deadlines, (op._deadline, next(self._sequence), op))
                if self._polling and op._deadline < self._poll_until:
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

    # ------------------------------------------------------------------ completion
    def _finish(self, op: Operation, result: Any, nbytes: int,
                error: OSError | None = None) -> bool:
        """(lock held) Produce ``op``'s completion, exactly once; False if it already had one."""
        if op._done:
            return False
        op._done = True
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
        with self._lock:
            self._check_open()
            self._ready.append(Completion(key, None, "post", nbytes, None, None, data))
            self._wake_one("get")

    # ------------------------------------------------------------------ cancellation
    def _cancel_operation(self, op: Operation, error: OSError) -> bool:
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

    def _expire_deadlines(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, op = heapq.heappop(self._deadlines)
            if not op._done:
                assert op.timeout is not None
                self._cancel_locked(op, operation_timed_out(op.kind, op.timeout))

    def _next_deadline(self) -> float:
        while self._deadlines and self._deadlines[0][2]._done:
            heapq.heappop(self._deadlines)  # lazily drop deadlines of finished operations
        return self._deadlines[0][0] if self._deadlines else math.inf

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
        with self._lock:
            self._active.discard(me)  # calling get again ends this thread's turn
            if not self._wait_until(self._can_take, "get", deadline):
                return []
            ready = self._ready
            taken = [ready.popleft() for _ in range(min(max_entries, len(ready)))]
            self._active.add(me)
            if ready:
                self._wake_one("get")  # more is queued: let another thread take it
            return taken

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
        with self._lock:
            if not self._wait_until(lambda: bool(self._routines), "dispatch", deadline):
                return 0
            batch = list(self._routines)
            self._routines.clear()
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
        try:
            while True:
                self._check_open()
                if ready():
                    took = True
                    return True
                now = time.monotonic()
                if now >= deadline:
                    return False
                # A thread the cap holds back does not even poll: what it reaped it could not
                # take, and the running thread polls itself when it next finds nothing queued.
                capped = wants == "get" and len(self._active) >= self._concurrency
                if not self._polling and not capped:
                    if waiter is not None:  # a poller is woken through the OS, not a condition
                        self._waiters.remove(waiter)
                        waiter = None
                    self._poll_once(wants, min(deadline, self._next_deadline()), now)
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
                waiter.cond.wait(None if wait == math.inf else wait)
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
            self._poll(None if until == math.inf else max(0.0, until - now))
        finally:
            self._lock.acquire()
            self._polling = False
            self._poll_until = math.inf
            self._idle.notify_all()
        if not self._closed:
            self._expire_deadlines()

    # ------------------------------------------------------------------ closing
    def close_handle(self, handle: Handle) -> None:
        with self._lock:
            self._check_open()
            entry = self._entry_for(handle, "close_handle")
            self._forget(entry)
        if entry.owns_wrapper:
            assert entry.sock is not None
            entry.sock.close()  # the wrapper owns the fd number the user gave us
        elif hasattr(entry.obj, "close"):
            entry.obj.close()
        elif isinstance(entry.obj, int):
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
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for entry in self._entries.values():
                for op in entry.operations():
                    op._done = True  # cancelled, never delivered: the port is gone
                    op.cancel_error = OperationCancelled("port closed")
            self._ready.clear()
            self._routines.clear()
            for waiter in self._waiters:
                waiter.notified = True
                waiter.cond.notify()
            while self._polling:
                self._wakeup()
                self._idle.wait(0.05)  # the poller must leave the OS wait before we free it
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            if entry.owns_wrapper and entry.sock is not None:
                entry.sock.detach()  # the fd stays the user's
        self._shutdown()


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
