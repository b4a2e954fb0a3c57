"""File I/O at offsets through a completion port: writes in any order, then reads."""

import os
import tempfile

import portio

with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "example.bin")
    with portio.open_port() as port, portio.open_file(path, "w+b") as f:
        port.register(f, key="file")
        # A portio file has no position: every read and write says where.
        port.write(f, b"world", 6, data="second half")
        port.write(f, b"hello ", 0, data="first half")
        completions = [port.get(timeout=10) for _ in range(2)]  # in the order they finish
        for c in sorted(completions, key=lambda c: c.data):
            if c.error is not None:
                raise c.error
            print(f"wrote {c.result} bytes: {c.data}")
        port.read(f, 100, 0)
        print(f"read {port.get(timeout=10).result!r}")
        port.read(f, 100, 4096)
        print(f"past the end: {port.get(timeout=10).result!r}")
