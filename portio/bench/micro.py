"""Micro-benchmarks of one port, in this process: the cost of the machinery itself.

- ``post_get``: ``post()`` then ``get()`` in one thread: the round trip through the completion
  queue, the cheapest thing a port does.
- ``get_many``: post a batch of 64, take it with one ``get_many(64)``: completions per second
  when the per-call cost is amortised (``GetQueuedCompletionStatusEx``).
- ``file_read``: 4 KiB reads at random offsets of a page-cached file, 32 in flight, taken with
  ``get_many``; next to it, the same reads as ``os.pread`` calls from a 4-thread
  ``ThreadPoolExecutor`` (what a user does without a port), 32 in flight too.
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
        if sys.platform == "win32":
            return rows  # no os.pread on Windows
        if progress is not None:
            progress("micro os.pread thread pool")
        rows.append({"backend": "os.pread+ThreadPoolExecutor(4)", "bench": "file_read",
                     "unit": "4 KiB reads/s", "rate": _pool_reads(tmp.name, blocks, seconds)})
    return rows
