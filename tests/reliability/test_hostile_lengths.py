"""Lengths that go into fixed C buffers are checked before any copy, on every backend.

An AF_UNIX path longer than ``sun_path`` once overran io_uring's 128-byte address buffer (a
20,000-character path aborted the interpreter).  Every length is now refused at the call with a
ValueError.  ``tools/asan-uring.sh`` runs this module against an AddressSanitizer build of the
io_uring core, so an overrun that slips past the checks is reported, not silent.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import portio
from portio import _sockaddr

from .loopback import WAIT

AF_UNIX: int = getattr(socket, "AF_UNIX", -1)  # (absent from CPython on Windows)
pytestmark = pytest.mark.skipif(AF_UNIX == -1,
                                reason="this platform's socket module has no AF_UNIX")

SUN_PATH_MAX = 104 if sys.platform == "darwin" else 108


@pytest.mark.parametrize("length", [SUN_PATH_MAX + 1, 200, 20_000, 100_000])
@pytest.mark.parametrize("kind", ["connect", "sendto"])
def test_an_over_long_unix_path_is_a_value_error(port: portio.CompletionPort, kind: str,
                                                 length: int) -> None:
    sock_type = socket.SOCK_STREAM if kind == "connect" else socket.SOCK_DGRAM
    with socket.socket(AF_UNIX, sock_type) as sock:
        port.register(sock)
        path = "/tmp/" + "x" * (length - 5)
        with pytest.raises(ValueError, match="sun_path"):
            if kind == "connect":
                port.connect(sock, path)
            else:
                port.sendto(sock, b"x", path)
        # Nothing was started: the socket still works.
        with pytest.raises(TimeoutError):
            port.get(timeout=0.05)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # backend: a name only
@given(length=st.integers(min_value=0, max_value=4096), abstract=st.booleans())
def test_any_unix_path_length_is_accepted_or_refused_never_overrun(
        backend: str, length: int, abstract: bool) -> None:
    """A hostile length either fits (and the OS answers) or is a ValueError at the call."""
    with portio.open_port(backend) as port, \
            socket.socket(AF_UNIX, socket.SOCK_DGRAM) as sock:
        port.register(sock)
        path = ("\0" if abstract else "/nonexistent/") + "p" * length
        fits = len(path.encode()) <= SUN_PATH_MAX
        try:
            op = port.sendto(sock, b"x", path)
        except ValueError:
            assert not fits
            return
        assert fits
        completion = port.get(timeout=WAIT)
        assert completion.op is op
        # No such socket: the OS refuses (the path never exists); a fitting abstract name
        # nobody bound is refused too.
        assert completion.error is not None


def test_the_encoder_never_returns_more_than_a_sockaddr_storage() -> None:
    assert len(_sockaddr.encode(AF_UNIX, "p" * (SUN_PATH_MAX - 1))) \
        <= _sockaddr.SOCKADDR_MAX
    with pytest.raises(ValueError, match="sockaddr_storage"):
        _sockaddr.encode(AF_UNIX, "p" * 20_000)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="io_uring is Linux-only")
def test_io_urings_address_buffer_is_what_the_encoder_assumes() -> None:
    if portio.backend_status()["io_uring"] is not None:
        pytest.skip(f"io_uring is unavailable here: {portio.backend_status()['io_uring']}")
    from portio.backends import uring

    assert len(uring._ffi.new("struct pio_msg *").addr) == _sockaddr.SOCKADDR_MAX


def test_a_unix_path_that_fits_still_works(port: portio.CompletionPort, tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with socket.socket(AF_UNIX, socket.SOCK_DGRAM) as server, \
            socket.socket(AF_UNIX, socket.SOCK_DGRAM) as client:
        server.bind(path)
        port.register(client)
        op = port.sendto(client, b"hello", path)
        completion = port.get(timeout=WAIT)
        assert completion.op is op and completion.error is None
        assert server.recv(16) == b"hello"
