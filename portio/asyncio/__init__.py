"""portio as an asyncio event loop.

Run an unchanged asyncio program on a completion port (io_uring, iocp or selector)::

    asyncio.run(main(), loop_factory=portio.asyncio.new_event_loop)        # Python 3.12+
    asyncio.set_event_loop_policy(portio.asyncio.EventLoopPolicy())        # 3.10, 3.11
    asyncio.run(main())

The loop is asyncio's own proactor loop (``asyncio.proactor_events``, the model Windows uses)
over portio's public :class:`~portio.CompletionPort` API.  :func:`read` and :func:`write` do
file I/O at an offset through the port, without a thread pool.
"""

from __future__ import annotations

import asyncio
from typing import Any

from portio.asyncio._loop import PortioEventLoop

__all__ = ["EventLoopPolicy", "PortioEventLoop", "new_event_loop", "read", "write"]


def new_event_loop(backend: str | None = None) -> PortioEventLoop:
    """A new :class:`PortioEventLoop` on ``backend`` (``None``: ``$PORTIO_BACKEND``, else the
    best available).  For another backend than the default, pass
    ``loop_factory=functools.partial(portio.asyncio.new_event_loop, "selector")``."""
    return PortioEventLoop(backend)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """The default policy, except that new loops are :class:`PortioEventLoop` on ``backend``.

    For Python 3.10 and 3.11, whose ``asyncio.run`` has no ``loop_factory``:
    ``asyncio.set_event_loop_policy(portio.asyncio.EventLoopPolicy())``.
    """

    def __init__(self, backend: str | None = None) -> None:
        super().__init__()
        self.backend = backend

    def new_event_loop(self) -> PortioEventLoop:
        """A new :class:`PortioEventLoop` on this policy's backend."""
        return PortioEventLoop(self.backend)


def _running_portio_loop(what: str) -> PortioEventLoop:
    loop = asyncio.get_running_loop()
    if not isinstance(loop, PortioEventLoop):
        raise TypeError(f"portio.asyncio.{what}() needs a running PortioEventLoop, "
                        f"not {type(loop).__name__}")
    return loop


async def read(file: Any, size_or_buffer: int | Any, offset: int) -> bytes | int:
    """Read from ``file`` at ``offset`` through the loop's completion port.

    ``file`` is a :func:`portio.open_file` file (or, on POSIX, any seekable file or
    descriptor); ``size_or_buffer`` a size (the result is the bytes read) or a writable buffer
    (the result is the count).  Past the end of the file: ``b""``/``0``.  Raises what
    :meth:`portio.CompletionPort.read` raises, and ``TypeError`` outside a running
    :class:`PortioEventLoop`.  Nothing blocks the loop and no thread pool is involved: on
    io_uring and iocp the kernel does the read asynchronously (the selector backend calls
    ``pread``, which the page cache usually answers at once).
    """
    loop = _running_portio_loop("read")
    result: bytes | int = await loop._proactor.read(file, size_or_buffer, offset)
    return result


async def write(file: Any, data: Any, offset: int) -> int:
    """Write all of ``data`` to ``file`` at ``offset`` through the loop's completion port;
    returns the count.  Same rules as :func:`read`."""
    loop = _running_portio_loop("write")
    result: int = await loop._proactor.write(file, data, offset)
    return result



