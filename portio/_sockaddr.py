"""``struct sockaddr_*`` bytes to and from the address tuples of the ``socket`` module.

The completion backends hand the kernel raw socket addresses (io_uring's connect and sendmsg,
Windows' ConnectEx and WSASendTo) and read raw ones back (accept, recvmsg, WSARecvFrom).
The layouts used here are the same on Linux and Windows: ``sockaddr_in`` is family (native
u16), port (network u16), address (4 bytes), 8 bytes of padding; ``sockaddr_in6`` is family,
port, flowinfo (network u32), address (16 bytes), scope id (native u32).  Only the family
numbers differ, and those come from the running platform's ``socket`` module.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Any

__all__ = ["SOCKADDR_MAX", "decode", "encode"]

#: ``sizeof(struct sockaddr_storage)`` on Linux and Windows: the C-side address buffers
#: (io_uring's ``struct pio_msg``) hold this much, and ``encode`` never returns more.
SOCKADDR_MAX = 128

_AF_UNIX: Any = getattr(socket, "AF_UNIX", None)


def encode(family: int, address: Any) -> bytes:
    """The ``struct sockaddr_*`` bytes of an already-resolved numeric ``address``; at most
    :data:`SOCKADDR_MAX` of them (``ValueError`` beyond: the C buffers are that size)."""
    raw = _encode(family, address)
    if len(raw) > SOCKADDR_MAX:
        raise ValueError(f"a socket address of {len(raw)} bytes does not fit a "
                         f"struct sockaddr_storage ({SOCKADDR_MAX} bytes)")
    return raw


def _encode(family: int, address: Any) -> bytes:
    if family == socket.AF_INET:
        host, port = address[0], address[1]
        return (struct.pack("=H", family) + struct.pack("!H", port)
                + socket.inet_pton(family, host) + bytes(8))
    if family == socket.AF_INET6:
        host, port = address[0], address[1]
        flowinfo = address[2] if len(address) > 2 else 0
        scope_id = address[3] if len(address) > 3 else 0
        return (struct.pack("=H", family) + struct.pack("!HI", port, flowinfo)
                + socket.inet_pton(family, host.split("%", 1)[0]) + struct.pack("=I", scope_id))
    if _AF_UNIX is not None and family == _AF_UNIX:
        path = os.fsencode(address)
        if path and path[0] != 0:
            path += b"\0"
        return struct.pack("=H", family) + path
    raise OSError(errno.EAFNOSUPPORT, f"address family {family} is not supported")


def decode(raw: bytes) -> Any:
    """The ``socket``-module address (tuple, or path) of ``struct sockaddr_*`` bytes."""
    if len(raw) < 2:
        return ""
    (family,) = struct.unpack_from("=H", raw)
    if family == socket.AF_INET:
        (port,) = struct.unpack_from("!H", raw, 2)
        return socket.inet_ntop(family, raw[4:8]), port
    if family == socket.AF_INET6:
        port, flowinfo = struct.unpack_from("!HI", raw, 2)
        (scope_id,) = struct.unpack_from("=I", raw, 24)
        return socket.inet_ntop(family, raw[8:24]), port, flowinfo, scope_id
    if _AF_UNIX is not None and family == _AF_UNIX:
        path = raw[2:]
        if path[:1] == b"\0":
            return path  # abstract namespace: bytes, as the socket module gives
        return os.fsdecode(path.split(b"\0", 1)[0])
    return raw
