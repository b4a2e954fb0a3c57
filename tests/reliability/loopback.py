"""What the reliability tests share: bounded waits, loopback pairs, and process gauges.

Every wait here has a limit, so a portio bug shows up as a failed test, never a stalled run.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import portio

#: Upper bound for any single wait: long enough for a loaded CI machine, short enough that a
#: hang fails fast instead of stalling the run.
WAIT = 10.0


def complete(port: portio.CompletionPort, op: portio.Operation) -> portio.Completion:
    """Dequeue the next completion and check it is ``op``'s."""
    completion = port.get(timeout=WAIT)
    assert completion.op is op, f"expected {op!r}, dequeued {completion!r}"
    return completion


def assert_nothing_queued(port: portio.CompletionPort, wait: float = 0.2) -> None:
    """Fail if a completion comes out within ``wait`` seconds (a duplicate or a stray one)."""
    try:
        extra = port.get(timeout=wait)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected completion {extra!r}")


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair of plain blocking sockets (10 s timeouts)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        a = socket.create_connection(server.getsockname(), timeout=5)
        b, _ = server.accept()
    a.settimeout(WAIT)
    b.settimeout(WAIT)
    return a, b


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with SO_LINGER 0, so the peer gets a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def free_tcp_port() -> int:
    """A loopback port nobody listens on (bound then released: nothing else binds it here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        number: int = s.getsockname()[1]
        return number


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything the blocking ``sock`` receives until the peer closes (bounded by WAIT)."""
    chunks = bytearray()
    while chunk := sock.recv(65536):
        chunks += chunk
    return bytes(chunks)


def outcome_of(call: Callable[[], Any], limit: float = WAIT) -> BaseException | Any:
    """Run ``call`` in a thread; return what it raised or returned.  Fail if it is still
    running after ``limit`` seconds (a hang), instead of hanging the suite."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as exc:  # the caller inspects it
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"call did not return within {limit} s"
    return box[0]


def fd_count() -> int:
    """Open descriptors of this process (Linux: /proc/self/fd; Windows: open HANDLEs, from
    GetProcessHandleCount, which Wine 8 answers with 0, so under Wine this checks nothing)."""
    if sys.platform == "win32":
        import ctypes
        from ctypes import wintypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        kernel32.GetCurrentProcess.restype = wintypes.HANDLE
        kernel32.GetProcessHandleCount.argtypes = [wintypes.HANDLE, ctypes.c_void_p]
        count = wintypes.DWORD()
        if not kernel32.GetProcessHandleCount(kernel32.GetCurrentProcess(), ctypes.byref(count)):
            raise ctypes.WinError(ctypes.get_last_error())
        return int(count.value)
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    """Resident set size of this process (Linux: /proc/self/statm; Windows: the working set,
    from GetProcessMemoryInfo)."""
    if sys.platform == "win32":
        import ctypes
        from ctypes import wintypes

        class Counters(ctypes.Structure):  # PROCESS_MEMORY_COUNTERS
            _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD)] + [
                (name, ctypes.c_size_t) for name in (
                    "PeakWorkingSetSize", "WorkingSetSize", "QuotaPeakPagedPoolUsage",
                    "QuotaPagedPoolUsage", "QuotaPeakNonPagedPoolUsage",
                    "QuotaNonPagedPoolUsage", "PagefileUsage", "PeakPagefileUsage")]

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        kernel32.GetCurrentProcess.restype = wintypes.HANDLE
        kernel32.K32GetProcessMemoryInfo.argtypes = [wintypes.HANDLE, ctypes.c_void_p,
                                                     wintypes.DWORD]
        counters = Counters(cb=ctypes.sizeof(Counters))
        if not kernel32.K32GetProcessMemoryInfo(kernel32.GetCurrentProcess(),
                                                ctypes.byref(counters), counters.cb):
            raise ctypes.WinError(ctypes.get_last_error())
        return int(counters.WorkingSetSize)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


#: Linux's /proc is there to count descriptors.  (Checked by platform too: under Wine,
#: "/proc/self/fd" is Z:\proc\self\fd, the *Linux* /proc, which says nothing about Windows
#: handles.)
HAS_PROC = sys.platform == "linux" and os.path.isdir("/proc/self/fd")
#: :func:`fd_count` and :func:`rss_bytes` work here.
CAN_SAMPLE = HAS_PROC or sys.platform == "win32"


def os_pipe() -> tuple[int, int]:
    """A pipe as a port takes it: (read end, write end) descriptors on POSIX, HANDLEs on
    Windows (portio's ints are HANDLEs there, while ``os.pipe()`` gives C runtime numbers)."""
    if sys.platform == "win32":
        import _winapi

        return _winapi.CreatePipe(None, 0)
    return os.pipe()


def close_pipe_end(handle: int) -> None:
    """Close one end returned by :func:`os_pipe`."""
    if sys.platform == "win32":
        import _winapi

        _winapi.CloseHandle(handle)
    else:
        os.close(handle)


@dataclass
class World:
    """A port and one handle of each kind, for bad or generated calls to aim at."""

    port: portio.CompletionPort
    tcp: socket.socket  # registered, connected to ``peer``
    peer: socket.socket
    udp: socket.socket  # registered, bound
    file: portio.File  # registered, opened w+b
    pipe_r: int  # registered read end of a pipe (a HANDLE on Windows): no offsets
    pipe_w: int
    loose: socket.socket  # never registered
    closed: socket.socket  # registered, then closed by close_handle
    listener: socket.socket  # registered, listening
    #: int fds the port closed (close_handle on an int closes it): not to be closed again,
    #: since the number may already belong to another descriptor.
    released: set[int] = field(default_factory=set)


@contextlib.contextmanager
def open_world(port: portio.CompletionPort, directory: Path) -> Iterator[World]:
    """Register one handle of each kind with ``port``; close them all afterwards."""
    tcp, peer = tcp_pair()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    file = portio.open_file(directory / "world-file", "w+b")
    pipe_r, pipe_w = os_pipe()
    loose = socket.socket()
    closed = socket.socket()
    world = World(port, tcp, peer, udp, file, pipe_r, pipe_w, loose, closed, listener)
    try:
        for handle, key in ((tcp, "tcp"), (udp, "udp"), (file, "file"), (pipe_r, "pipe"),
                            (closed, "closed"), (listener, "listener")):
            port.register(handle, key)
        port.close_handle(closed)
        yield world
    finally:
        for sock in (tcp, peer, udp, loose, closed, listener):
            sock.close()
        file.close()
        for end in {pipe_r, pipe_w} - world.released:
            close_pipe_end(end)
