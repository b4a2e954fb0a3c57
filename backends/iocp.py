"""The ``iocp`` backend: the real Windows I/O completion port, through cffi in ABI mode.

How IOCP works
--------------
A completion port is a kernel queue. A handle (socket or file opened ``FILE_FLAG_OVERLAPPED``)
is associated with one port for its whole life (``CreateIoCompletionPort(handle, port, key)``;
a second association fails with ERROR_INVALID_PARAMETER). Each overlapped call (``WSARecv``,
``AcceptEx``, ``ReadFile`` ...) takes an ``OVERLAPPED``, the per-I/O record, and usually returns
ERROR_IO_PENDING; when the I/O finishes the kernel writes the status into
``OVERLAPPED.Internal`` (an NTSTATUS), the byte count into ``InternalHigh``, and queues a packet
``(key, OVERLAPPED*, nbytes)`` on the port. ``GetQueuedCompletionStatusEx`` dequeues packets in
batches. ``CancelIoEx(handle, ov)`` asks for early completion; the operation then still
completes exactly once, with STATUS_CANCELLED (ERROR_OPERATION_ABORTED) or, if it won the race,
with its real result.

What portio adds
----------------
``PortBase`` keeps the user-visible queue, per-handle FIFOs, deadlines, the concurrency cap and
LIFO release. This module only starts operations and waits: one thread at a time (the
leader/poller of ``PortBase``) sits in ``GetQueuedCompletionStatusEx`` and turns packets into
completions; ``_wakeup`` posts a packet with the reserved key :data:`_WAKEUP_KEY`. The leader
model is kept (rather than every ``get`` thread waiting in the kernel) because posts, callback
routing and deadlines live in ``PortBase`` and must all reach the same queue. For the same
reason the kernel's own concurrency cap is switched off (:data:`_KERNEL_CONCURRENCY`): it would
only ever throttle the single poller, including its wakeups, while ``PortBase`` already applies
the cap where threads are really released.

Every socket and file operation is keyed in ``_inflight`` by the address of its OVERLAPPED;
the dict holds the OVERLAPPED, the buffer and every other cdata the kernel points at.

Traps
-----
* Lifetimes: the kernel owns the OVERLAPPED and buffer until the packet is *dequeued*, even
  after ``CancelIoEx``, ``closesocket`` or ``close()``. ``_inflight`` keeps them alive until
  then; at ``close()`` the port cancels what is left and drains packets for a while, and
  anything the kernel still holds after that is parked in :data:`_ABANDONED` forever rather
  than freed under the kernel's feet.
* Cancel races: ``CancelIoEx`` returns ERROR_NOT_FOUND when the operation already finished; its
  packet is then on the way with the real result, which is delivered (bytes never lost).
* Idle receives: a receive given a size posts a zero-byte ``WSARecv``; its packet says data
  arrived, and one non-blocking ``recv(size)`` takes it. A ``recvfrom`` posts a zero-byte
  ``MSG_PEEK`` instead (a zero-byte receive would discard the datagram), then a ``WSARecvFrom``
  into a buffer made then. A pending receive so holds no buffer at all.
* Whole-buffer sends: a ``WSASend`` that completes short is re-submitted for the rest.
* ``FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`` (no packet when a call succeeds at once) is turned on
  only for TCP sockets whose provider reports real kernel handles (``XP1_IFS_HANDLES``; a
  non-IFS layered provider may queue a packet anyway) and for files; never for UDP.
* Error codes: the status comes from ``OVERLAPPED.Internal`` through ``RtlNtStatusToDosError``
  (the handle may already be closed). See ``_winapi.winerror_to_oserror`` for the mapping.
* Wine 8 differs from Windows (the code handles both): closing a port does not wake a thread
  blocked in GetQueuedCompletionStatus (Windows: ERROR_ABANDONED_WAIT_0), so ``close()`` wakes
  the poller by posting before the port is closed; ``closesocket`` with a receive pending
  completes it with 676 instead of 995 (both mean "aborted" here); on timeout
  ``GetQueuedCompletionStatusEx`` may report one entry removed, so entries are read only when
  it returns TRUE; file I/O never completes synchronously; a UDP send to a closed port does not
  fail a pending ``WSARecvFrom`` (Windows: WSAECONNRESET/ERROR_PORT_UNREACHABLE, delivered as
  ``ConnectionResetError`` to that recvfrom).
"""

