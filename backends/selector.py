"""The selector backend: a completion port emulated on readiness, for any OS.

The OS model
------------
``selectors`` (epoll on Linux, kqueue on the BSDs and macOS, select on Windows) reports
*readiness*: "a recv would not block now".  A completion port reports *completions*: "your recv
is done, here are the bytes".  The emulation turns one into the other the way Asio's reactor
does: every operation first tries its non-blocking system call at once, speculatively (a send
to a socket with buffer space, a recv with bytes already queued, completes without touching the
selector); only an operation that would block registers interest, and when the selector says the
handle is ready, the poller thread performs the call and produces the completion.

What portio adds on top
-----------------------
Completions are queued FIFO with the per-handle key, whatever thread produced them; one thread
at a time waits in ``select`` (the shared leader/followers code in ``portio._port``), the rest
wait on their own condition; a socketpair is the wakeup channel that interrupts ``select`` for a
post, a close, or a deadline earlier than the one it sleeps to.  Regular files are always
"ready", so reads and writes at offsets are done at once with ``os.pread``/``os.pwrite`` (on
Windows, where a portio File is an overlapped HANDLE, with ReadFile/WriteFile at the offset).

Traps
-----
- Interest is level-triggered.  Write interest is kept only while a send waits; read interest
  outlives the recv that asked for it, since the next recv usually follows at once, and is
  dropped the first time the socket is reported readable with no recv waiting (so a readable
  socket nobody reads wakes the poller once, never spins it).
- A cancel here is exact: a waiting operation has not touched the socket, so cancelling it
  loses nothing; the bytes stay in the kernel for the next receive.
- ``select``/``poll`` (unlike epoll and kqueue) do not see interest changed while a thread is
  inside them, so those changes wake the poller.
- A receive given a size holds no buffer while it waits: the speculative call and the one made
  on readiness are each a plain ``recv(size)``, whose bytes object exists only if data came.
- Windows' ``select()`` takes at most 512 sockets a set, and one more fails every wait.  At
  that cap, the sockets watched only for a recv that may follow are dropped first; past it, an
  operation that would wait completes at once with ``OSError(EMFILE)`` naming the limit.
- A short send is not a completion: the rest waits for writability, and only then completes.
- A connect in progress finishes on writability; its outcome is ``SO_ERROR``.
"""

from __future__ import annotations

import errno
import os
import select
import selectors
import socket
import sys
import threading

from portio._port import HandleEntry, Operation, PortBase
from portio.errors import BackendUnavailable, error_from_errno

__all__ = ["SelectorPort"]

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
# Selectors that see interest changes made while another thread is inside select().
_LIVE_SELECTORS = tuple(
    getattr(selectors, name) for name in ("EpollSelector", "KqueueSelector", "DevpollSelector")
    if hasattr(selectors, name))
_CONNECT_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY, errno.EAGAIN}
_WSAENOTSOCK = 10038
#: How many sockets Windows' select() takes in one set (CPython builds it with FD_SETSIZE 512;
#: one more raises ValueError from inside select(), which would break every wait on the port).
_WINDOWS_SELECT_SETSIZE = 512
if sys.platform == "win32":
    from portio.backends import _winfile

    _CONNECT_IN_PROGRESS.add(10035)  # WSAEWOULDBLOCK


