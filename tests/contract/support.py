"""Small helpers the contract tests share."""

from __future__ import annotations

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