from __future__ import annotations

import math
import socket
import struct
import sys
import time
from typing import Any, ClassVar

from portio import _sockaddr as _sockaddr_bytes
from portio._port import HandleEntry, Operation, PortBase
from portio.errors import BackendUnavailable, OperationCancelled

if sys.platform != "win32":  # also tells mypy --platform linux/darwin to skip the rest
    raise ImportError("portio.backends.iocp needs Windows")

from . import _winapi as w

__all__ = ["IocpPort"]

#: Completion key of the packets ``_wakeup`` posts; I/O packets use :data:`_IO_KEY`.
_WAKEUP_KEY = 1
_IO_KEY = 2
_MSG_PEEK = int(socket.MSG_PEEK)
#: NumberOfConcurrentThreads for CreateIoCompletionPort: "no cap" (see the module docstring).
_KERNEL_CONCURRENCY = 0x7FFFFFFF
#: Packets dequeued per GetQueuedCompletionStatusEx call.
_BATCH = 64
#: How long close() keeps draining packets of cancelled operations before giving up on them.
_DRAIN_SECONDS = 2.0
#: OVERLAPPEDs and buffers the kernel never returned: kept alive for the life of the process.
_ABANDONED: list[Any] = []
#: AcceptEx address slots: the largest sockaddr plus the 16 bytes AcceptEx requires.
_ACCEPT_ADDRLEN = 128 + 16
_STATUS_SUCCESS = 0
#: OVERLAPPED.Internal while the I/O is in flight (the kernel sets it when the call is issued).
_STATUS_PENDING = 0x103
_SOCKET_ERROR = -1

_dlls = w.load()
_k32, _ws2, _ntdll = _dlls.kernel32, _dlls.ws2_32, _dlls.ntdll
#: Typed Any on purpose: cdata fields (OVERLAPPED.Internal, ...) are only known to the cdef.
ffi: Any = w.ffi


def _handle(fd: int) -> Any:
    return ffi.cast("HANDLE", fd)


def _ov_key(ov: Any) -> int:
    return int(ffi.cast("uintptr_t", ov))


def _sockaddr(family: int, address: Any) -> tuple[Any, int]:
    """A cdata ``struct sockaddr`` for a numeric ``address`` of ``family``, and its length."""
    raw = _sockaddr_bytes.encode(family, address)
    return ffi.new("char[]", raw), len(raw)


def _address(sa: Any, length: int) -> Any:
    """Decode ``length`` bytes of a ``struct sockaddr *`` into a ``socket``-module address."""
    return _sockaddr_bytes.decode(bytes(ffi.buffer(sa, length)))


class _Native:
    """What the kernel points at for one started operation (kept until its packet is dequeued).

    The data buffer is not here: ``op.buffer`` (portio's own memoryview, whose export pins the
    bytes) keeps it, and this holds only its address.  A cffi buffer object kept beside the
    view would let the cyclic GC clear the view it exports, and CPython crashes when that
    export is released afterwards (``tests/contract/test_lifetimes.py``)."""

    __slots__ = ("accept_addrs", "accept_sock", "addr", "addrlen", "flags", "ov", "wsabuf")

    def __init__(self) -> None:
        self.ov = ffi.new("OVERLAPPED *")
        self.accept_addrs: Any = None
        self.wsabuf: Any = None
        self.flags: Any = None
        self.addr: Any = None
        self.addrlen: Any = None
        self.accept_sock: socket.socket | None = None


