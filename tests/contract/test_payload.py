"""The payload of send, sendto and write is positional only: ``data=`` is always the per-I/O
data, as on every other operation, and a forgotten payload is a TypeError naming it."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

import portio
from tests.contract.support import complete


def test_data_keyword_is_the_per_io_data_on_send(
        port: portio.CompletionPort, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = tcp_pair
    completion = complete(port, port.send(ours, b"hello", data="tag"))
    assert completion.error is None and completion.result == 5
    assert completion.data == "tag"
    assert peer.recv(5) == b"hello"


def test_sendto_and_write_take_data_as_the_per_io_data(port: portio.CompletionPort,
                                                        tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        b.bind(("127.0.0.1", 0))
        b.settimeout(10)
        port.register(a)
        completion = complete(port, port.sendto(a, b"dgram", b.getsockname(), data="udp"))
        assert (completion.error, completion.result, completion.data) == (None, 5, "udp")
        assert b.recv(16) == b"dgram"
    with portio.open_file(tmp_path / "f", "w+b") as f:
        port.register(f)
        completion = complete(port, port.write(f, b"abc", 0, data="file"))
        assert (completion.error, completion.result, completion.data) == (None, 3, "file")
        assert complete(port, port.read(f, 3, 0)).result == b"abc"


@pytest.mark.parametrize("call", [
    lambda port, s, f: port.send(s, data=b"x"),
    lambda port, s, f: port.sendto(s, address=("127.0.0.1", 9), data=b"x"),
    lambda port, s, f: port.write(f, offset=0, data=b"x"),
], ids=["send", "sendto", "write"])
def test_a_missing_payload_is_a_type_error_naming_it(port: portio.CompletionPort,
                                                     tmp_path: Path, call: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, \
            portio.open_file(tmp_path / "f", "w+b") as f:
        port.register(s)
        port.register(f)
        with pytest.raises(TypeError, match="payload"):
            call(port, s, f)
        # nothing was started: a post is the only thing that comes out
        port.post("after")
        assert port.get(timeout=10).key == "after"


@pytest.mark.parametrize("method", ["send", "sendto", "write"])
def test_payload_cannot_be_passed_by_keyword(port: portio.CompletionPort, method: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        port.register(s)
        with pytest.raises(TypeError):
            getattr(port, method)(s, payload=b"x")
