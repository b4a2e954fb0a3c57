"""Files opened the way every backend needs for I/O at explicit offsets."""

from __future__ import annotations

import os
import sys

__all__ = ["File", "open_file"]

# mode -> os.open flags; "a" is refused because O_APPEND makes Linux ignore pwrite's offset.
_MODES = {
    "rb": os.O_RDONLY,
    "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "xb": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "r+b": os.O_RDWR,
    "w+b": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "x+b": os.O_RDWR | os.O_CREAT | os.O_EXCL,
}
_MODES.update({mode.replace("b", ""): flags for mode, flags in list(_MODES.items())})
_MODES.update({mode.replace("+b", "b+"): flags
               for mode, flags in list(_MODES.items()) if "+b" in mode})


class File:
    """A file for :meth:`CompletionPort.read`/:meth:`~CompletionPort.write` at offsets.

    Has ``fileno()``, ``close()``, ``closed``, ``name`` and ``mode``, and is a context manager.
    Register it with a port, then read and write it at explicit offsets; it has no position.
    """

    #: Tells ports this handle supports offsets without probing it.
    portio_file = True
    _fd = -1  # until the open succeeds, so close() and __del__ are safe on a failed open

    def __init__(self, path: str | os.PathLike[str], mode: str = "rb") -> None:
        if not isinstance(mode, str):
            raise TypeError(f"mode must be a str, not {type(mode).__name__}")
        flags = _MODES.get(mode)
        if flags is None:
            raise ValueError(f"invalid mode {mode!r}: use rb, wb, xb, r+b, w+b or x+b "
                             "(append is not offered: offsets would be ignored)")
        self.name = os.fspath(path)
        self.mode = mode
        flags |= getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
        if sys.platform == "win32":
            from portio.backends import _winfile  # FILE_FLAG_OVERLAPPED needs CreateFileW

            self._fd = _winfile.open_overlapped(self.name, flags)
        else:
            self._fd = os.open(self.name, flags, 0o666)

    def fileno(self) -> int:
        """The descriptor (a HANDLE on Windows); ``ValueError`` once closed."""
        if self._fd < 0:
            raise ValueError("I/O operation on closed file")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Close the file; idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            if sys.platform == "win32":
                from portio.backends import _winfile

                _winfile.close(fd)
            else:
                os.close(fd)

    def __enter__(self) -> File:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<portio.File {self.name!r} mode={self.mode!r} {state}>"


def open_file(path: str | os.PathLike[str], mode: str = "rb") -> File:
    """Open ``path`` for offset I/O through a port (``FILE_FLAG_OVERLAPPED`` on Windows).

    ``mode`` is one of ``rb``, ``wb``, ``xb``, ``r+b``, ``w+b``, ``x+b`` (the ``b`` may be
    left out).  Raises ``ValueError`` for another mode and ``OSError`` if the file cannot be
    opened.
    """
    return File(path, mode)
