"""The Windows branch of :func:`portio.open_file`: ``CreateFileW`` with ``FILE_FLAG_OVERLAPPED``.

A file must be opened overlapped for ``ReadFile``/``WriteFile`` with an OVERLAPPED (and so an
offset) to run asynchronously and report to a completion port; ``os.open`` cannot ask for that.
The HANDLE, as an int, is the file's ``fileno()``. :func:`read_at` and :func:`write_at` do
blocking I/O at an offset on such a HANDLE (the selector backend's file I/O: a HANDLE is not a
C runtime descriptor, so ``os.lseek``/``os.read`` fail on it). Windows only (imported by
``portio._files`` and the selector backend when ``sys.platform == "win32"``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

if sys.platform != "win32":  # also tells mypy --platform linux/darwin to skip the rest
    raise ImportError("portio.backends._winfile needs Windows")

from . import _winapi as w

__all__ = ["check_open", "close", "open_overlapped", "read_at", "write_at"]

_kernel32 = w.load().kernel32


def _disposition(flags: int) -> w.Disposition:
    creat, excl, trunc = flags & os.O_CREAT, flags & os.O_EXCL, flags & os.O_TRUNC
    if creat and excl:
        return w.Disposition.CREATE_NEW
    if creat and trunc:
        return w.Disposition.CREATE_ALWAYS
    if creat:
        return w.Disposition.OPEN_ALWAYS
    if trunc:
        return w.Disposition.TRUNCATE_EXISTING
    return w.Disposition.OPEN_EXISTING


def open_overlapped(path: str, flags: int) -> int:
    """Open ``path`` for overlapped I/O with the ``os.O_*`` ``flags`` ``portio._files`` chose;
    return the HANDLE as an int. Raises ``OSError`` (``FileNotFoundError``, ...) with
    ``winerror`` and ``filename`` set."""
    accmode = flags & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
    access = {
        os.O_RDONLY: w.Access.GENERIC_READ,
        os.O_WRONLY: w.Access.GENERIC_WRITE,
        os.O_RDWR: w.Access.GENERIC_READ | w.Access.GENERIC_WRITE,
    }[accmode]
    # Share everything: portio files are opened by one process that coordinates by offset, and
    # POSIX (the other backends) never locks a file against other openers either.
    share = w.Share.FILE_SHARE_READ | w.Share.FILE_SHARE_WRITE | w.Share.FILE_SHARE_DELETE
    handle = _kernel32.CreateFileW(
        os.fspath(path), access, share, w.ffi.NULL, _disposition(flags),
        w.FileFlags.FILE_ATTRIBUTE_NORMAL | w.FileFlags.FILE_FLAG_OVERLAPPED, w.ffi.NULL)
    value = int(w.ffi.cast("uintptr_t", handle))
    if value == w.INVALID_HANDLE_VALUE:
        code = w.last_error()
        raise OSError(None, w.error_message(code), os.fspath(path), code)
    return value


def check_open(handle: int) -> None:
    """Raise ``ValueError`` unless ``handle`` is an open HANDLE (``os.fstat`` cannot tell: it
    knows C runtime descriptors only)."""
    if (_kernel32.GetFileType(w.ffi.cast("HANDLE", handle)) == w.FileType.FILE_TYPE_UNKNOWN
            and w.last_error() != w.Error.ERROR_SUCCESS):
        raise ValueError(f"handle {handle} is not an open socket, file or pipe handle")


def close(handle: int) -> None:
    """Close a HANDLE returned by :func:`open_overlapped`."""
    if not _kernel32.CloseHandle(w.ffi.cast("HANDLE", handle)):
        raise w.winerror_to_oserror(w.last_error())


def _transfer(call: Any, handle: int, buffer: memoryview, offset: int) -> int:
    """Run ReadFile or WriteFile at ``offset`` on an overlapped HANDLE and wait for it."""
    ov: Any = w.ffi.new("OVERLAPPED *")  # cffi cdata: fields are not typed
    ov.Offset = offset & 0xFFFFFFFF
    ov.OffsetHigh = offset >> 32
    # An event of its own: with hEvent NULL the wait would be on the file handle, which any
    # other I/O on that file (another thread's, another port's) also signals.
    event = _kernel32.CreateEventW(w.ffi.NULL, True, False, w.ffi.NULL)
    if event == w.ffi.NULL:
        raise w.winerror_to_oserror(w.last_error())
    ov.hEvent = event
    done = w.ffi.new("DWORD *")
    try:
        h = w.ffi.cast("HANDLE", handle)
        if not call(h, w.ffi.from_buffer(buffer), len(buffer), w.ffi.NULL, ov):
            code = w.last_error()
            if code != w.Error.ERROR_IO_PENDING:
                return _failed(code)
        if not _kernel32.GetOverlappedResult(h, ov, done, True):
            return _failed(w.last_error())
        return int(done[0])
    finally:
        _kernel32.CloseHandle(event)


def _failed(code: int) -> int:
    if code == w.Error.ERROR_HANDLE_EOF:  # a read at or past the end: POSIX reads 0 bytes
        return 0
    raise w.winerror_to_oserror(code)


def read_at(handle: int, buffer: memoryview, offset: int) -> int:
    """Read into ``buffer`` from ``offset`` of an overlapped HANDLE; return the count (0 past
    the end). Blocks until done; raises ``OSError`` with ``winerror``."""
    return _transfer(_kernel32.ReadFile, handle, buffer, offset)


def write_at(handle: int, data: memoryview, offset: int) -> int:
    """Write ``data`` at ``offset`` of an overlapped HANDLE; return the count written (maybe
    short). Blocks until done; raises ``OSError`` with ``winerror``."""
    return _transfer(_kernel32.WriteFile, handle, data, offset)
