"""Generated arguments thrown at the whole public API.

The only claim checked is the contract's promise about input: every call either raises a
documented exception at once (``TypeError``, ``ValueError`` and its subclasses ``PortClosed`` and
``io.UnsupportedOperation``; ``TimeoutError`` from ``get``) or returns a valid result, and every
:class:`~portio.Operation` it returns then completes exactly once (we cancel it and collect it).
After a sequence of such calls the port still serves posts, and the TCP handle still echoes if
it was not closed.

Generated values include what once slipped through (``address=None``, offsets beyond 2**63,
absurd and unopened descriptor numbers); see ``test_bad_input.py`` for their named cases.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import portio

from .loopback import WAIT, World, complete, open_world

HANDLE_NAMES = ["tcp", "udp", "file", "pipe_r", "loose", "closed", "listener"]
NOT_INT = st.one_of(st.none(), st.text(max_size=3), st.floats(allow_nan=True),
                    st.just(object()), st.just(b"\x00"))
#: Ints as junk are negative or far above any descriptor this process has open: a small
#: positive int could be a real descriptor (the port's own epoll fd, pytest's files), and
#: register + close_handle would close it under the test run.
JUNK = st.one_of(NOT_INT, st.booleans(), st.integers(-(1 << 70), -1),
                 st.integers(1 << 20, 1 << 70),
                 st.sampled_from([-1, -(1 << 31), -(1 << 63), 1 << 31, 1 << 63, 1 << 64]))

def _view(b: bytes) -> memoryview:
    return memoryview(b)


handles = st.one_of(st.sampled_from(HANDLE_NAMES).map(lambda n: ("named", n)),
                    JUNK.map(lambda v: ("value", v)))
sizes = st.one_of(
    st.integers(-5, 1 << 16),
    st.sampled_from([portio.MAX_IO_SIZE + 1, 1 << 40, -(1 << 40)]),  # refused before allocating
    st.binary(max_size=16),  # read-only
    st.binary(max_size=16).map(bytearray),
    st.binary(max_size=16).map(lambda b: memoryview(bytearray(b)).toreadonly()),
    JUNK,
)
payloads = st.one_of(st.binary(max_size=4096), st.binary(max_size=64).map(bytearray),
                     st.binary(max_size=64).map(_view), JUNK)
offsets = st.one_of(st.integers(-5, 1 << 70), st.sampled_from([1 << 63, (1 << 63) - 1]), NOT_INT,
                    st.booleans())
op_timeouts = st.one_of(st.none(), st.floats(-1, 5), st.just(float("nan")), st.text(max_size=2))
wait_timeouts = st.one_of(st.none(), st.floats(-1, 0.02), st.just(float("nan")), st.just("1"))
addresses = st.one_of(
    st.tuples(st.sampled_from(["127.0.0.1", "0.0.0.0"]), st.integers(-5, 70000)),
    st.tuples(st.just("127.0.0.1"), st.text(max_size=3)),
    st.tuples(st.just("127.0.0.1")),
    st.text(max_size=5), st.integers(), st.binary(max_size=4), st.none(),
)
callbacks = st.sampled_from([None, "record", 3])

calls = st.one_of(
    st.tuples(st.just("register"), handles, JUNK),
    st.tuples(st.just("accept"), handles, op_timeouts, callbacks),
    st.tuples(st.just("connect"), handles, addresses, op_timeouts, callbacks),
    st.tuples(st.just("recv"), handles, sizes, op_timeouts, callbacks),
    st.tuples(st.just("recvfrom"), handles, sizes, op_timeouts, callbacks),
    st.tuples(st.just("send"), handles, payloads, op_timeouts, callbacks),
    st.tuples(st.just("sendto"), handles, payloads, addresses, op_timeouts, callbacks),
    st.tuples(st.just("read"), handles, sizes, offsets, op_timeouts, callbacks),
    st.tuples(st.just("write"), handles, payloads, offsets, op_timeouts, callbacks),
    st.tuples(st.just("post"), JUNK, st.one_of(st.integers(-2, 1 << 33), JUNK)),
    st.tuples(st.just("get"), wait_timeouts),
    st.tuples(st.just("get_many"), st.one_of(st.integers(-2, 100), JUNK), wait_timeouts),
    st.tuples(st.just("dispatch"), wait_timeouts),
    st.tuples(st.just("close_handle"), handles),
)

DOCUMENTED = (TypeError, ValueError)  # PortClosed and io.UnsupportedOperation are ValueErrors


def resolve(world: World, handle: tuple[str, Any]) -> Any:
    kind, value = handle
    return getattr(world, value) if kind == "named" else value


def perform(world: World, call: tuple[Any, ...], ran: list[portio.Completion]) -> object:
    """Make the generated call; returns what it returned (exceptions propagate)."""
    port = world.port
    name, *args = call

    def cb(value: Any) -> Any:
        return ran.append if value == "record" else value

    if name == "register":
        return port.register(resolve(world, args[0]), args[1])
    if name == "post":
        return port.post(args[0], nbytes=args[1])
    if name == "get":
        return port.get(timeout=args[0] if args[0] is not None else 0)
    if name == "get_many":
        return port.get_many(args[0], timeout=args[1] if args[1] is not None else 0)
    if name == "dispatch":
        return port.dispatch(timeout=args[0] if args[0] is not None else 0)
    if name == "close_handle":
        target = resolve(world, args[0])
        port.close_handle(target)
        if target is world.pipe_r:
            world.released.add(world.pipe_r)
        return None
    target = resolve(world, args[0])
    *middle, timeout, callback = args[1:]
    method = getattr(port, name)
    result: object = method(target, *middle, timeout=timeout, callback=cb(callback))
    return result


def settle(world: World, op: portio.Operation, ran: list[portio.Completion]) -> None:
    """Cancel ``op`` and collect its one completion (from get, or its callback via dispatch)."""
    op.cancel()
    if op.callback is not None:
        before = len(ran)
        while not any(c.op is op for c in ran[before:]):
            assert world.port.dispatch(timeout=WAIT) > 0, f"{op!r} never reached its callback"
        got = [c for c in ran if c.op is op]
    else:
        got = []
        while not got:
            completion = world.port.get(timeout=WAIT)  # TimeoutError here: op never completed
            if completion.op is op:
                got.append(completion)
            else:  # an earlier post or completion still queued: fine, but never our op twice
                assert completion.op is None or completion.op.done
    assert len(got) == 1 and op.done
    error = got[0].error
    assert error is None or isinstance(error, OSError), error


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sequence=st.lists(calls, min_size=1, max_size=6))
def test_generated_calls_get_documented_answers(backend: str,
                                                sequence: list[tuple[Any, ...]]) -> None:
    with portio.open_port(backend) as port, tempfile.TemporaryDirectory() as directory, \
            open_world(port, Path(directory)) as world:
        ran: list[portio.Completion] = []
        for call in sequence:
            note(f"call {call!r}")
            try:
                answer = perform(world, call, ran)
            except TimeoutError:
                assert call[0] == "get", call  # only get reports an empty wait by raising
                continue
            except DOCUMENTED as exc:
                note(f"  raised {exc!r}")
                continue
            note(f"  returned {answer!r}")
            if isinstance(answer, portio.Operation):
                assert answer.kind == call[0]
                settle(world, answer, ran)
            elif call[0] in ("get_many",):
                assert isinstance(answer, list)
            elif call[0] == "dispatch":
                assert isinstance(answer, int) and answer >= 0
            elif call[0] == "get":
                assert isinstance(answer, portio.Completion)
            else:
                assert answer is None
        # The port still works after whatever was thrown at it.
        port.get_many(1000, timeout=0)
        port.dispatch(timeout=0)
        port.post("after", nbytes=1)
        assert port.get(timeout=WAIT).key == "after"
        if world.tcp.fileno() != -1:
            assert complete(port, port.send(world.tcp, b"still")).error is None
            echoed = b""
            while not echoed.endswith(b"still"):  # after whatever the generated sends sent
                echoed += world.peer.recv(65536)
