"""Many sockets waiting at once: every backend serves them all, except where the OS caps one
wait (Windows' select(), under the selector backend); there the sockets past the cap are
refused one operation at a time, with the reason, and the port keeps serving the rest."""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Iterator
from typing import Any, cast

import pytest

import portio
from portio.bench.idle import raise_fd_limit
from tests.contract.support import complete_all

Pair = tuple[socket.socket, socket.socket]

#: More than Windows' select() takes in one set (512), so its cap is crossed on that backend.
WAITING = 600
#: What the selector backend may wait on at once under Windows (the wakeup socket is one).
WINDOWS_SELECT_CAP = 511


@pytest.fixture
def cap(port: portio.CompletionPort, backend: str) -> int | None:
    """How many sockets ``port`` may wait on at once, or None for no cap.  The selector backend
    elsewhere has no cap either; it is given one (its only tuning knob for this, private) so
    that the same refusal runs on every OS, not only under Windows."""
    if backend != "selector":
        return None
    if sys.platform == "win32":
        return WINDOWS_SELECT_CAP
    cast(Any, port)._watch_limit = WAITING // 2
    return WAITING // 2


def expect_refused(cap: int | None) -> int:
    return 0 if cap is None else WAITING - cap


def completed_at_once(port: portio.CompletionPort) -> list[portio.Completion]:
    """What completes without any I/O: a refusal is a completion at once; waiting is not."""
    completions: list[portio.Completion] = []
    while batch := port.get_many(timeout=0.2):
        completions += batch
    return completions


@pytest.fixture
def pairs(port: portio.CompletionPort) -> Iterator[list[Pair]]:
    """WAITING connected socket pairs, the first of each registered with ``port``."""
    if raise_fd_limit(2 * WAITING + 64) < 2 * WAITING + 64:
        pytest.skip(f"needs {2 * WAITING + 64} descriptors; this process may not have them")
    made: list[Pair] = []
    try:
        for _ in range(WAITING):
            ours, peer = socket.socketpair()
            made.append((ours, peer))
            port.register(ours)
        yield made
    finally:
        for ours, peer in made:
            ours.close()
            peer.close()


def test_more_waiting_sockets_than_select_takes(port: portio.CompletionPort, cap: int | None,
                                               pairs: list[Pair]) -> None:
    ops = [port.recv(ours, 16, data=i) for i, (ours, _) in enumerate(pairs)]
    refused = completed_at_once(port)
    assert len(refused) == expect_refused(cap), [c.error for c in refused[:3]]
    for completion in refused:
        assert isinstance(completion.error, OSError)
        assert completion.error.errno == errno.EMFILE
        assert "FD_SETSIZE" in str(completion.error)
    waiting = {op.data for op in ops} - {c.data for c in refused}
    for i in waiting:
        pairs[i][1].sendall(b"%d" % i)
    served = complete_all(port, len(waiting))
    assert {c.data for c in served} == waiting
    assert all(c.error is None and c.result == b"%d" % c.data for c in served)


def test_a_refused_socket_is_served_once_others_stop_waiting(
        port: portio.CompletionPort, backend: str, cap: int | None, pairs: list[Pair]) -> None:
    if cap is None:
        pytest.skip(f"{backend} has no cap on waiting sockets to cross")
    ops = [port.recv(ours, 16, data=i) for i, (ours, _) in enumerate(pairs)]
    refused = completed_at_once(port)
    assert len(refused) == expect_refused(cap)
    refused_data = {c.data for c in refused}
    for op in [op for op in ops if op.data not in refused_data][:len(refused)]:
        op.cancel()  # frees as many places as were refused
    cancelled = complete_all(port, len(refused))
    assert all(isinstance(c.error, portio.OperationCancelled) for c in cancelled)
    retried = [port.recv(pairs[c.data][0], 16, data=c.data) for c in refused]
    for c in refused:
        pairs[c.data][1].sendall(b"again")
    served = complete_all(port, len(retried))
    assert sorted(c.data for c in served) == sorted(c.data for c in refused)
    assert all(c.error is None and c.result == b"again" for c in served)
