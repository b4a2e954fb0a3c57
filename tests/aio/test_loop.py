"""portio.asyncio's own promises, on every backend: the entry points (loop_factory, policy,
backend choice), the file helpers, signals, sendfile through the port, and the clear
NotImplementedError for what a proactor cannot do."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import portio
import portio.asyncio
from portio.asyncio import PortioEventLoop
from tests.conftest import backends_under_test

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=backends_under_test())
def loop(request: pytest.FixtureRequest) -> Iterator[PortioEventLoop]:
    event_loop = portio.asyncio.new_event_loop(request.param)
    try:
        yield event_loop
    finally:
        event_loop.close()


def test_new_event_loop_uses_the_named_backend(loop: PortioEventLoop) -> None:
    assert loop.port.backend == loop.backend
    assert loop.backend in portio.available_backends()
    assert not loop.port.closed


def test_close_closes_the_port() -> None:
    event_loop = portio.asyncio.new_event_loop()
    event_loop.close()
    assert event_loop.port.closed
    event_loop.close()  # twice is fine, as for asyncio's loops


def test_unknown_backend_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        portio.asyncio.new_event_loop("no-such-backend")


def test_policy_makes_portio_loops(request: pytest.FixtureRequest) -> None:
    backend = backends_under_test()[-1]
    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(portio.asyncio.EventLoopPolicy(backend))
    request.addfinalizer(lambda: asyncio.set_event_loop_policy(old))

    async def main() -> tuple[type, str]:
        running = asyncio.get_running_loop()
        assert isinstance(running, PortioEventLoop)
        return type(running), running.backend

    assert asyncio.run(main()) == (PortioEventLoop, backend)


def test_loop_factory_on_python_3_12_and_later() -> None:
    """``asyncio.run(main(), loop_factory=...)`` in a fresh interpreter (3.12+ has the
    argument); the program is plain asyncio: a server, a client, a timer."""
    if sys.version_info < (3, 12):
        pytest.skip(f"asyncio.run(loop_factory=) is new in Python 3.12; this is "
                    f"{sys.version_info[0]}.{sys.version_info[1]} (the policy test covers it)")
    program = (
        "import asyncio, portio.asyncio\n"
        "async def echo(r, w):\n"
        "    w.write(await r.read(100)); await w.drain(); w.close()\n"
        "async def main():\n"
        "    srv = await asyncio.start_server(echo, '127.0.0.1', 0)\n"
        "    r, w = await asyncio.open_connection(*srv.sockets[0].getsockname())\n"
        "    w.write(b'ping'); await asyncio.sleep(0.01)\n"
        "    data = await r.read(100); w.close(); srv.close()\n"
        "    return type(asyncio.get_running_loop()).__name__, data\n"
        "print(asyncio.run(main(), loop_factory=portio.asyncio.new_event_loop))\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "('PortioEventLoop', b'ping')"


def test_call_soon_threadsafe_wakes_a_sleeping_loop(loop: PortioEventLoop) -> None:
    async def main() -> int:
        future: asyncio.Future[int] = loop.create_future()
        timer = threading.Timer(0.05, loop.call_soon_threadsafe, (future.set_result, 7))
        timer.start()
        try:
            # no timer of the loop's own would wake it: only the post from the other thread
            return await asyncio.wait_for(future, 10)
        finally:
            timer.join()

    assert loop.run_until_complete(main()) == 7


def test_signal_handler_runs_on_the_loop(loop: PortioEventLoop) -> None:
    if sys.platform == "win32":
        pytest.skip("Windows has no POSIX signals (add_signal_handler raises NotImplementedError)")
    got: list[tuple[int, int]] = []

    async def main() -> None:
        done = loop.create_future()

        def handler(value: int) -> None:
            got.append((value, threading.get_ident()))
            done.set_result(None)

        loop.add_signal_handler(signal.SIGUSR1, handler, 5)
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.wait_for(done, 10)
        assert loop.remove_signal_handler(signal.SIGUSR1)
        assert not loop.remove_signal_handler(signal.SIGUSR1)

    loop.run_until_complete(main())
    assert got == [(5, threading.get_ident())]
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_signal_handler_rejects_bad_input(loop: PortioEventLoop) -> None:
    if sys.platform == "win32":
        pytest.skip("Windows has no POSIX signals (add_signal_handler raises NotImplementedError)")
    async def coroutine() -> None:
        """A coroutine function: not a valid handler."""

    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, coroutine)
    with pytest.raises(ValueError, match="invalid signal"):
        loop.add_signal_handler(0, print)
    with pytest.raises(RuntimeError, match="cannot be caught"):
        loop.add_signal_handler(signal.SIGKILL, print)


def test_file_read_and_write_go_through_the_port(loop: PortioEventLoop,
                                                 tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"0123456789")

    async def main() -> tuple[bytes | int, bytes | int, int, bytes | int, bytes]:
        with portio.open_file(path, "r+b") as file:
            head = await portio.asyncio.read(file, 4, 0)
            buffer = bytearray(3)
            count = await portio.asyncio.read(file, buffer, 7)
            wrote = await portio.asyncio.write(file, b"AB", 2)
            past_end = await portio.asyncio.read(file, 4, 100)
            return head, count, wrote, past_end, bytes(buffer)

    assert loop.run_until_complete(main()) == (b"0123", 3, 2, b"", b"789")
    assert path.read_bytes() == b"01AB456789"


def test_file_helpers_need_a_portio_loop(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"x")

    async def main() -> None:
        with portio.open_file(path) as file:
            await portio.asyncio.read(file, 1, 0)

    standard = asyncio.new_event_loop()
    try:
        with pytest.raises(TypeError, match="needs a running PortioEventLoop"):
            standard.run_until_complete(main())
    finally:
        standard.close()


@pytest.mark.skipif(sys.platform == "win32",
                    reason="Windows: a CRT descriptor is no overlapped HANDLE, asyncio falls back")
def test_sock_sendfile_uses_the_port_not_the_fallback(loop: PortioEventLoop,
                                                      tmp_path: Path) -> None:
    payload = os.urandom(600_000)  # more than one 256 KiB chunk
    path = tmp_path / "payload"
    path.write_bytes(payload)

    async def main() -> tuple[int, bytes, int]:
        a, b = socket.socketpair()
        with a, b, path.open("rb") as file:
            receiving = loop.create_task(_receive_all(loop, b, len(payload) - 1000))
            sent = await loop.sock_sendfile(a, file, 1000, fallback=False)
            return sent, await receiving, file.tell()

    sent, received, position = loop.run_until_complete(main())
    assert sent == len(payload) - 1000
    assert received == payload[1000:]
    assert position == len(payload)


async def _receive_all(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                       size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = await loop.sock_recv(sock, 65536)
        assert chunk, "end of stream before every byte arrived"
        chunks += chunk
    return bytes(chunks)


def test_readiness_callbacks_are_not_implemented(loop: PortioEventLoop) -> None:
    with socket.socket() as sock:
        for call in (lambda: loop.add_reader(sock, print),
                     lambda: loop.add_writer(sock, print),
                     lambda: loop.remove_reader(sock),
                     lambda: loop.remove_writer(sock)):
            with pytest.raises(NotImplementedError, match="proactor"):
                call()


@pytest.mark.skipif(sys.platform == "win32", reason="os.pipe gives CRT descriptors on Windows")
def test_pipes_that_are_not_sockets_are_not_implemented(loop: PortioEventLoop) -> None:
    read_fd, write_fd = os.pipe()
    with open(read_fd, "rb", buffering=0) as reader, open(write_fd, "wb", buffering=0), \
            pytest.raises(NotImplementedError, match="sockets only"):
        loop.run_until_complete(loop.connect_read_pipe(asyncio.Protocol, reader))


def test_flags_are_not_implemented(loop: PortioEventLoop) -> None:
    a, b = socket.socketpair()
    with a, b, pytest.raises(NotImplementedError, match="flags"):
        loop._proactor.recv(a, 10, socket.MSG_PEEK)


@pytest.mark.skipif(sys.platform == "win32", reason="subprocess pipes need POSIX socketpairs")
def test_subprocess_pipes_are_socketpairs(loop: PortioEventLoop) -> None:
    async def main() -> tuple[bytes, bytes, int]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c",
            "import sys; data = sys.stdin.buffer.read(); sys.stdout.buffer.write(data[::-1]);"
            " sys.stderr.write('err'); sys.exit(3)",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(b"abc" * 1000), 60)
        return out, err, await process.wait()

    assert loop.run_until_complete(main()) == (b"cba" * 1000, b"err", 3)


def test_unix_stream_server_and_client(loop: PortioEventLoop, tmp_path: Path) -> None:
    if sys.platform == "win32":
        pytest.skip("CPython on Windows has no AF_UNIX")
    path = str(tmp_path / "sock")

    async def main() -> bytes:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write((await reader.readline()).upper())
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(echo, path)
        async with server:
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"over a unix socket\n")
            line: bytes = await reader.readline()
            writer.close()
            await writer.wait_closed()
            return line

    assert loop.run_until_complete(main()) == b"OVER A UNIX SOCKET\n"


def test_pending_operations_are_cancelled_at_close() -> None:
    event_loop = portio.asyncio.new_event_loop()
    a, b = socket.socketpair()
    with a, b:
        future = event_loop._proactor.recv(a, 10)
        event_loop.close()
        assert future.cancelled()
        # the socket is still the user's, and still works
        b.send(b"x")
        a.setblocking(True)
        assert a.recv(1) == b"x"


def test_readme_example_runs_unchanged(tmp_path: Path) -> None:
    """The README's asyncio section runs as written (on the default backend)."""
    text = (ROOT / "README.md").read_text()
    start = text.index("## portio as an asyncio loop")
    block = text[text.index("```python", start) + len("```python"):]
    block = block[:block.index("```")]
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                          timeout=60, check=False, cwd=tmp_path)  # the installed portio
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "b'hello, portio'"


def test_windows_says_what_it_cannot_do(loop: PortioEventLoop) -> None:
    if sys.platform != "win32":
        pytest.skip("Windows only: POSIX has signals and socketpair subprocess pipes")
    with pytest.raises(NotImplementedError, match="Windows"):
        loop.add_signal_handler(2, print)

    async def spawn() -> None:
        await asyncio.create_subprocess_exec(sys.executable, "-c", "pass",
                                             stdout=asyncio.subprocess.PIPE)

    with pytest.raises(NotImplementedError, match="pipes on Windows"):
        loop.run_until_complete(spawn())


def test_nested_run_is_refused_and_the_loop_keeps_working(loop: PortioEventLoop) -> None:
    async def nested() -> str:
        inner = asyncio.sleep(0)
        try:
            loop.run_until_complete(inner)
        except RuntimeError as exc:
            inner.close()
            return str(exc)
        return "nested run accepted"

    assert loop.run_until_complete(nested()) == "This event loop is already running"
    # the outer run's wake-ups still work afterwards
    assert loop.run_until_complete(
        asyncio.wait_for(loop.run_in_executor(None, lambda: 3), 10)) == 3
