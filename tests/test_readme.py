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


@pytest.mark.skipif(sys.platform == "win32",
                    reason="Windows has no RLIMIT_NOFILE to run a process out of descriptors")
@pytest.mark.parametrize("backend", backends_under_test())
def test_readme_example_survives_failed_accepts(backend: str, tmp_path: pathlib.Path) -> None:
    """Run out of descriptors (EMFILE): accepts fail, the example keeps serving, and the
    clients that waited in the backlog are served once descriptors are free again."""
    if sys.platform == "win32":  # (skipped above; this tells mypy resource is POSIX-only)
        return
    import resource

    port = free_port()
    script = tmp_path / "example.py"
    # A small descriptor limit, set inside the example's own process before it starts.
    script.write_text("import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))\n"
                      + example_source().replace("9190", str(port)), encoding="utf-8")
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[1] >= 24
    server = subprocess.Popen([sys.executable, str(script)],
                              env={**os.environ, "PORTIO_BACKEND": backend},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    clients: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 10
        while not clients:
            try:
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except ConnectionRefusedError:
                assert server.poll() is None, server.communicate()[1].decode()
                assert time.monotonic() < deadline, "the example never listened"
                time.sleep(0.05)
        clients += [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(29)]

        def echoes(client: socket.socket, message: bytes) -> bool:
            client.settimeout(0.5)
            try:
                client.sendall(message)
                return client.recv(len(message)) == message
            except TimeoutError:
                return False  # not accepted (yet): waiting in the backlog

        served = [c for c in clients if echoes(c, b"ping")]
        assert 0 < len(served) < len(clients), "the limit did not make any accept fail"
        assert server.poll() is None, server.communicate()[1].decode()
        for client in served:  # free descriptors: the waiting clients get their turn
            client.close()
        for client in clients:
            if client not in served:
                client.settimeout(10)
                client.sendall(b"late")
                echoed = b""
                while len(echoed) < 8:  # its first message waited with it
                    chunk = client.recv(8)
                    assert chunk, "the example closed a client it had failed to accept"
                    echoed += chunk
                assert echoed == b"pinglate"
        assert server.poll() is None, server.communicate()[1].decode()
    finally:
        for client in clients:
            client.close()
        server.kill()
        server.communicate(timeout=10)
