"""The README's example is real code: run it as written (on a free port) and talk to it."""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import backends_under_test

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def example_source() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Example"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's example has no python block"
    return match.group(1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize("backend", backends_under_test())
def test_readme_example_echoes(backend: str, tmp_path: pathlib.Path) -> None:
    source = example_source()
    assert "9190" in source
    port = free_port()
    script = tmp_path / "example.py"
    script.write_text(source.replace("9190", str(port)), encoding="utf-8")
    server = subprocess.Popen([sys.executable, str(script)],
                              env={**os.environ, "PORTIO_BACKEND": backend},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except ConnectionRefusedError:
                assert server.poll() is None, server.communicate()[1].decode()
                assert time.monotonic() < deadline, "the example never listened"
                time.sleep(0.05)
        with client:
            for message in (b"hello", os.urandom(100_000)):
                client.sendall(message)
                echoed = bytearray()
                while len(echoed) < len(message):
                    chunk = client.recv(65536)
                    assert chunk, "the example closed the connection"
                    echoed += chunk
                assert echoed == message
        # A second client after the first one left: the server survived its disconnect.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as again:
            again.sendall(b"again")
            assert again.recv(5) == b"again"  # one small segment on loopback
    finally:
        server.kill()
        server.communicate(timeout=10)
