"""A state machine that races receives against cancels, timeouts and posts on one stream, with
a byte string as the oracle: whatever the interleaving, the bytes delivered are a prefix of the
bytes the peer sent (nothing lost, duplicated or reordered), every operation completes exactly
once, and at the end the rest of the stream is still there to read.
"""

from __future__ import annotations

import socket
import unittest

from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import portio
from tests.conftest import backends_under_test

from .loopback import WAIT, tcp_pair


class StreamMachine(RuleBasedStateMachine):
    backend = "selector"  # replaced per backend below

    def __init__(self) -> None:
        super().__init__()
        self.port = portio.open_port(self.backend)
        self.ours, self.peer = tcp_pair()
        self.port.register(self.ours, "stream")
        self.sent = bytearray()  # the oracle: everything the peer sent
        self.received = bytearray()  # everything delivered through the port, in order
        self.pending: list[portio.Operation] = []
        # Receives into a caller's buffer complete with a count: the buffer holds the bytes.
        self.buffers: dict[portio.Operation, bytearray] = {}
        self.posts_expected = 0

    def take(self, completion: portio.Completion) -> None:
        if completion.kind == "post":
            assert self.posts_expected > 0, "a post came out twice"
            self.posts_expected -= 1
            return
        op = completion.op
        assert op in self.pending, f"{completion!r} completed twice or was never started"
        self.pending.remove(op)
        if completion.error is None:
            assert completion.result, "end of stream while the peer is still open"
            self.received += completion.result
        else:
            assert isinstance(completion.error, (portio.OperationCancelled, TimeoutError)), \
                completion
            assert completion.nbytes == 0

    @rule(data=st.binary(min_size=1, max_size=2048))
    def peer_sends(self, data: bytes) -> None:
        self.peer.sendall(data)
        self.sent += data

    @rule(size=st.integers(1, 4096),
          timeout=st.none() | st.floats(0, 0.01) | st.just(60.0),
          into_buffer=st.booleans())
    def start_recv(self, size: int, timeout: float | None, into_buffer: bool) -> None:
        if into_buffer:
            buffer = bytearray(size)
            op = self.port.recv(self.ours, buffer, timeout=timeout)
            self.pending.append(op)
            self.buffers[op] = buffer
        else:
            self.pending.append(self.port.recv(self.ours, size, timeout=timeout))

    # No precondition on what is pending: which operations are still pending depends on the
    # OS's timing (a collect with wait 0 reaps what the kernel finished), and Hypothesis needs
    # the choice of rules to be reproducible.
    @rule(which=st.integers(0, 1000))
    def cancel(self, which: int) -> None:
        if not self.pending:
            note("cancel: nothing pending")
            return
        op = self.pending[which % len(self.pending)]
        note(f"cancel {op!r}: {op.cancel()}")

    @rule(key=st.integers())
    def post(self, key: int) -> None:
        self.port.post(key)
        self.posts_expected += 1

    @rule(wait=st.sampled_from([0, 0.005, 0.05]))
    def collect(self, wait: float) -> None:
        for completion in self.port.get_many(16, timeout=wait):
            self.take(self.as_bytes(completion))

    def as_bytes(self, completion: portio.Completion) -> portio.Completion:
        buffer = self.buffers.pop(completion.op, None) if completion.op else None
        if buffer is not None and completion.error is None:
            assert completion.result == completion.nbytes
            completion.result = bytes(buffer[:completion.nbytes])
        return completion

    @invariant()
    def delivered_is_a_prefix_of_sent(self) -> None:
        assert self.sent.startswith(self.received), "bytes lost, duplicated or reordered"

    def teardown(self) -> None:
        try:
            for op in list(self.pending):
                op.cancel()
            while self.pending or self.posts_expected:
                self.take(self.as_bytes(self.port.get(timeout=WAIT)))
            self.peer.shutdown(socket.SHUT_WR)
            while True:
                op = self.port.recv(self.ours, 65536)
                completion = self.port.get(timeout=WAIT)
                assert completion.op is op and completion.error is None, completion
                if not completion.result:
                    break
                self.received += completion.result
            assert self.received == self.sent, "the stream lost bytes"
        finally:
            self.port.close()
            self.ours.close()
            self.peer.close()


def _cases() -> dict[str, type[unittest.TestCase]]:
    """One TestCase per backend under test, named after it."""
    cases: dict[str, type[unittest.TestCase]] = {}
    for name in backends_under_test():
        machine: type[StreamMachine] = type(
            f"StreamMachine_{name}", (StreamMachine,), {"backend": name})
        cases[f"TestStream_{name}"] = machine.TestCase
    return cases


# module globals, so pytest collects each once (a loop variable left behind would repeat one)
globals().update(_cases())
