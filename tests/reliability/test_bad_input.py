"""Bad input on every public method: each gets a specific exception at once, and neither the
port nor the handle it named is harmed (the next good call on both still works).

Every call runs in a thread with a time limit (``outcome_of``), so a call that hangs fails the
test instead of stalling the suite.
"""

from __future__ import annotations

import gc
import io
import math
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import portio

from .loopback import WAIT, World, assert_nothing_queued, complete, open_world, outcome_of


@pytest.fixture
def world(port: portio.CompletionPort, tmp_path: Path) -> Iterator[World]:
    with open_world(port, tmp_path) as w:
        yield w


def still_works(w: World) -> None:
    """The port and every registered handle still serve a good call."""
    port = w.port
    assert_nothing_queued(port, 0.05)  # a refused call must not leave a completion behind
    port.post("alive", nbytes=7)
    posted = port.get(timeout=WAIT)
    assert (posted.key, posted.kind, posted.nbytes) == ("alive", "post", 7)
    assert complete(port, port.send(w.tcp, b"ping")).error is None
    assert w.peer.recv(100) == b"ping"
    w.peer.sendall(b"pong")
    assert complete(port, port.recv(w.tcp, 100)).result == b"pong"
    sent = complete(port, port.sendto(w.udp, b"dgram", w.udp.getsockname()))
    assert sent.error is None, sent
    assert complete(port, port.recvfrom(w.udp, 100)).result[0] == b"dgram"
    assert complete(port, port.write(w.file, b"abc", 0)).error is None
    assert complete(port, port.read(w.file, 10, 0)).result == b"abc"




def bad(value: object) -> Any:
    """``value``, deliberately passed where the signature wants another type."""
    return value




def unopened_fd() -> int:
    """A descriptor number this process certainly has not open: on POSIX the highest it may
    use; on Windows (no descriptor limit) the value of a HANDLE just closed."""
    if sys.platform == "win32":
        import _winapi

        read_end, write_end = _winapi.CreatePipe(None, 0)
        _winapi.CloseHandle(read_end)
        _winapi.CloseHandle(write_end)
        return read_end
    import resource

    fd: int = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1
    with pytest.raises(OSError):
        os.fstat(fd)
    return fd


Call = Callable[[World], object]
R = "readonly"


def case(name: str, call: Call, expected: type[BaseException]) -> Any:
    return pytest.param(call, expected, id=name)


