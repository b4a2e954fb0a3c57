"""Small helpers the contract tests share."""

from __future__ import annotations

import functools
import sys

import pytest

import portio

#: Upper bound for any single wait in a test: long enough for a loaded CI machine, short enough
#: that a hang fails fast instead of stalling the run.
WAIT = 10.0


def complete(port: portio.CompletionPort, op: portio.Operation) -> portio.Completion:
    """Dequeue completions until ``op``'s arrives; fail if another one shows up."""
    completion = port.get(timeout=WAIT)
    assert completion.op is op, f"expected {op!r}, dequeued {completion!r}"
    return completion


def complete_all(port: portio.CompletionPort, count: int) -> list[portio.Completion]:
    """Exactly ``count`` completions, in dequeue order."""
    return [port.get(timeout=WAIT) for _ in range(count)]


def recv_exactly(port: portio.CompletionPort, sock: object, size: int) -> bytes:
    """Receive ``size`` bytes through the port, one recv at a time."""
    chunks = bytearray()
    while len(chunks) < size:
        completion = complete(port, port.recv(sock, size - len(chunks)))
        assert completion.error is None, completion.error
        assert completion.result, "unexpected end of stream"
        chunks += completion.result
    return bytes(chunks)


@functools.cache
def running_on_wine() -> bool:
    """True under Wine, whose ntdll exports ``wine_get_version`` (Windows' does not)."""
    if sys.platform != "win32":
        return False
    import ctypes

    return hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")


def xfail_if_wine_took_the_reset_for_end_of_stream(port: portio.CompletionPort,
                                                   completion: portio.Completion) -> None:
    """Under Wine only, the selector backend's recv after a peer's RST ends the stream.

    Wine 8's non-blocking ``recv`` returns ``b""`` there, where Windows reports WSAECONNRESET
    (10054), and the selector backend delivers what ``recv`` said.  Anywhere else, and for any
    other outcome, the caller's assertions stand.
    """
    if (port.backend == "selector" and running_on_wine() and completion.error is None
            and completion.result == b""):
        pytest.xfail("Wine 8: a non-blocking recv after the peer's RST returns b'' "
                     "(Windows: WSAECONNRESET)")
