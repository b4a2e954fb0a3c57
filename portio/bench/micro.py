"""Micro-benchmarks of one port, in this process: the cost of the machinery itself.

- ``post_get``: ``post()`` then ``get()`` in one thread: the round trip through the completion
  queue, the cheapest thing a port does.
- ``get_many``: post a batch of 64, take it with one ``get_many(64)``: completions per second
  when the per-call cost is amortised (``GetQueuedCompletionStatusEx``).
- ``file_read``: 4 KiB reads at random offsets of a page-cached file, 32 in flight, taken with
  ``get_many``; next to it, the same reads as ``os.pread`` calls from a 4-thread
  ``ThreadPoolExecutor`` (what a user does without a port), 32 in flight too.

Two floors, with no port and no I/O at all, for what any Python echo server written against the
:class:`~portio.CompletionPort` API must spend per message whatever the port does (the echo
server's loop over a batch: a receive's completion starts a send, the send's a receive):

- ``echo_handler``: that loop against a port whose methods do nothing and a fixed batch of
  completions: the handler's own bytecode.
- ``echo_api_objects``: the same loop against a port that does only what the API's shape asks
  of every implementation: an ``Operation`` returned per start, held until it completes, and
  one ``Completion`` each, handed out in batches.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import portio

__all__ = ["run_micro"]

_BLOCK = 4096
_IN_FLIGHT = 32
_BATCH = 64


def _timed(seconds: float, step: Callable[[], int]) -> float:
    """Call ``step`` (which returns how many things it did) for ``seconds``; things per second."""
    count = 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        count += step()
        now = time.perf_counter()
        if now >= end:
            return count / (now - start)


def _post_get(port: portio.CompletionPort, seconds: float) -> float:
    def step() -> int:
        for _ in range(100):
            port.post(1)
            port.get()
        return 100

    return _timed(seconds, step)


def _get_many(port: portio.CompletionPort, seconds: float) -> float:
    def step() -> int:
        for _ in range(_BATCH):
            port.post(1)
        taken = 0
        while taken < _BATCH:
            taken += len(port.get_many(_BATCH))
        return taken

    return _timed(seconds, step)


def _port_reads(port: portio.CompletionPort, path: str, blocks: int, seconds: float) -> float:
    rng = random.Random(1)
    with portio.open_file(path, "rb") as f:
        port.register(f)
        for _ in range(_IN_FLIGHT):
            port.read(f, bytearray(_BLOCK), rng.randrange(blocks) * _BLOCK)

        def step() -> int:
            done = port.get_many(_IN_FLIGHT)
            for c in done:
                if c.error is not None or c.nbytes != _BLOCK:
                    raise OSError(f"file read failed: {c.error or c.nbytes}")
                buffer = c.op.buffer if c.op is not None else bytearray(_BLOCK)
                port.read(f, buffer, rng.randrange(blocks) * _BLOCK)
            return len(done)

        rate = _timed(seconds, step)
        port.close_handle(f)  # cancels what is still in flight
    return rate


def _pool_reads(path: str, blocks: int, seconds: float) -> float:
    if sys.platform == "win32":
        raise OSError("os.pread does not exist on Windows")
    rng = random.Random(1)
    fd = os.open(path, os.O_RDONLY)
    try:
        with ThreadPoolExecutor(4) as pool:
            flying: deque[Future[bytes]] = deque(
                pool.submit(os.pread, fd, _BLOCK, rng.randrange(blocks) * _BLOCK)
                for _ in range(_IN_FLIGHT))

            def step() -> int:
                if len(flying.popleft().result()) != _BLOCK:
                    raise OSError("short pread")
                flying.append(pool.submit(os.pread, fd, _BLOCK, rng.randrange(blocks) * _BLOCK))
                return 1

            rate = _timed(seconds, step)
            for future in flying:
                future.result()
    finally:
        os.close(fd)
    return rate


class _IoData:
    __slots__ = ("buffer", "mode", "sock")

    def __init__(self, sock: int) -> None:
        self.buffer = bytearray(_BLOCK)
        self.mode = "read"
        self.sock = sock


class _FloorOperation:
    __slots__ = ("buffer", "data", "kind", "sock")

    def __init__(self, kind: str, sock: int, buffer: Any, data: Any) -> None:
        self.kind, self.sock, self.buffer, self.data = kind, sock, buffer, data


class _FloorCompletion:
    __slots__ = ("data", "error", "key", "kind", "nbytes", "op", "result")

    def __init__(self, key: Any, op: Any, kind: str, nbytes: int, result: Any, error: Any,
                 data: Any) -> None:
        self.key, self.op, self.kind, self.nbytes = key, op, kind, nbytes
        self.result, self.error, self.data = result, error, data


class _IdlePort:
    """Starts nothing and completes nothing: only the handler's loop is left to measure."""

    def __init__(self, batch: list[_FloorCompletion]) -> None:
        self.batch = batch

    def recv(self, sock: int, buffer: bytearray, *, data: Any = None) -> None:
        pass

    def send(self, sock: int, view: memoryview, *, data: Any = None) -> None:
        pass

    def get_many(self, max_entries: int) -> list[_FloorCompletion]:
        return self.batch