CASES = [
    # register
    case("register-str", lambda w: w.port.register("sock"), TypeError),
    case("register-none", lambda w: w.port.register(None), TypeError),
    case("register-float", lambda w: w.port.register(3.5), TypeError),
    case("register-bool", lambda w: w.port.register(True), TypeError),
    case("register-negative-fd", lambda w: w.port.register(-1), ValueError),
    case("register-absurd-fd", lambda w: w.port.register(1 << 40), ValueError),
    case("register-unopened-fd", lambda w: w.port.register(unopened_fd()), ValueError),
    case("register-twice", lambda w: w.port.register(w.tcp), ValueError),
    case("register-closed-socket", lambda w: w.port.register(w.closed), ValueError),
    # recv / recvfrom
    case("recv-unregistered", lambda w: w.port.recv(w.loose, 10), ValueError),
    case("recv-closed-handle", lambda w: w.port.recv(w.closed, 10), ValueError),
    case("recv-bytes-buffer", lambda w: w.port.recv(w.tcp, b"readonly"), TypeError),
    case("recv-readonly-view", lambda w: w.port.recv(w.tcp, memoryview(bytearray(8)).toreadonly()),
         TypeError),
    case("recv-str", lambda w: w.port.recv(w.tcp, "10"), TypeError),
    case("recv-float", lambda w: w.port.recv(w.tcp, 1.5), TypeError),
    case("recv-bool", lambda w: w.port.recv(w.tcp, True), TypeError),
    case("recv-none", lambda w: w.port.recv(w.tcp, None), TypeError),
    case("recv-zero", lambda w: w.port.recv(w.tcp, 0), ValueError),
    case("recv-negative", lambda w: w.port.recv(w.tcp, -1), ValueError),
    case("recv-absurd", lambda w: w.port.recv(w.tcp, 1 << 40), ValueError),
    case("recv-empty-buffer", lambda w: w.port.recv(w.tcp, bytearray()), ValueError),
    case("recv-timeout-negative", lambda w: w.port.recv(w.tcp, 10, timeout=-1), ValueError),
    case("recv-timeout-nan", lambda w: w.port.recv(w.tcp, 10, timeout=math.nan), ValueError),
    case("recv-timeout-str", lambda w: w.port.recv(w.tcp, 10, timeout=bad("1")), TypeError),
    case("recv-callback-int", lambda w: w.port.recv(w.tcp, 10, callback=bad(3)), TypeError),
    case("recv-on-pipe", lambda w: w.port.recv(w.pipe_r, 10), ValueError),
    case("recv-on-file", lambda w: w.port.recv(w.file, 10), ValueError),
    case("recvfrom-readonly", lambda w: w.port.recvfrom(w.udp, b"x"), TypeError),
    case("recvfrom-negative", lambda w: w.port.recvfrom(w.udp, -5), ValueError),
    # send / sendto
    case("send-str", lambda w: w.port.send(w.tcp, "text"), TypeError),
    case("send-int", lambda w: w.port.send(w.tcp, 5), TypeError),
    case("send-none", lambda w: w.port.send(w.tcp, None), TypeError),
    case("send-list", lambda w: w.port.send(w.tcp, [1, 2]), TypeError),
    case("send-unregistered", lambda w: w.port.send(w.loose, b"x"), ValueError),
    case("send-closed-handle", lambda w: w.port.send(w.closed, b"x"), ValueError),
    case("send-timeout-negative", lambda w: w.port.send(w.tcp, b"x", timeout=-0.5), ValueError),
    case("sendto-str", lambda w: w.port.sendto(w.udp, "x", ("127.0.0.1", 9)), TypeError),
    case("sendto-address-str", lambda w: w.port.sendto(w.udp, b"x", "127.0.0.1"), TypeError),
    case("sendto-port-str", lambda w: w.port.sendto(w.udp, b"x", ("127.0.0.1", "9")), TypeError),
    case("sendto-port-huge", lambda w: w.port.sendto(w.udp, b"x", ("127.0.0.1", 70000)),
         ValueError),
    case("sendto-address-none", lambda w: w.port.sendto(w.udp, b"x", None), TypeError),
    # accept / connect
    case("accept-unregistered", lambda w: w.port.accept(w.loose), ValueError),
    case("accept-on-file", lambda w: w.port.accept(w.file), ValueError),
    case("connect-address-str", lambda w: w.port.connect(w.tcp, "localhost:80"), TypeError),
    case("connect-port-negative", lambda w: w.port.connect(w.tcp, ("127.0.0.1", -1)),
         ValueError),
    case("connect-unregistered", lambda w: w.port.connect(w.loose, ("127.0.0.1", 9)),
         ValueError),
    # read / write
    case("read-pipe", lambda w: w.port.read(w.pipe_r, 10, 0), io.UnsupportedOperation),
    case("write-pipe", lambda w: w.port.write(w.pipe_r, b"x", 0), io.UnsupportedOperation),
    case("read-socket", lambda w: w.port.read(w.tcp, 10, 0), io.UnsupportedOperation),
    case("read-offset-negative", lambda w: w.port.read(w.file, 10, -1), ValueError),
    case("read-offset-str", lambda w: w.port.read(w.file, 10, bad("0")), TypeError),
    case("read-offset-float", lambda w: w.port.read(w.file, 10, bad(0.0)), TypeError),
    case("read-readonly", lambda w: w.port.read(w.file, b"xx", 0), TypeError),
    case("read-size-absurd", lambda w: w.port.read(w.file, 1 << 33, 0), ValueError),
    case("write-str", lambda w: w.port.write(w.file, "x", 0), TypeError),
    case("write-offset-negative", lambda w: w.port.write(w.file, b"x", -3), ValueError),
    case("read-offset-absurd", lambda w: w.port.read(w.file, 10, 1 << 70), ValueError),
    # post and the waits
    case("post-nbytes-negative", lambda w: w.port.post(nbytes=-1), ValueError),
    case("post-nbytes-absurd", lambda w: w.port.post(nbytes=1 << 32), ValueError),
    case("post-nbytes-str", lambda w: w.port.post(nbytes=bad("1")), TypeError),
    case("get-timeout-negative", lambda w: w.port.get(timeout=-1), ValueError),
    case("get-timeout-str", lambda w: w.port.get(timeout=bad("1")), TypeError),
    case("get_many-zero", lambda w: w.port.get_many(0), ValueError),
    case("get_many-negative", lambda w: w.port.get_many(-3), ValueError),
    case("get_many-float", lambda w: w.port.get_many(bad(2.0)), TypeError),
    case("dispatch-timeout-nan", lambda w: w.port.dispatch(timeout=math.nan), ValueError),
    # close_handle
    case("close_handle-unregistered", lambda w: w.port.close_handle(w.loose), ValueError),
    case("close_handle-twice", lambda w: w.port.close_handle(w.closed), ValueError),
    case("close_handle-str", lambda w: w.port.close_handle("tcp"), TypeError),
]


