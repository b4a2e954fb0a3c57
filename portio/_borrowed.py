"""A socket object over a descriptor that stays its owner's.

Its own module because the port's module is compiled by mypyc, whose native classes cannot
subclass :class:`socket.socket` (a Python class with ``__slots__``); here it stays a plain
Python class in both the pure and the compiled build.
"""

from __future__ import annotations

import socket

__all__ = ["BorrowedSocket"]


class BorrowedSocket(socket.socket):
    """A socket object over a descriptor the caller registered as an int: the port needs the
    socket API on it, but the number stays the caller's, so collecting this object (when the
    port is dropped, in whatever order the GC finalizes a cycle) never closes it."""

    def __del__(self) -> None:
        if self.fileno() >= 0:
            self.detach()
