"""The Windows branch of :func:`portio.open_file`: ``CreateFileW`` with ``FILE_FLAG_OVERLAPPED``.

A file must be opened overlapped for ``ReadFile``/``WriteFile`` with an OVERLAPPED (and so an
offset) to run asynchronously and report to a completion port; ``os.open`` cannot ask for that.
The HANDLE, as an int, is the file's ``fileno()``. Windows only (imported by ``portio._files``
when ``sys.platform == "win32"``).
"""

from __future__ import annotations

import os
import sys

if sys.platform != "win32":  # also tells mypy --platform linux/darwin to skip the rest
    raise ImportError("portio.backends._winfile needs Windows")

from . import _winapi as w

__all__ = ["close", "open_overlapped"]

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


def close(handle: int) -> None:
    """Close a HANDLE returned by :func:`open_overlapped`."""
    if not _kernel32.CloseHandle(w.ffi.cast("HANDLE", handle)):
        raise w.winerror_to_oserror(w.last_error())