class IocpPort(PortBase):
    """A completion port backed by the Windows kernel's I/O completion port."""

    __slots__ = (  # see PortBase.__slots__
        "_entries_buf", "_extensions", "_inflight", "_port", "_port_open", "_removed")

    backend: ClassVar[str] = "iocp"

    @classmethod
    def probe(cls) -> None:
        port = _k32.CreateIoCompletionPort(_handle(w.INVALID_HANDLE_VALUE), ffi.NULL, 0, 0)
        if port == ffi.NULL:
            raise BackendUnavailable(
                f"CreateIoCompletionPort failed: {w.winerror_to_oserror(w.last_error())}")
        _k32.CloseHandle(port)

    def __init__(self, concurrency: object = 0) -> None:
        super().__init__(concurrency)
        self.probe()
        port = _k32.CreateIoCompletionPort(
            _handle(w.INVALID_HANDLE_VALUE), ffi.NULL, 0, _KERNEL_CONCURRENCY)
        if port == ffi.NULL:
            raise w.winerror_to_oserror(w.last_error())
        self._port = port
        self._port_open = True
        self._inflight: dict[int, Operation] = {}
        self._entries_buf = ffi.new("OVERLAPPED_ENTRY[]", _BATCH)  # only the poller uses it
        self._removed = ffi.new("ULONG *")
        self._extensions: dict[tuple[int, int], tuple[Any, ...]] = {}
        self._constructed = True

    # ------------------------------------------------------------------ handles
    def _attach(self, entry: HandleEntry) -> None:
        if entry.sock is None and not getattr(entry.obj, "portio_file", False):
            self._attach_other(entry)
            return
        if _k32.CreateIoCompletionPort(_handle(entry.fd), self._port, _IO_KEY, 0) == ffi.NULL:
            code = w.last_error()
            if code == w.Error.ERROR_INVALID_PARAMETER:
                raise ValueError(
                    f"handle {entry.fd} is already associated with another completion port "
                    "(Windows allows one port per handle for the handle's whole life)")
            raise w.winerror_to_oserror(code)
        entry.native = self._skip_on_success(entry)
        if entry.sock is not None:
            # As on every backend; overlapped calls ignore it, and the receive after a
            # zero-byte one (_receive_ready) must never block under the port lock.
            entry.sock.setblocking(False)

    @staticmethod
    def _attach_other(entry: HandleEntry) -> None:
        """An int HANDLE (or object) that is neither a socket nor a portio.open_file() file.

        A pipe or console handle is accepted as POSIX accepts a pipe descriptor, and for the
        same reason no call can start I/O on it: the shared checks refuse recv/send (not a
        socket: ValueError) and read/write (no offsets: io.UnsupportedOperation) at the call.
        It is never associated with the kernel port (anonymous pipes are not overlapped).
        Anything else is refused here: an invalid or closed value, and a disk file HANDLE,
        which may lack FILE_FLAG_OVERLAPPED (only open_file() guarantees it).
        """
        kind = _k32.GetFileType(_handle(entry.fd))
        if kind in (w.FileType.FILE_TYPE_PIPE, w.FileType.FILE_TYPE_CHAR):
            entry.seekable = False  # _port asked lseek(), which knows CRT descriptors only
            entry.native = False
            return
        if kind == w.FileType.FILE_TYPE_DISK:
            raise ValueError(f"handle {entry.fd} is a file not opened by portio.open_file(): "
                             "the iocp backend needs FILE_FLAG_OVERLAPPED; register the "
                             "portio.File itself")
        raise ValueError(f"handle {entry.fd} is not an open socket, file or pipe handle")

    def _close_int_handle(self, fd: int) -> None:
        # an int registered here is a HANDLE (a socket int is closed through its wrapper)
        if not _k32.CloseHandle(_handle(fd)):
            raise w.winerror_to_oserror(w.last_error())

    def _skip_on_success(self, entry: HandleEntry) -> bool:
        """Turn on FILE_SKIP_COMPLETION_PORT_ON_SUCCESS where it is safe; say whether it is."""
        sock = entry.sock
        if sock is not None:
            if sock.type != socket.SOCK_STREAM:
                return False  # UDP behind layered providers may still queue a packet
            try:
                info = sock.getsockopt(w.SockOpt.SOL_SOCKET, w.SockOpt.SO_PROTOCOL_INFOW, 628)
            except OSError:
                return False
            (service_flags,) = struct.unpack_from("<I", info)
            if not service_flags & w.ServiceFlags.XP1_IFS_HANDLES:
                return False
        modes = w.CompletionModes.FILE_SKIP_COMPLETION_PORT_ON_SUCCESS \
            | w.CompletionModes.FILE_SKIP_SET_EVENT_ON_HANDLE
        return bool(_k32.SetFileCompletionNotificationModes(_handle(entry.fd), modes))

    def _detach(self, entry: HandleEntry) -> None:
        # The association ends when the handle is closed; cancelled operations stay in
        # _inflight until their packets arrive.
        pass

    # ------------------------------------------------------------------ starting
    def _start(self, op: Operation) -> None:
        native = _Native()
        op.native = native
        try:
            ok = getattr(self, f"_start_{op.kind}")(op, native)
        except OSError as exc:
            self._finish(op, None, 0, exc)
            return
        if ok:
            if op.entry.native:  # no packet will come: complete it here
                self._complete(op, _STATUS_SUCCESS, int(native.ov.InternalHigh))
            else:
                self._inflight[_ov_key(native.ov)] = op
            return
        code = w.last_error()
        if code == w.Error.ERROR_IO_PENDING or (
                code == w.Error.WSAEMSGSIZE and op.kind in ("recv", "recvfrom")):
            # WSAEMSGSIZE at once: a datagram longer than the buffer (or found by the zero-byte
            # peek of a receive given a size).  Its status, STATUS_BUFFER_OVERFLOW, is only a
            # warning, so a packet is still queued (measured under Wine): the kernel still
            # owns the OVERLAPPED, and the packet completes it as ERROR_MORE_DATA.
            self._inflight[_ov_key(native.ov)] = op
            return
        # Failed at once: the kernel queues no packet and holds nothing.
        self._fail(op, code)

    def _start_recv(self, op: Operation, n: _Native) -> bool:
        flags = 0
        if op.buffer is None:  # given a size: a zero-byte receive, then _receive_ready
            n.wsabuf = ffi.new("WSABUF *")  # len 0, buf NULL
            if op.entry.type != socket.SOCK_STREAM:
                flags = _MSG_PEEK  # (on a datagram socket a zero-byte receive would discard it)
        else:
            self._set_wsabuf(op, n, op.buffer)
        n.flags = ffi.new("DWORD *", flags)
        rc = _ws2.WSARecv(op.entry.fd, n.wsabuf, 1, ffi.NULL, n.flags, n.ov, ffi.NULL)
        return bool(rc != _SOCKET_ERROR)

    def _start_send(self, op: Operation, n: _Native) -> bool:
        assert op.buffer is not None
        self._set_wsabuf(op, n, op.buffer[op.sent:])
        rc = _ws2.WSASend(op.entry.fd, n.wsabuf, 1, ffi.NULL, 0, n.ov, ffi.NULL)
        return bool(rc != _SOCKET_ERROR)

    def _start_recvfrom(self, op: Operation, n: _Native) -> bool:
        if op.buffer is None:
            # A zero-byte receive would discard a datagram (truncated to nothing): peek.
            n.wsabuf = ffi.new("WSABUF *")
            n.flags = ffi.new("DWORD *", _MSG_PEEK)
        else:
            self._set_wsabuf(op, n, op.buffer)
            n.flags = ffi.new("DWORD *", 0)
        n.addr = ffi.new("SOCKADDR_STORAGE *")
        n.addrlen = ffi.new("INT *", ffi.sizeof("SOCKADDR_STORAGE"))
        rc = _ws2.WSARecvFrom(op.entry.fd, n.wsabuf, 1, ffi.NULL, n.flags,
                              ffi.cast("struct sockaddr *", n.addr), n.addrlen, n.ov, ffi.NULL)
        return bool(rc != _SOCKET_ERROR)

    def _start_sendto(self, op: Operation, n: _Native) -> bool:
        self._set_wsabuf(op, n, op.buffer)
        assert op.entry.family is not None
        n.addr, addrlen = _sockaddr(op.entry.family, op.address)
        rc = _ws2.WSASendTo(op.entry.fd, n.wsabuf, 1, ffi.NULL, 0,
                            ffi.cast("struct sockaddr *", n.addr), addrlen, n.ov, ffi.NULL)
        return bool(rc != _SOCKET_ERROR)

    def _start_accept(self, op: Operation, n: _Native) -> bool:
        listener = op.entry.sock
        assert listener is not None
        acceptex, _, _ = self._extension(listener)
        n.accept_sock = socket.socket(listener.family, listener.type, listener.proto)
        n.accept_addrs = ffi.new("char[]", 2 * _ACCEPT_ADDRLEN)
        ok = acceptex(op.entry.fd, n.accept_sock.fileno(), n.accept_addrs, 0, _ACCEPT_ADDRLEN,
                      _ACCEPT_ADDRLEN, ffi.NULL, n.ov)
        if not ok and w.last_error() != w.Error.ERROR_IO_PENDING:
            code = w.last_error()
            n.accept_sock.close()
            raise w.winerror_to_oserror(code)
        return bool(ok)

    def _start_connect(self, op: Operation, n: _Native) -> bool:
        sock = op.entry.sock
        assert sock is not None
        _, connectex, _ = self._extension(sock)
        try:
            sock.getsockname()
        except OSError:  # ConnectEx needs a bound socket: bind as connect() would implicitly
            sock.bind(("0.0.0.0", 0) if sock.family == socket.AF_INET else ("::", 0))
        n.addr, addrlen = _sockaddr(sock.family, op.address)
        return bool(connectex(op.entry.fd, ffi.cast("struct sockaddr *", n.addr), addrlen,
                              ffi.NULL, 0, ffi.NULL, n.ov))

    def _start_read(self, op: Operation, n: _Native) -> bool:
        assert op.buffer is not None
        n.ov.Offset = op.offset & 0xFFFFFFFF
        n.ov.OffsetHigh = op.offset >> 32
        return bool(_k32.ReadFile(_handle(op.entry.fd), ffi.from_buffer(op.buffer),
                                  len(op.buffer), ffi.NULL, n.ov))

    def _start_write(self, op: Operation, n: _Native) -> bool:
        assert op.buffer is not None
        position = op.offset + op.sent
        n.ov.Offset = position & 0xFFFFFFFF
        n.ov.OffsetHigh = position >> 32
        return bool(_k32.WriteFile(_handle(op.entry.fd), ffi.from_buffer(op.buffer[op.sent:]),
                                   len(op.buffer) - op.sent, ffi.NULL, n.ov))

    @staticmethod
    def _set_wsabuf(op: Operation, n: _Native, view: memoryview | None) -> None:
        assert view is not None
        n.wsabuf = ffi.new("WSABUF *")
        n.wsabuf.len = len(view)
        # Only the address: the bytes are kept by op.buffer (see _Native).
        n.wsabuf.buf = ffi.from_buffer(view)

    def _extension(self, sock: socket.socket) -> tuple[Any, ...]:
        """AcceptEx, ConnectEx and GetAcceptExSockaddrs for ``sock``'s provider (cached)."""
        cache_key = (int(sock.family), int(sock.type))
        found = self._extensions.get(cache_key)
        if found is None:
            found = tuple(
                self._extension_pointer(sock, guid, ctype) for guid, ctype in (
                    (w.WSAID_ACCEPTEX, "LPFN_ACCEPTEX"),
                    (w.WSAID_CONNECTEX, "LPFN_CONNECTEX"),
                    (w.WSAID_GETACCEPTEXSOCKADDRS, "LPFN_GETACCEPTEXSOCKADDRS")))
            self._extensions[cache_key] = found
        return found

    @staticmethod
    def _extension_pointer(sock: socket.socket, guid_value: Any, ctype: str) -> Any:
        guid = ffi.new("GUID *")
        guid.Data1, guid.Data2, guid.Data3 = guid_value[:3]
        guid.Data4 = list(guid_value[3])
        out = ffi.new(f"{ctype} *")
        returned = ffi.new("DWORD *")
        rc = _ws2.WSAIoctl(sock.fileno(), w.SockOpt.SIO_GET_EXTENSION_FUNCTION_POINTER,
                           guid, ffi.sizeof("GUID"), out, ffi.sizeof(ctype), returned,
                           ffi.NULL, ffi.NULL)
        if rc == _SOCKET_ERROR:
            raise w.winerror_to_oserror(w.last_error())
        return out[0]

    # ------------------------------------------------------------------ completing
    def _complete(self, op: Operation, status: int, nbytes: int) -> None:
        """(lock held) The kernel is done with ``op``: turn its outcome into a completion."""
        n: _Native = op.native
        if status != _STATUS_SUCCESS:
            code = _ntdll.RtlNtStatusToDosError(ffi.cast("LONG", status))
            # ERROR_MORE_DATA: a truncated datagram, delivered cut (as POSIX does)
            if not (op.kind in ("recv", "recvfrom") and code == 234):
                if op.kind in ("send", "write"):
                    op.sent += nbytes  # what went out before the failure or the cancel
                self._fail(op, code)
                return
        kind = op.kind
        try:
            if op.buffer is None and (kind == "recvfrom" or op.entry.type != socket.SOCK_STREAM):
                # The peek says a datagram is there: receive it with a buffer made now (it
                # completes at once), so a longer datagram is truncated as it always was.
                if op.cancel_error is not None:  # exact: the datagram is still queued
                    self._finish(op, None, 0, op.cancel_error)
                else:
                    op.buffer = memoryview(bytearray(op.size))
                    self._start(op)
            elif op.buffer is None and kind == "recv":
                # The zero-byte receive says data (or the end, or an error) is there.
                if not self._receive_ready(op):
                    if op.cancel_error is not None:
                        self._finish(op, None, 0, op.cancel_error)
                    else:
                        self._start(op)  # nothing after all: wait again, still bufferless
            elif kind in ("recv", "read"):
                self._finish(op, op.recv_result(nbytes), nbytes)
            elif kind in ("send", "write"):
                op.sent += nbytes
                assert op.buffer is not None
                if op.sent >= len(op.buffer):
                    self._finish(op, op.sent, op.sent)
                elif op.cancel_error is not None or nbytes == 0:
                    # cancelled (or stalled) part-way: the error, with the prefix in nbytes
                    self._finish(op, None, op.sent,
                                 op.cancel_error or w.winerror_to_oserror(w.Error.WSAECONNRESET))
                else:
                    self._start(op)  # short send: submit the rest under the same Operation
            elif kind == "recvfrom":
                address = _address(n.addr, n.addrlen[0])
                self._finish(op, (op.recv_result(nbytes), address), nbytes)
            elif kind == "sendto":
                self._finish(op, nbytes, nbytes)
            elif kind == "connect":
                sock = op.entry.sock
                assert sock is not None
                sock.setsockopt(w.SockOpt.SOL_SOCKET, w.SockOpt.SO_UPDATE_CONNECT_CONTEXT, b"")
                self._finish(op, None, 0)
            elif kind == "accept":
                self._finish_accept(op, n)
        except OSError as exc:
            self._finish(op, None, 0, exc)

    def _finish_accept(self, op: Operation, n: _Native) -> None:
        conn = n.accept_sock
        assert conn is not None and op.entry.sock is not None
        n.accept_sock = None
        if op._done:  # cancelled meanwhile and already delivered: nobody will get the socket
            conn.close()
            return
        try:
            conn.setsockopt(w.SockOpt.SOL_SOCKET, w.SockOpt.SO_UPDATE_ACCEPT_CONTEXT,
                            struct.pack("P", op.entry.fd))
            _, _, getsockaddrs = self._extension(op.entry.sock)
            local, local_len = ffi.new("struct sockaddr **"), ffi.new("INT *")
            remote, remote_len = ffi.new("struct sockaddr **"), ffi.new("INT *")
            getsockaddrs(n.accept_addrs, 0, _ACCEPT_ADDRLEN, _ACCEPT_ADDRLEN, local, local_len,
                         remote, remote_len)
            address = _address(remote[0], remote_len[0])
        except OSError:
            conn.close()
            raise
        if not self._finish(op, (conn, address), 0):
            conn.close()

    def _fail(self, op: Operation, code: int) -> None:
        """(lock held) ``op`` failed with Windows error ``code``."""
        n: _Native | None = op.native
        if n is not None and n.accept_sock is not None:
            n.accept_sock.close()
            n.accept_sock = None
        if code in w.ABORTED:
            # Windows says 995, Wine 676 when the socket was closed under the operation
            error: OSError = op.cancel_error or OperationCancelled("the handle was closed")
        elif code == w.Error.ERROR_HANDLE_EOF and op.kind == "read":
            self._finish(op, op.recv_result(0), 0)
            return
        else:
            error = w.winerror_to_oserror(code)
        if op.kind in ("send", "write") and op.sent:
            # part of the data went out before the failure: say how much in nbytes
            self._finish(op, None, op.sent, error)
        else:
            self._finish(op, None, 0, error)

    # ------------------------------------------------------------------ cancel, wait, close
    def _cancel(self, op: Operation) -> None:
        n: _Native | None = op.native
        if n is None or _ov_key(n.ov) not in self._inflight:
            self._finish(op, None, 0, op.cancel_error)
            return
        # CancelIoEx either aborts the I/O (final status STATUS_CANCELLED) or finds it already
        # finished (ERROR_NOT_FOUND; the real result stands).  The packet brings the outcome;
        # if the kernel has already written the final status into OVERLAPPED.Internal, the
        # completion is produced now instead.  Either way the OVERLAPPED and buffer stay in
        # _inflight until the packet itself is dequeued.  (Operations queued behind this one
        # by PortBase complete after it, in order, whichever way it ends.)
        _k32.CancelIoEx(_handle(op.entry.fd), n.ov)
        if n.ov.Internal != _STATUS_PENDING:
            self._complete(op, int(n.ov.Internal), int(n.ov.InternalHigh))

    def _poll(self, timeout: float | None) -> None:
        # INFINITE is a reserved value: a finite timeout must stay below it
        ms = w.INFINITE if timeout is None else min(math.ceil(timeout * 1000), w.INFINITE - 1)
        entries, removed = self._entries_buf, self._removed
        ok = _k32.GetQueuedCompletionStatusEx(self._port, entries, _BATCH, removed, ms, 0)
        if not ok:
            return  # timeout (Wine may claim 1 entry removed here: never read them), or closed
        late: list[Operation] = []  # let go of after the lock: they may hold the last data=
        with self._lock:
            for i in range(removed[0]):
                entry = entries[i]
                if entry.lpCompletionKey != _IO_KEY:
                    continue  # a wakeup
                op = self._inflight.pop(_ov_key(entry.lpOverlapped), None)
                if op is None:
                    continue
                if op._done:  # completed by _cancel already; the kernel let go only now
                    late.append(op)
                else:
                    self._complete(op, int(entry.lpOverlapped.Internal),
                                   int(entry.dwNumberOfBytesTransferred))
            op = None
        late.clear()

    def _wakeup(self) -> None:
        # Never post to a closed port handle: Windows may already have reused its value.
        if self._port_open:
            _k32.PostQueuedCompletionStatus(self._port, 0, _WAKEUP_KEY, ffi.NULL)

    def _shutdown(self) -> None:
        with self._lock:
            pending = dict(self._inflight)
        for op in pending.values():
            _k32.CancelIoEx(_handle(op.entry.fd), op.native.ov)
        # The kernel writes into each OVERLAPPED and buffer until its packet is queued: drain
        # them (bounded), then park whatever never came back instead of freeing it.
        deadline = time.monotonic() + _DRAIN_SECONDS
        entries, removed = self._entries_buf, self._removed
        while pending and time.monotonic() < deadline:
            if _k32.GetQueuedCompletionStatusEx(self._port, entries, _BATCH, removed, 50, 0):
                for i in range(removed[0]):
                    entry = entries[i]
                    key = _ov_key(entry.lpOverlapped)
                    if key in pending and pending[key].native.accept_sock is not None:
                        pending[key].native.accept_sock.close()
                    pending.pop(key, None)
        if pending:
            # The buffer too: _Native holds only its address.
            _ABANDONED.extend((op.native, op.buffer) for op in pending.values())
        with self._lock:
            inflight, self._inflight = self._inflight, {}
        inflight.clear()  # outside the lock: the last reference to a data= may go here
        # Windows wakes threads still blocked on the port with ERROR_ABANDONED_WAIT_0; Wine
        # does not, but PortBase.close() has already made the poller leave before this point.
        self._port_open = False
        _k32.CloseHandle(self._port)
