"""A Hypothesis state machine per backend, with byte strings as the oracle.

Random interleavings of sends and receives of random sizes, posts, cancels and timeouts on one
TCP connection.  Invariants: every operation and post completes exactly once; the bytes each
side receives are, in order, exactly a prefix of what the other side sent (nothing lost,
duplicated or reordered); at the end, once everything is drained, the prefixes are complete.
"""

from __future__ import annotations

import socket

import pytest
from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import portio
from tests.conftest import backends_under_test

DRAIN_WAIT = 5.0


class StreamMachine(RuleBasedStateMachine):
    backend = "selector"

    def __init__(self) -> None:
        super().__init__()
        self.port = portio.open_port(self.backend)
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            self.peer = socket.create_connection(server.getsockname(), timeout=DRAIN_WAIT)
            self.ours, _ = server.accept()
        self.peer.settimeout(DRAIN_WAIT)
        self.port.register(self.ours, "ours")
        self.peer_sent = bytearray()       # the stream towards us
        self.peer_received = bytearray()   # what the peer has read of the stream from us
        self.recvs: list[portio.Operation] = []   # in start order
        self.sends: list[tuple[portio.Operation, bytes]] = []
        self.results: dict[portio.Operation, portio.Completion] = {}
        self.posts_started = 0
        self.posts_seen: list[int] = []

    @initialize()
    def start(self) -> None:
        note(f"backend {self.backend}")

    # ------------------------------------------------------------------ rules
    @rule(data=st.binary(min_size=1, max_size=3000))
    def peer_sends(self, data: bytes) -> None:
        self.peer.sendall(data)
        self.peer_sent += data

    @rule(size=st.integers(1, 5000),
          timeout=st.one_of(st.none(), st.floats(0.0, 0.05)),
          as_buffer=st.booleans())
    def start_recv(self, size: int, timeout: float | None, as_buffer: bool) -> None:
        target = bytearray(size) if as_buffer else size
        op = self.port.recv(self.ours, target, data=target, timeout=timeout)
        self.recvs.append(op)

    @rule(data=st.binary(min_size=0, max_size=200_000), timeout=st.one_of(st.none(),
                                                                          st.floats(0.0, 0.05)))
    def start_send(self, data: bytes, timeout: float | None) -> None:
        self.sends.append((self.port.send(self.ours, data, timeout=timeout), data))

    @precondition(lambda self: self.recvs or self.sends)
    @rule(index=st.integers(0, 1000))
    def cancel_one(self, index: int) -> None:
        # Chosen among every operation started (a list that does not depend on timing); one
        # that already completed must simply refuse the cancel.
        started = self.recvs + [op for op, _ in self.sends]
        op = started[index % len(started)]
        note(f"cancel {op!r}")
        if not op.cancel():
            assert op.done

    @rule()
    def post(self) -> None:
        self.port.post("post", nbytes=self.posts_started)
        self.posts_started += 1

    @rule(wait=st.sampled_from([0.0, 0.02]))
    def drain(self, wait: float) -> None:
        for completion in self.port.get_many(timeout=wait):
            self.record(completion)

    @rule()
    def peer_reads(self) -> None:
        self.peer.setblocking(False)
        try:
            while chunk := self.peer.recv(1 << 20):
                self.peer_received += chunk
        except BlockingIOError:
            pass
        finally:
            self.peer.settimeout(DRAIN_WAIT)

    # ------------------------------------------------------------------ the oracle
    def pending(self) -> list[portio.Operation]:
        ops = self.recvs + [op for op, _ in self.sends]
        return [op for op in ops if op not in self.results]

    def record(self, completion: portio.Completion) -> None:
        if completion.kind == "post":
            self.posts_seen.append(completion.nbytes)
            return
        op = completion.op
        assert op is not None
        assert op not in self.results, f"{op!r} completed twice"
        assert completion.key == "ours"
        self.results[op] = completion

    def received_stream(self) -> bytes:
        """Bytes delivered to the receives that completed, up to the first still pending."""
        out = bytearray()
        for op in self.recvs:
            completion = self.results.get(op)
            if completion is None:
                break
            if completion.error is None:
                assert completion.result, "unexpected end of stream"
                if isinstance(completion.result, int):
                    out += completion.data[: completion.result]
                else:
                    out += completion.result
            else:
                assert isinstance(completion.error, (portio.OperationCancelled, TimeoutError)), \
                    completion.error
        return bytes(out)

    def sent_stream(self) -> bytes:
        """What we can have sent: every send in start order, cut where one was cut short."""
        out = bytearray()
        for op, data in self.sends:
            completion = self.results.get(op)
            if completion is not None and completion.error is not None:
                assert isinstance(completion.error, (portio.OperationCancelled, TimeoutError))
                out += data[: completion.nbytes]
            else:
                out += data
        return bytes(out)

    @invariant()
    def bytes_in_order_nothing_invented(self) -> None:
        assert self.peer_sent.startswith(self.received_stream())
        # A send that finished but is not dequeued yet may have been cut short: how much it
        # sent is only known from its completion, so the outgoing side waits for it.
        if not any(op.done and op not in self.results for op, _ in self.sends):
            assert self.sent_stream().startswith(self.peer_received)

    @invariant()
    def posts_in_order_exactly_once(self) -> None:
        assert self.posts_seen == list(range(len(self.posts_seen)))

    # ------------------------------------------------------------------ the end
    def teardown(self) -> None:
        try:
            self.finish()
        finally:
            self.port.close()
            self.ours.close()
            self.peer.close()

    def finish(self) -> None:
        for op in self.pending():
            op.cancel()
        # Every send may still need the peer to read for it to complete: read as we drain.
        while self.pending() or len(self.posts_seen) < self.posts_started:
            self.peer_reads()
            completions = self.port.get_many(timeout=0.05)
            for completion in completions:
                self.record(completion)
            if not completions and not self.pending():
                completion = self.port.get(timeout=DRAIN_WAIT)
                self.record(completion)
        assert all(op.done for op in self.recvs)
        # Whatever no receive took is still in the socket, in order, after what they took.
        received = self.received_stream()
        rest = len(self.peer_sent) - len(received)
        while rest > 0:
            op = self.port.recv(self.ours, rest)
            completion = self.port.get(timeout=DRAIN_WAIT)
            assert completion.op is op and completion.error is None and completion.result
            received += completion.result
            rest -= len(completion.result)
        assert received == bytes(self.peer_sent)
        expected = self.sent_stream()
        self.peer.settimeout(DRAIN_WAIT)
        while len(self.peer_received) < len(expected):
            chunk = self.peer.recv(1 << 20)
            assert chunk, "our stream ended early"
            self.peer_received += chunk
        assert bytes(self.peer_received) == expected


@pytest.mark.parametrize("backend", backends_under_test())
def test_stream_machine(backend: str) -> None:
    machine = type(f"StreamMachine_{backend}", (StreamMachine,), {"backend": backend})
    run_state_machine_as_test(machine)