class _ObjectsPort:
    """What the API's shape costs with no I/O: an operation per start, kept until it
    completes (with a 64-byte result) as a completion, handed out in batches."""

    def __init__(self) -> None:
        self.inflight: dict[int, _FloorOperation] = {}
        self.ready: deque[_FloorCompletion] = deque()
        self.next_id = 0

    def _start(self, kind: str, sock: int, buffer: Any, data: Any) -> _FloorOperation:
        op = _FloorOperation(kind, sock, buffer, data)
        self.next_id += 1
        self.inflight[self.next_id] = op
        return op

    def recv(self, sock: int, buffer: bytearray, *, data: Any = None) -> _FloorOperation:
        return self._start("recv", sock, memoryview(buffer), data)

    def send(self, sock: int, view: memoryview, *, data: Any = None) -> _FloorOperation:
        return self._start("send", sock, view, data)

    def get_many(self, max_entries: int) -> list[_FloorCompletion]:
        ready = self.ready
        if not ready:
            for op in self.inflight.values():
                ready.append(_FloorCompletion(op.sock, op, op.kind, 64, 64, None, op.data))
            self.inflight.clear()
        return [ready.popleft() for _ in range(min(max_entries, len(ready)))]


def _echo_loop(port: Any, seconds: float) -> float:
    """Messages per second of the echo server's per-completion loop on ``port``."""
    def step() -> int:
        completions = 0
        for _ in range(100):
            for completion in port.get_many(_BATCH):
                io = completion.data
                completions += 1
                if io.mode == "read":
                    io.mode = "write"
                    port.send(io.sock, memoryview(io.buffer)[:completion.nbytes], data=io)
                else:
                    io.mode = "read"
                    port.recv(io.sock, io.buffer, data=io)
        return completions // 2  # a message is a receive and a send

    return _timed(seconds, step)


def _echo_handler_floor(seconds: float) -> float:
    batch = []
    for sock in range(_BATCH):
        io = _IoData(sock)
        io.mode = "read" if sock % 2 else "write"
        batch.append(_FloorCompletion(sock, None, "recv", 64, 64, None, io))
    return _echo_loop(_IdlePort(batch), seconds)


def _echo_api_objects_floor(seconds: float) -> float:
    port = _ObjectsPort()
    for sock in range(100):  # 100 connections, as the 100x64B echo configuration
        io = _IoData(sock)
        port.recv(sock, io.buffer, data=io)
    return _echo_loop(port, seconds)


def run_micro(backends: list[str], seconds: float, file_mib: int = 32,
              progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run every micro-benchmark on every backend (``seconds`` each); rows of results."""
    rows: list[dict[str, Any]] = []
    with tempfile.NamedTemporaryFile(prefix="portio-bench-", suffix=".dat") as tmp:
        tmp.write(os.urandom(file_mib << 20))
        tmp.flush()
        blocks = (file_mib << 20) // _BLOCK
        with open(tmp.name, "rb") as warm:  # into the page cache: measure the port, not the disk
            while warm.read(1 << 20):
                pass
        for backend in backends:
            benches: tuple[tuple[str, str, Callable[[portio.CompletionPort], float]], ...] = (
                ("post_get", "round trips/s", lambda p: _post_get(p, seconds)),
                ("get_many", "completions/s", lambda p: _get_many(p, seconds)),
                ("file_read", "4 KiB reads/s", lambda p: _port_reads(p, tmp.name, blocks,
                                                                     seconds)),
            )
            for name, unit, run in benches:
                if progress is not None:
                    progress(f"micro {backend} {name}")
                with portio.open_port(backend) as port:
                    rows.append({"backend": backend, "bench": name, "unit": unit,
                                 "rate": run(port)})
        if sys.platform != "win32":  # no os.pread on Windows
            if progress is not None:
                progress("micro os.pread thread pool")
            rows.append({"backend": "os.pread+ThreadPoolExecutor(4)", "bench": "file_read",
                         "unit": "4 KiB reads/s",
                         "rate": _pool_reads(tmp.name, blocks, seconds)})
    for name, floor in (("echo_handler", _echo_handler_floor),
                        ("echo_api_objects", _echo_api_objects_floor)):
        if progress is not None:
            progress(f"micro floor {name}")
        rows.append({"backend": "(no port, no I/O)", "bench": name, "unit": "messages/s",
                     "rate": floor(seconds)})
    return rows
