"""The proactor: asyncio's view of a completion port.

asyncio's proactor event loop (``asyncio.proactor_events.BaseProactorEventLoop``, the one
Windows uses) never asks "is this socket readable?"; it starts an operation and waits for a
future that resolves when the operation is done.  The object that starts operations and waits
is the *proactor*.  This one is built on portio's public :class:`~portio.CompletionPort` API
alone, so the loop runs on every backend (io_uring, iocp, selector):

- each operation method starts the port operation with the future as its ``data=`` and
  returns the future at once;
- ``select(timeout)``, which the loop calls once per iteration with the time to its next
  timer, is ``get_many``: each completion resolves its future (portio's results already have
  the shapes asyncio expects), and the loop then runs the callbacks;
- cancelling a future cancels the operation.  portio's cancel never drops received bytes, but
  once the future is cancelled nobody wants them: a late result is discarded (an accepted
  socket is closed), as IOCP's proactor does.

Sockets are registered with the port the first time an operation names them.  The loop's
transports let go of theirs with :meth:`PortProactor.forget` (``close_handle``).  A socket the
user passed to ``loop.sock_*`` and then closed stays registered until the OS reuses its number
(``register`` then forgets the stale entry) or the loop closes.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import Any

import portio
from portio.errors import OperationCancelled

__all__ = ["PortProactor"]

#: The post that wakes ``select`` (``call_soon_threadsafe`` from another thread).
WAKEUP = object()
#: Completions taken per ``select``: enough to drain a busy port in a few calls, small enough
#: that timers and ready callbacks are not starved behind one huge batch.
_BATCH = 256

class _OperationFuture(asyncio.Future[Any]):
    """A future whose ``cancel()`` also cancels the port operation behind it.

    ``nbytes`` is the completion's byte count, set even when the operation failed: a send that
    failed part-way says how much of it went.
    """

    _operation: portio.Operation | None = None
    nbytes = 0

    def cancel(self, msg: Any = None) -> bool:
        operation = self._operation
        if operation is not None:
            self._operation = None
            operation.cancel()
        return super().cancel(msg)


class PortProactor:
    """Starts operations on a :class:`~portio.CompletionPort` and resolves asyncio futures.

    The interface is the one ``asyncio.proactor_events`` expects of its proactor (the same
    names as ``asyncio.windows_events.IocpProactor``).
    """

    def __init__(self, port: portio.CompletionPort) -> None:
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        # fd -> the object registered under it: a socket is registered once, on first use
        self._registered: dict[int, Any] = {}
        # the futures not yet resolved, so close() can cancel them while the loop still runs
        self._pending: dict[_OperationFuture, None] = {}

    def __repr__(self) -> str:
        return f"<PortProactor {self.port!r}>"

    def set_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the event loop whose futures this proactor creates."""
        self._loop = loop

    # ------------------------------------------------------------------ starting
    def register(self, handle: Any) -> None:
        """Register ``handle`` with the port unless it already is (idempotent).

        Raises ``OSError(EBADF)`` for a closed socket, as the OS would for its descriptor.
        """
        fd = handle.fileno() if not isinstance(handle, int) else handle
        if fd < 0:
            raise OSError(errno.EBADF, f"{handle!r} is closed")
        known = self._registered.get(fd)
        if known is handle or (isinstance(handle, int) and known == handle):
            return
        # A different object under a known number: the old one was closed behind the port's
        # back and the OS reused its descriptor; register() forgets the stale entry.
        self.port.register(handle)
        self._registered[fd] = handle

    def _future(self) -> _OperationFuture:
        assert self._loop is not None, "set_loop() was not called"
        future = _OperationFuture(loop=self._loop)
        self._pending[future] = None
        return future

    def _start(self, start: Callable[..., portio.Operation], handle: Any,
               *args: Any) -> _OperationFuture:
        self.register(handle)
        future = self._future()
        try:
            future._operation = start(handle, *args, data=future)
        except BaseException:
            del self._pending[future]
            raise
        return future

    def recv(self, conn: socket.socket, nbytes: int, flags: int = 0) -> _OperationFuture:
        """Receive up to ``nbytes``; the future's result is the bytes (``b""``: end of stream)."""
        _no_flags(flags, "recv")
        return self._start(self.port.recv, conn, nbytes)

    def recv_into(self, conn: socket.socket, buf: Any, flags: int = 0) -> _OperationFuture:
        """Receive into ``buf``; the future's result is the count."""
        _no_flags(flags, "recv_into")
        return self._start(self.port.recv, conn, buf)

    def recvfrom(self, conn: socket.socket, nbytes: int, flags: int = 0) -> _OperationFuture:
        """Receive a datagram of up to ``nbytes``: ``(bytes, address)``."""
        _no_flags(flags, "recvfrom")
        return self._start(self.port.recvfrom, conn, nbytes)

    def recvfrom_into(self, conn: socket.socket, buf: Any, nbytes: int = 0,
                      flags: int = 0) -> _OperationFuture:
        """Receive a datagram into ``buf`` (its first ``nbytes``): ``(count, address)``."""
        _no_flags(flags, "recvfrom_into")
        view = memoryview(buf)
        if nbytes:
            view = view[:nbytes]
        return self._start(self.port.recvfrom, conn, view)

    def send(self, conn: socket.socket, buf: Any, flags: int = 0) -> _OperationFuture:
        """Send all of ``buf``; the future's result is the count."""
        _no_flags(flags, "send")
        if not memoryview(buf):
            return self._resolved(conn, 0)
        return self._start(self.port.send, conn, buf)

    def sendto(self, conn: socket.socket, buf: Any, flags: int = 0,
               addr: Any = None) -> _OperationFuture:
        """Send a datagram to ``addr`` (``None``: the connected peer)."""
        _no_flags(flags, "sendto")
        if addr is None:
            if not memoryview(buf):
                # an empty datagram is still a datagram: send it at once, it cannot block
                return self._resolved(conn, conn.send(buf))
            return self._start(self.port.send, conn, buf)
        return self._start(self.port.sendto, conn, buf, addr)

    def accept(self, listener: socket.socket) -> _OperationFuture:
        """Accept a connection: ``(conn, address)``."""
        return self._start(self.port.accept, listener)

    def connect(self, conn: socket.socket, address: Any) -> _OperationFuture:
        """Connect ``conn`` to ``address``; the future's result is ``None``."""
        return self._start(self.port.connect, conn, address)

    def read(self, file: Any, size_or_buffer: Any, offset: int) -> _OperationFuture:
        """Read from a file at ``offset``: bytes, or the count into a buffer."""
        return self._start(self.port.read, file, size_or_buffer, offset)

    def write(self, file: Any, data: Any, offset: int) -> _OperationFuture:
        """Write all of ``data`` to a file at ``offset``; the future's result is the count."""
        return self._start(self.port.write, file, data, offset)

    def _resolved(self, conn: socket.socket, result: Any) -> _OperationFuture:
        if conn.fileno() < 0:
            raise OSError(errno.EBADF, f"{conn!r} is closed")
        assert self._loop is not None
        future = _OperationFuture(loop=self._loop)
        future.set_result(result)
        return future

    # ------------------------------------------------------------------ waiting
    def select(self, timeout: float | None = None) -> list[asyncio.Future[Any]]:
        """Wait up to ``timeout`` seconds (``None``: until something completes) and resolve the
        futures of what completed; returns them."""
        done: list[asyncio.Future[Any]] = []
        pending = self._pending
        for completion in self.port.get_many(_BATCH, timeout):
            if completion.kind == "post":
                continue
            future = completion.data
            pending.pop(future, None)
            future._operation = None
            future.nbytes = completion.nbytes
            if future.done():  # cancelled: nobody wants the result any more
                if completion.kind == "accept" and completion.error is None:
                    completion.result[0].close()
                continue
            if completion.kind == "accept" and completion.error is None:
                completion.result[0].setblocking(False)  # as asyncio's sock_accept promises
            error = completion.error
            if error is not None:
                if isinstance(error, OperationCancelled):
                    # cancelled by close_handle or the port, not by the future: for asyncio's
                    # transports that is an aborted connection, as on IOCP
                    error = ConnectionAbortedError(errno.ECONNABORTED, str(error))
                future.set_exception(error)
            else:
                future.set_result(completion.result)
            done.append(future)
        return done

    def wakeup(self) -> None:
        """Make a ``select`` in progress return now (from any thread)."""
        self.port.post(WAKEUP)

    # ------------------------------------------------------------------ closing
    def _stop_serving(self, sock: socket.socket) -> None:
        """A server stops listening on ``sock``: cancel its accept and forget it."""
        self.forget(sock)

    def forget(self, handle: Any) -> None:
        """``close_handle`` ``handle`` if this proactor registered it (pending operations are
        cancelled, the handle is closed)."""
        try:
            fd = handle if isinstance(handle, int) else handle.fileno()
        except (OSError, ValueError):
            return
        known = self._registered.get(fd)
        if fd >= 0 and (known is handle or (isinstance(handle, int) and known == handle)):
            del self._registered[fd]
            self.port.close_handle(handle)

    def close(self) -> None:
        """Cancel every pending future (their callbacks still run on the loop), then close the
        port.  Sockets stay open: they are their owners' to close."""
        for future in list(self._pending):
            future.cancel()
        self._pending.clear()
        self._registered.clear()
        self.port.close()


def _no_flags(flags: int, what: str) -> None:
    if flags:
        raise NotImplementedError(f"portio's asyncio loop: {what}() flags are not supported "
                                  "(the CompletionPort API takes none)")