@pytest.mark.parametrize(("call", "expected"), CASES)
def test_bad_call_raises_and_harms_nothing(world: World, call: Call,
                                           expected: type[BaseException]) -> None:
    outcome = outcome_of(lambda: call(world))
    assert isinstance(outcome, expected), f"expected {expected.__name__}, got {outcome!r}"
    still_works(world)


def test_connect_address_none_jams_nothing(world: World) -> None:
    """A connect refused for its address leaves nothing queued ahead of the next one."""
    with socket.socket() as sock, socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        world.port.register(sock)
        outcome = outcome_of(lambda: world.port.connect(sock, None))
        assert isinstance(outcome, TypeError)
        op = world.port.connect(sock, server.getsockname())
        try:
            completion = world.port.get(timeout=2)
        except TimeoutError:
            pytest.fail("the connect after the refused one never completed")
        assert completion.op is op and completion.error is None


# ---------------------------------------------------------------- a closed port
CLOSED_PORT_CALLS: list[tuple[str, Call]] = [
    ("register", lambda w: w.port.register(w.loose)),
    ("accept", lambda w: w.port.accept(w.tcp)),
    ("connect", lambda w: w.port.connect(w.tcp, ("127.0.0.1", 9))),
    ("recv", lambda w: w.port.recv(w.tcp, 10)),
    ("send", lambda w: w.port.send(w.tcp, b"x")),
    ("recvfrom", lambda w: w.port.recvfrom(w.udp, 10)),
    ("sendto", lambda w: w.port.sendto(w.udp, b"x", ("127.0.0.1", 9))),
    ("read", lambda w: w.port.read(w.file, 10, 0)),
    ("write", lambda w: w.port.write(w.file, b"x", 0)),
    ("post", lambda w: w.port.post("k")),
    ("get", lambda w: w.port.get(timeout=WAIT)),
    ("get-no-timeout", lambda w: w.port.get()),
    ("get_many", lambda w: w.port.get_many(timeout=WAIT)),
    ("dispatch", lambda w: w.port.dispatch()),
    ("close_handle", lambda w: w.port.close_handle(w.tcp)),
]


@pytest.mark.parametrize("call", [pytest.param(c, id=n) for n, c in CLOSED_PORT_CALLS])
def test_closed_port_refuses_everything(world: World, call: Call) -> None:
    world.port.close()
    outcome = outcome_of(lambda: call(world))
    assert isinstance(outcome, portio.PortClosed), outcome
    assert world.tcp.fileno() != -1  # closing the port closed no user handle
    world.port.close()  # idempotent


def test_cancel_after_close_and_twice(world: World) -> None:
    op = world.port.recv(world.tcp, 10)
    assert op.cancel() is True
    assert op.cancel() is False  # already completed
    assert isinstance(complete(world.port, op).error, portio.OperationCancelled)
    pending = world.port.recv(world.tcp, 10)
    world.port.close()
    assert outcome_of(pending.cancel) is False


def test_operations_after_close_handle(world: World) -> None:
    port = world.port
    op = port.recv(world.tcp, 10)
    port.close_handle(world.tcp)
    assert isinstance(complete(port, op).error, portio.OperationCancelled)
    for call in (lambda: port.recv(world.tcp, 10), lambda: port.send(world.tcp, b"x"),
                 lambda: port.close_handle(world.tcp), lambda: port.register(world.tcp)):
        assert isinstance(outcome_of(call), ValueError)
    assert_nothing_queued(port)


def test_file_after_close_handle(world: World) -> None:
    port = world.port
    port.close_handle(world.file)
    assert world.file.closed
    assert isinstance(outcome_of(lambda: port.read(world.file, 10, 0)), ValueError)
    assert isinstance(outcome_of(lambda: port.write(world.file, b"x", 0)), ValueError)


@pytest.mark.parametrize("bad", ["nope", 3])
def test_open_port_bad_backend(bad: object) -> None:
    expected = ValueError if isinstance(bad, str) else TypeError
    assert isinstance(outcome_of(lambda: portio.open_port(bad)), expected)  # type: ignore[arg-type]


@pytest.mark.parametrize(("mode", "expected"), [("a", ValueError), ("rt", ValueError),
                                                (5, TypeError)])
def test_open_file_bad_mode(tmp_path: Path, mode: Any, expected: type[Exception]) -> None:
    """The refusal is clean: the right exception and nothing reported by a finaliser later."""
    unraisable: list[object] = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        assert isinstance(outcome_of(lambda: portio.open_file(tmp_path / "x", mode)), expected)
        gc.collect()
    finally:
        sys.unraisablehook = old_hook
    assert not unraisable, unraisable
