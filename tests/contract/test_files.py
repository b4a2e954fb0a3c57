"""Files at explicit offsets."""

from __future__ import annotations

import io
import os
import pathlib
import sys

import pytest

import portio
from tests.contract.support import complete, complete_all


def test_write_then_read_at_offsets(port: portio.CompletionPort, tmp_path: pathlib.Path) -> None:
    with portio.open_file(tmp_path / "f", "w+b") as f:
        port.register(f, "file")
        writes = [port.write(f, bytes([i]) * 4096, i * 4096, data=i) for i in range(4)]
        completions = {c.op: c for c in complete_all(port, 4)}
        for op in writes:
            assert completions[op].result == 4096 and completions[op].key == "file"
        completion = complete(port, port.read(f, 4096, 2 * 4096, data="r"))
        assert completion.result == b"\2" * 4096 and completion.nbytes == 4096
        assert completion.data == "r" and completion.kind == "read"
    assert (tmp_path / "f").read_bytes() == b"".join(bytes([i]) * 4096 for i in range(4))


def test_read_into_a_buffer_and_past_the_end(port: portio.CompletionPort,
                                             tmp_path: pathlib.Path) -> None:
    (tmp_path / "f").write_bytes(b"0123456789")
    with portio.open_file(tmp_path / "f") as f:
        port.register(f)
        buffer = bytearray(4)
        assert complete(port, port.read(f, buffer, 8)).result == 2
        assert buffer[:2] == b"89"
        assert complete(port, port.read(f, 4, 10)).result == b""
        assert complete(port, port.read(f, buffer, 1 << 40)).result == 0


def test_large_file_round_trip(port: portio.CompletionPort, tmp_path: pathlib.Path) -> None:
    payload = os.urandom(4 * 1024 * 1024)
    with portio.open_file(tmp_path / "big", "w+b") as f:
        port.register(f)
        assert complete(port, port.write(f, payload, 12345)).result == len(payload)
        assert complete(port, port.read(f, len(payload), 12345)).result == payload


def test_close_handle_closes_the_file(port: portio.CompletionPort, tmp_path: pathlib.Path) -> None:
    f = portio.open_file(tmp_path / "f", "wb")
    port.register(f)
    port.close_handle(f)
    assert f.closed
    with pytest.raises(ValueError):
        port.write(f, b"x", 0)


def test_open_file_modes(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="append"):
        portio.open_file(tmp_path / "f", "ab")
    with pytest.raises(FileNotFoundError):
        portio.open_file(tmp_path / "missing", "rb")
    with portio.open_file(tmp_path / "new", "xb") as f:
        assert f.fileno() >= 0 and not f.closed
    with pytest.raises(FileExistsError):
        portio.open_file(tmp_path / "new", "xb")
    f.close()  # idempotent
    with pytest.raises(ValueError):
        f.fileno()


def test_read_on_a_socket_is_unsupported(port: portio.CompletionPort) -> None:
    import socket

    a, b = socket.socketpair()
    with a, b:
        port.register(a)
        with pytest.raises(io.UnsupportedOperation):
            port.read(a, 10, 0)


def test_read_on_a_pipe_is_unsupported(port: portio.CompletionPort) -> None:
    """A pipe registers on every backend (on Windows as a HANDLE: portio's ints are HANDLEs
    there), and every operation on it is refused at the call."""
    if sys.platform == "win32":
        import _winapi

        r, w = _winapi.CreatePipe(None, 0)
        close = _winapi.CloseHandle
    else:
        r, w = os.pipe()
        close = os.close
    try:
        port.register(r)
        with pytest.raises(io.UnsupportedOperation):
            port.read(r, 10, 0)
        with pytest.raises(ValueError, match="needs a socket"):
            port.recv(r, 10)
    finally:
        close(r)
        close(w)