class SelectorPort(PortBase):
    """A completion port over :class:`selectors.DefaultSelector`."""

    __slots__ = (  # see PortBase.__slots__
        "_interest", "_live", "_selector", "_wake_pending", "_wake_reader", "_wake_writer",
        "_watch_limit",
    )

    backend = "selector"

    @classmethod
    def probe(cls) -> None:
        try:
            selectors.DefaultSelector().close()
        except OSError as exc:
            raise BackendUnavailable(f"the OS refused a selector: {exc}") from exc

    def __init__(self, concurrency: object = 0) -> None:
        super().__init__(concurrency)
        self._selector = selectors.DefaultSelector()
        self._live = isinstance(self._selector, _LIVE_SELECTORS)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._wake_pending = False
        self._selector.register(self._wake_reader, _READ, None)
        self._interest: dict[int, int] = {}
        # Sockets that may wait at once, besides the wakeup socket: only select() has a cap.
        self._watch_limit = (_WINDOWS_SELECT_SETSIZE - 1
                             if isinstance(self._selector, selectors.SelectSelector)
                             and sys.platform == "win32" else sys.maxsize)
        self._constructed = True

    # ------------------------------------------------------------------ handles
    def _attach(self, entry: HandleEntry) -> None:
        if entry.sock is not None:
            entry.sock.setblocking(False)
        elif sys.platform == "win32" and not getattr(entry.obj, "portio_file", False):
            _winfile.check_open(entry.fd)  # the shared code cannot vet a HANDLE

    def _close_int_handle(self, fd: int) -> None:
        if sys.platform == "win32":
            _winfile.close(fd)  # an int is a HANDLE there, as on iocp: not a C descriptor
        else:
            super()._close_int_handle(fd)

    def _detach(self, entry: HandleEntry) -> None:
        if self._interest.pop(entry.fd, 0):
            self._selector.unregister(entry.fd)

    # ------------------------------------------------------------------ operations
    def _start(self, op: Operation) -> None:
        if op.kind in {"read", "write"}:
            self._file_io(op)
        elif not self._attempt(op):
            self._update_interest(op.entry)

    def _cancel(self, op: Operation) -> None:
        # A waiting operation has not touched the socket: cancelling it is exact.
        assert op.cancel_error is not None
        self._finish(op, None, op.sent, op.cancel_error)
        self._update_interest(op.entry)

    def _attempt(self, op: Operation) -> bool:
        """(lock held) Try ``op``'s non-blocking call; True if it finished."""
        sock = op.entry.sock
        assert sock is not None
        try:
            while True:
                try:
                    return self._call(op, sock)
                except InterruptedError:
                    continue
        except BlockingIOError:
            return False
        except OSError as exc:
            return self._finish(op, None, op.sent, exc)

    def _call(self, op: Operation, sock: socket.socket) -> bool:
        kind = op.kind
        buffer = op.buffer
        if kind == "recv":
            if buffer is None:  # given a size: allocated only now, data or not
                return self._receive_ready(op)
            n = sock.recv_into(buffer)
            return self._finish(op, op.recv_result(n), n)
        if kind == "send":
            assert buffer is not None
            total = len(buffer)
            while op.sent < total:
                op.sent += sock.send(buffer[op.sent:] if op.sent else buffer)
            return self._finish(op, total, total)
        if kind == "accept":
            conn, address = sock.accept()
            return self._finish(op, (conn, address), 0)
        if kind == "recvfrom":
            if buffer is None:
                return self._receive_ready(op)
            n, address = sock.recvfrom_into(buffer)
            return self._finish(op, (op.recv_result(n), address), n)
        if kind == "sendto":
            assert buffer is not None
            n = sock.sendto(buffer, op.address)
            return self._finish(op, n, n)
        # connect: the first call starts it, later ones read its outcome
        if op.native is None:
            op.native = "connecting"
            code = sock.connect_ex(op.address)
        else:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code in _CONNECT_IN_PROGRESS:
            return False
        if code:
            return self._finish(op, None, 0, error_from_errno(code))
        return self._finish(op, None, 0)

    def _file_io(self, op: Operation) -> None:
        # Regular files are always "ready" to a selector, so the call is made now.
        buffer = op.buffer
        assert buffer is not None
        try:
            if op.kind == "read":
                n = _pread_into(op.entry.fd, buffer, op.offset)
                self._finish(op, op.recv_result(n), n)
            else:
                while op.sent < len(buffer):
                    op.sent += _pwrite(op.entry.fd, buffer[op.sent:], op.offset + op.sent)
                self._finish(op, op.sent, op.sent)
        except OSError as exc:
            self._finish(op, None, op.sent, exc)

    def _update_interest(self, entry: HandleEntry, keep_read: bool = True) -> None:
        """(lock held) Watch the directions whose head operation is waiting.

        Read interest is dropped lazily (``keep_read``): a server starts its next recv right
        after the last one completes, so keeping it saves two ``epoll_ctl`` calls a message;
        it is dropped when the selector reports a readable socket nobody is reading.  Write
        interest is dropped at once, since a socket is almost always writable."""
        if entry.closed:
            return
        old = self._interest.get(entry.fd, 0)
        mask = old & _READ if keep_read else 0
        if entry.inbound and not entry.inbound[0].done:
            mask |= _READ
        if entry.outbound and not entry.outbound[0].done:
            mask |= _WRITE
        if mask == old:
            return
        if not mask:
            del self._interest[entry.fd]
            self._selector.unregister(entry.fd)
        elif not old:
            if len(self._interest) >= self._watch_limit and not self._drop_idle_interest():
                self._refuse_to_watch(entry, mask)
                return
            self._interest[entry.fd] = mask
            self._selector.register(entry.fd, mask, entry)
        else:
            self._interest[entry.fd] = mask
            self._selector.modify(entry.fd, mask, entry)
        if not self._live and self._polling and self._poller_ident != threading.get_ident():
            self._wakeup()  # select()/poll() would not see the change until they return

    def _drop_idle_interest(self) -> bool:
        """(lock held) At select()'s cap, stop watching the sockets whose read interest was only
        kept for a recv that may follow (see Traps); True if that freed a place."""
        freed = False
        for fd in list(self._interest):
            entry = self._selector.get_key(fd).data
            if not ((entry.inbound and not entry.inbound[0].done)
                    or (entry.outbound and not entry.outbound[0].done)):
                del self._interest[fd]
                self._selector.unregister(fd)
                freed = True
        return freed

    def _refuse_to_watch(self, entry: HandleEntry, mask: int) -> None:
        """(lock held) select() cannot take one more socket: the operations that would wait on
        this one complete now with the reason, and the port keeps serving the others."""
        for queue, direction in ((entry.inbound, _READ), (entry.outbound, _WRITE)):
            if mask & direction and queue and not queue[0].done:
                head = queue[0]
                self._finish(head, None, head.sent, OSError(
                    errno.EMFILE, f"the selector backend waits on at most {self._watch_limit} "
                    "sockets at once on Windows (select()'s FD_SETSIZE); the iocp backend "
                    "has no such limit"))

    # ------------------------------------------------------------------ waiting
    def _poll(self, timeout: float | None) -> None:
        try:
            events = self._selector.select(timeout)
        except OSError as exc:
            if self._closed:
                return
            if getattr(exc, "winerror", None) == _WSAENOTSOCK:
                # Windows' select() fails as a whole if a socket in its sets was closed while
                # it waited: by close_handle in another thread (already unregistered, so the
                # next select is clean) or behind the port's back (stop watching that one).
                self._unwatch_dead_sockets()
                return
            raise
        with self._lock:
            for key, mask in events:
                entry = key.data
                if entry is None:
                    self._drain_wakeups()
                    continue
                if entry.closed:
                    continue  # close_handle ran since select returned
                idle_read = bool(mask & _READ) and not entry.inbound
                if mask & _READ and entry.inbound:
                    self._attempt(entry.inbound[0])
                if mask & _WRITE and entry.outbound:
                    self._attempt(entry.outbound[0])
                self._update_interest(entry, keep_read=not idle_read)

    def _unwatch_dead_sockets(self) -> None:
        with self._lock:
            for fd in list(self._interest):
                try:
                    select.select([fd], [], [], 0)
                except OSError:  # closed: its operations wait for close_handle
                    del self._interest[fd]
                    self._selector.unregister(fd)

    def _drain_wakeups(self) -> None:
        self._wake_pending = False
        try:
            while self._wake_reader.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _wakeup(self) -> None:
        if self._wake_pending:
            return  # one byte in the pipe wakes the poller; more would only fill it
        self._wake_pending = True
        try:
            self._wake_writer.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # the pipe is full: a wakeup is already pending
        except OSError:
            if not self._closed:
                raise

    def _shutdown(self) -> None:
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()
        self._interest.clear()


def _pread_into(fd: int, buffer: memoryview, offset: int) -> int:
    if sys.platform == "win32":  # a File is an overlapped HANDLE there, not a C descriptor
        return _winfile.read_at(fd, buffer, offset)
    return os.preadv(fd, [buffer], offset)


def _pwrite(fd: int, data: memoryview, offset: int) -> int:
    if sys.platform == "win32":
        return _winfile.write_at(fd, data, offset)
    return os.pwrite(fd, data, offset)
