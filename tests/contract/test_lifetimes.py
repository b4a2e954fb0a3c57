"""What the OS points at outlives nothing it must not, and nothing outlives its welcome.

Operations end up in reference cycles all the time (per-I/O data that points back at its
operation, a queue of operations left behind by ``close``), so the cyclic GC, not reference
counting, frees their buffers, in whatever order it likes.  CPython crashes if the GC clears a
memoryview whose buffer some other object still exports (a cffi buffer object, say) and that
export is released afterwards; no backend may leave such an object where the GC can reach it.
A crash would kill the test run, so the scenario runs in a subprocess.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

_SCRIPT = r"""
import gc, socket, sys
import portio
port = portio.open_port(sys.argv[1])
a, b = socket.socketpair()
port.register(a)
with portio.open_file(sys.argv[2], "w+b") as f:
    port.register(f)
    for i in range(30):
        # Each cycle is made after its operation (and its buffer view), so the GC clears the
        # view first: the order that crashes if a view is still exported.
        op = port.recv(a, bytearray(64)); op.data = [op]
        b.send(b"x"); port.get(timeout=10)
        op = port.send(a, memoryview(bytearray(64))[:8]); op.data = [op]
        port.get(timeout=10); b.recv(64)
        op = port.write(f, memoryview(bytearray(4096))[:512], i * 512); op.data = [op]
        port.get(timeout=10)
        op = port.read(f, bytearray(512), i * 512); op.data = [op]
        port.get(timeout=10)
    pending = [port.recv(a, bytearray(64)) for _ in range(3)]  # one started, two queued
    for op in pending:
        op.data = [op]
    port.close()  # with operations in flight and queued: they stay in their FIFO
    del op, pending, port
    gc.collect()
print("collected")
"""


def test_operations_in_reference_cycles_are_collected_without_a_crash(
        backend: str, tmp_path: pathlib.Path) -> None:
    result = subprocess.run([sys.executable, "-c", _SCRIPT, backend, str(tmp_path / "f")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    assert result.stdout.strip() == "collected"
