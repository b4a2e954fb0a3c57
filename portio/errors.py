"""The exceptions portio raises and delivers, the same on every backend.

Failures of an operation are *delivered* (as ``Completion.error``), never raised from ``get``:
``ConnectionResetError``, ``BrokenPipeError``, ``ConnectionRefusedError``, ``TimeoutError`` (the
operation's own ``timeout=`` expired), :class:`OperationCancelled`, or another ``OSError`` with
its ``errno`` (and ``winerror`` on Windows).  Misuse of the API is *raised* at once:
``TypeError`` for a wrong type, ``ValueError`` for a wrong value, :class:`PortClosed` for a port
that was closed.
"""

from __future__ import annotations

import errno
import os


class PortClosed(ValueError):
    """The port was closed: raised by every call made on it afterwards, and by the threads that
    were blocked in ``get``/``get_many``/``dispatch`` when it closed.

    A ``ValueError`` for the same reason as ``ValueError: I/O operation on closed file``: the
    caller used an object that no longer accepts work.
    """


class OperationCancelled(OSError):
    """The operation was cancelled (``Operation.cancel()``, ``close_handle``) before it did its
    work; ``errno`` is ``ECANCELED``.  Nothing was transferred: a cancelled receive consumed no
    bytes, and a cancelled send may have sent a prefix (``Completion.nbytes`` says how much)."""

    def __init__(self, message: str = "operation cancelled") -> None:
        super().__init__(errno.ECANCELED, message)


class BackendUnavailable(OSError):
    """The named backend exists but cannot run on this machine; the message says why."""


def error_from_errno(code: int) -> OSError:
    """The exception portio delivers for a failed system call that returned ``code``.

    ``OSError(code, ...)`` already picks the builtin subclass for the code (ECONNRESET ->
    ``ConnectionResetError``, EPIPE -> ``BrokenPipeError``, ETIMEDOUT -> ``TimeoutError``, ...);
    ECANCELED, which has no builtin subclass, becomes :class:`OperationCancelled`.
    """
    if code == errno.ECANCELED:
        return OperationCancelled()
    return OSError(code, os.strerror(code))


def operation_timed_out(kind: str, timeout: float) -> TimeoutError:
    """The error delivered when an operation's own ``timeout=`` expires."""
    return TimeoutError(errno.ETIMEDOUT, f"{kind} timed out after {timeout:g} s")
