"""The echo programs, run as real processes against every available backend and both models.

Every server is a subprocess on an ephemeral 127.0.0.1 port; every wait is bounded (socket and
subprocess timeouts), and every process started here is stopped (or killed) before its test
ends.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NoReturn, cast

import pytest

import portio
from portio.echo import (
    BUFFER_SIZE,
    STREAM_BUFFER_SIZE,
    EchoServer,
    IoData,
    StopFlag,
    format_address,
    open_listener,
    percentile,
)

HOST = "127.0.0.1"
IO_TIMEOUT = 30.0  # seconds any one socket operation may take before the test fails
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
READY = re.compile(r"^portio-echo ready on (\S+):(\d+) backend=(\S+) model=(\S+) threads=(\d+)")

POSIX_SIGNALS = pytest.mark.skipif(sys.platform == "win32",
                                   reason="sends SIGINT/SIGTERM, which Windows does not have")


class EchoProcess:
    """A ``portio-echo serve`` subprocess, started and waited for its ready line."""

    def __init__(self, *args: str) -> None:
        # A file, not a pipe: a chatty server must never block on a full stderr pipe.  It lives
        # as long as the process and is closed by close().
        self.stderr_file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "portio.echo", "serve", "--host", HOST, "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=self.stderr_file, text=True)
        self.ready_line = self._read_ready_line()
        match = READY.match(self.ready_line)
        assert match, f"unexpected ready line {self.ready_line!r}; stderr: {self.stderr()}"
        self.port = int(match.group(2))
        self.address = (HOST, self.port)

    def _read_ready_line(self) -> str:
        # A thread, not select(): that also works on Windows pipes.
        lines: list[str] = []
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        if not lines or not lines[0]:
            self.kill()
            pytest.fail(f"server printed no ready line within {START_TIMEOUT} s; "
                        f"stderr: {self.stderr()}")
        return lines[0].rstrip("\n")

    def connect(self) -> socket.socket:
        """A blocking client socket to the server, with a test-sized timeout."""
        sock = socket.create_connection(self.address, timeout=IO_TIMEOUT)
        return sock

    def stderr(self) -> str:
        """Everything the server wrote on stderr so far."""
        self.stderr_file.seek(0)
        return self.stderr_file.read().decode(errors="replace")

    def alive(self) -> bool:
        """True while the server process runs."""
        return self.proc.poll() is None

    def stop(self, signum: int = signal.SIGINT) -> int:
        """Send ``signum`` and wait for the exit code (killing it, and failing, if it hangs)."""
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"server did not exit within {STOP_TIMEOUT} s of {signum!r}; "
                        f"stderr: {self.stderr()}")

    def kill(self) -> None:
        """Make sure the process is gone (the last resort of a failing test)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    def close(self) -> None:
        """Stop the server if a test left it running; release the pipes."""
        if self.proc.poll() is None:
            if sys.platform == "win32":
                self.kill()
            else:
                self.stop()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr_file.close()


BACKENDS = portio.available_backends()
MODELS = ["port", "routine"]


@pytest.fixture(params=MODELS)
def server(backend: str, request: pytest.FixtureRequest) -> Iterator[EchoProcess]:
    """An echo server for one backend (conftest's ``backend`` fixture: every available one,
    or ``$PORTIO_BACKEND``) and one model."""
    proc = EchoProcess("--backend", backend, "--model", request.param)
    try:
        yield proc
    finally:
        proc.close()


def echo_round_trip(sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload`` from a thread while reading the echo here (a large payload would
    deadlock a client that sent everything before reading); return what came back."""
    errors: list[BaseException] = []

    def send() -> None:
        try:
            sock.sendall(payload)
        except BaseException as exc:
            errors.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        received = recv_exactly(sock, len(payload))
    finally:
        sender.join(IO_TIMEOUT)
    assert not errors, errors
    return received


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Read until ``size`` bytes arrived (fails on an early EOF)."""
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        assert chunk, f"EOF after {len(chunks)} of {size} bytes"
        chunks += chunk
    return bytes(chunks)


def assert_serving(server: EchoProcess) -> None:
    """The server still runs and still echoes."""
    assert server.alive(), server.stderr()
    with server.connect() as sock:
        assert echo_round_trip(sock, b"still there?") == b"still there?"


def run_client(server: EchoProcess, *args: str,
               stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """``portio-echo client`` against ``server``, bounded in time.

    Its input and output are files, not pipes: on this project's CI kernel, a pipe that carried
    tens of MiB sometimes dropped whole pages at a reader's read boundary (32 KiB holes in what
    ``communicate()`` got, while the client had written every byte), which made the
    line-client tests flaky for a reason outside portio.  Piped mode only needs a stdin that
    is not a terminal."""
    with tempfile.TemporaryFile() as stdin_file, tempfile.TemporaryFile() as stdout, \
            tempfile.TemporaryFile() as stderr:
        stdin_file.write(stdin or b"")
        stdin_file.seek(0)
        result = subprocess.run(
            [sys.executable, "-m", "portio.echo", "client", "--host", HOST,
             "--port", str(server.port), *args],
            stdin=stdin_file, stdout=stdout, stderr=stderr, check=False, timeout=90)
        stdout.seek(0)
        stderr.seek(0)
        return subprocess.CompletedProcess(result.args, result.returncode,
                                           stdout.read(), stderr.read())


# ---------------------------------------------------------------------- echo correctness
def test_ready_line_names_backend_and_model(server: EchoProcess) -> None:
    match = READY.match(server.ready_line)
    assert match is not None
    assert match.group(1) == HOST and server.port > 0
    assert match.group(3) in BACKENDS
    assert match.group(4) in MODELS


@pytest.mark.parametrize("size", [1, 1000, 65536, 65537, 1 << 20, (5 << 20) + 123])
def test_random_payload_is_echoed_byte_exact(server: EchoProcess, size: int) -> None:
    payload = random.randbytes(size)
    with server.connect() as sock:
        assert echo_round_trip(sock, payload) == payload
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b"", "the server closes a client that has closed its side"


def test_many_messages_on_one_connection_keep_their_order(server: EchoProcess) -> None:
    with server.connect() as sock:
        for i in range(200):
            message = f"message {i} ".encode() * (i % 7 + 1)
            assert echo_round_trip(sock, message) == message


def test_sixty_concurrent_clients(server: EchoProcess) -> None:
    clients = [server.connect() for _ in range(60)]
    try:
        payloads = [random.randbytes(1000 + 37 * i) for i in range(len(clients))]
        for sock, payload in zip(clients, payloads, strict=True):
            sock.sendall(payload)  # all in flight at once, read back afterwards
        for sock, payload in zip(clients, payloads, strict=True):
            assert recv_exactly(sock, len(payload)) == payload
    finally:
        for sock in clients:
            sock.close()
    assert_serving(server)


def test_scripted_client_with_many_connections(server: EchoProcess) -> None:
    result = run_client(server, "--count", "20", "--size", "3000", "--connections", "60")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "1200 messages x 3000 bytes over 60 connections" in out
    assert "all bytes verified" in out
    assert re.search(r"\d+ msg/s", out) and re.search(r"p50 [\d.]+ ms p99 [\d.]+ ms", out)


def test_scripted_client_with_multi_mib_messages(server: EchoProcess) -> None:
    result = run_client(server, "--count", "3", "--size", str(4 << 20), "--connections", "3")
    assert result.returncode == 0, result.stderr
    assert b"9 messages" in result.stdout


def test_line_client_echoes_stdin(server: EchoProcess) -> None:
    lines = b"".join(f"line {i}: {'x' * i}\n".encode() for i in range(300))
    result = run_client(server, stdin=lines)
    assert result.returncode == 0, result.stderr
    assert result.stdout == lines


def test_line_client_with_a_line_larger_than_socket_buffers(server: EchoProcess) -> None:
    # A client that sent a whole 48 MiB line before reading would deadlock with the server:
    # together, the loopback socket buffers hold less than that.
    line = random.randbytes(48 << 20).replace(b"\n", b"") + b"\n"
    result = run_client(server, stdin=line + b"short\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == line + b"short\n"


def test_line_client_whose_stdin_ends_after_the_echo(server: EchoProcess) -> None:
    # The usual shape of `producer | portio-echo client`: every echo is back before stdin
    # ends, so the server's close answers the half-close while the client waits on the socket.
    client = subprocess.Popen(
        [sys.executable, "-m", "portio.echo", "client", "--host", HOST,
         "--port", str(server.port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert client.stdin is not None and client.stdout is not None
    try:
        client.stdin.write(b"first line\n")
        client.stdin.flush()
        assert client.stdout.readline() == b"first line\n"
        time.sleep(0.2)  # several of the client's polls go by with nothing owed
        stdout, stderr = client.communicate(timeout=IO_TIMEOUT)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(STOP_TIMEOUT)
    assert client.returncode == 0, stderr
    assert stdout == b""


def test_garbage_is_echoed_as_is(server: EchoProcess) -> None:
    garbage = bytes(range(256)) * 64 + b"\0\r\n\xff" * 100
    with server.connect() as sock:
        assert echo_round_trip(sock, garbage) == garbage


# ---------------------------------------------------------------------- misbehaving clients
def test_client_vanishing_mid_message_does_not_hurt_others(server: EchoProcess) -> None:
    with server.connect() as steady:
        for _ in range(10):
            vanishing = server.connect()
            vanishing.sendall(random.randbytes(200_000))  # the echo is never read
            vanishing.close()
            assert echo_round_trip(steady, b"ping") == b"ping"
    assert_serving(server)


def test_client_that_never_reads_is_held_back_not_buffered(server: EchoProcess) -> None:
    hog = server.connect()
    hog.setblocking(False)
    sent = 0
    deadline = time.monotonic() + IO_TIMEOUT
    try:
        # Write until the kernel refuses more: the server must stop reading from this client
        # once its echo cannot be sent (backpressure), or this loop would never end.
        while time.monotonic() < deadline:
            try:
                sent += hog.send(b"x" * 65536)
            except BlockingIOError:
                time.sleep(0.2)
                try:
                    sent += hog.send(b"x" * 65536)
                except BlockingIOError:
                    break
        else:
            pytest.fail(f"the server kept reading a client that never reads ({sent} bytes)")
        assert_serving(server)  # others are served while the hog is stalled
    finally:
        hog.close()
    assert_serving(server)


def test_reset_client(server: EchoProcess) -> None:
    for _ in range(5):
        sock = server.connect()
        sock.sendall(random.randbytes(100_000))
        # SO_LINGER with a zero timeout makes close() send an RST instead of a FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    assert_serving(server)
    assert "Traceback" not in server.stderr()


def test_client_closing_before_sending_anything(server: EchoProcess) -> None:
    for _ in range(20):
        server.connect().close()
    assert_serving(server)


# ---------------------------------------------------------------------- shutdown
@POSIX_SIGNALS
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_with_clients_connected_exits_cleanly(server: EchoProcess, signum: int) -> None:
    clients = [server.connect() for _ in range(10)]
    try:
        for sock in clients:
            assert echo_round_trip(sock, b"hello") == b"hello"
        clients[0].sendall(random.randbytes(3 << 20))  # one client mid-message, not reading
        code = server.stop(signum)
        assert code == 0, server.stderr()
        assert "Traceback" not in server.stderr()
        for sock in clients[1:]:
            # The server closed every client on its way out.
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(16) == b""
    finally:
        for sock in clients:
            sock.close()


@POSIX_SIGNALS
def test_verbose_logs_connects_and_disconnects() -> None:
    proc = EchoProcess("--verbose", "--model", "port")
    try:
        with proc.connect() as sock:
            assert echo_round_trip(sock, b"hi") == b"hi"
        assert proc.stop() == 0
        log = proc.stderr()
        assert "connected: <Client 127.0.0.1:" in log
        assert "disconnected: <Client 127.0.0.1:" in log
        assert "stopped by SIGINT" in log
    finally:
        proc.close()


def test_max_clients_refuses_the_extra_one() -> None:
    proc = EchoProcess("--max-clients", "2")
    try:
        first, second = proc.connect(), proc.connect()
        assert echo_round_trip(first, b"1") == b"1"
        assert echo_round_trip(second, b"2") == b"2"
        with proc.connect() as third:
            assert third.recv(1) == b"", "the third client is closed at once"
        first.close()
        for _ in range(50):  # the server sees the close asynchronously
            with proc.connect() as fourth:
                try:
                    fourth.sendall(b"4")
                    if fourth.recv(1) == b"4":
                        break
                except ConnectionResetError:
                    pass
            time.sleep(0.05)
        else:
            pytest.fail("a slot never freed up after a client left")
        second.close()
    finally:
        proc.close()


def _children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT") or sys.platform == "win32",
                    reason="--workers needs SO_REUSEPORT (Linux/BSD)")
@pytest.mark.parametrize("model", MODELS)
def test_two_worker_processes(model: str) -> None:
    proc = EchoProcess("--workers", "2", "--model", model)
    try:
        assert proc.ready_line.endswith(" workers=2")
        children = _children_of(proc.proc.pid)
        if sys.platform.startswith("linux"):
            assert len(children) == 2
        result = run_client(proc, "--count", "20", "--size", "5000", "--connections", "40")
        assert result.returncode == 0, result.stderr
        assert proc.stop() == 0, proc.stderr()
        assert "Traceback" not in proc.stderr()
        for child in children:
            assert not Path(f"/proc/{child}").exists(), f"worker {child} outlived the server"
    finally:
        proc.close()


# ---------------------------------------------------------------------- third-party clients
def test_socat_client(server: EchoProcess) -> None:
    socat = shutil.which("socat")
    if socat is None:
        pytest.skip("socat is not installed (Debian: apt-get install -y socat)")
    payload = random.randbytes(1 << 20)
    # -t: after stdin's EOF (socat half-closes), wait up to this long for the rest of the echo;
    # the server closes the connection once it has echoed everything, which ends socat sooner.
    result = subprocess.run([socat, "-t", "20", "-", f"TCP:{HOST}:{server.port}"],
                            input=payload, capture_output=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload


def test_netcat_client(server: EchoProcess) -> None:
    nc = shutil.which("nc")
    if nc is None:
        pytest.skip("nc is not installed (Debian: apt-get install -y netcat-openbsd)")
    usage = subprocess.run([nc, "-h"], capture_output=True, check=False, timeout=10)
    if b"-N" not in usage.stdout + usage.stderr:
        pytest.skip("this nc cannot half-close on EOF (-N); Debian's netcat-openbsd can")
    lines = b"".join(f"netcat line {i}\n".encode() for i in range(1000))
    result = subprocess.run([nc, "-N", HOST, str(server.port)], input=lines,
                            capture_output=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == lines


# ---------------------------------------------------------------------- the client itself
def test_interactive_client_in_a_terminal(server: EchoProcess) -> None:
    if sys.platform == "win32":  # in the body, so that mypy --platform win32 sees it too
        pytest.skip("a pseudo-terminal needs POSIX pty")
    import pty

    main_fd, child_fd = pty.openpty()
    client = subprocess.Popen(
        [sys.executable, "-m", "portio.echo", "client", "--host", HOST,
         "--port", str(server.port)],
        stdin=child_fd, stdout=child_fd, stderr=child_fd)
    os.close(child_fd)
    try:
        os.write(main_fd, b"hello portio\nQ\n")
        output = b""
        deadline = time.monotonic() + IO_TIMEOUT
        while client.poll() is None or not output.endswith(b": "):
            if time.monotonic() > deadline:
                pytest.fail(f"interactive client stuck; output so far: {output!r}")
            try:
                output += os.read(main_fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
        assert client.wait(STOP_TIMEOUT) == 0
        text = output.decode().replace("\r\n", "\n")
        assert "Input message(Q to quit): " in text
        assert "Message from server: hello portio\n" in text
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(STOP_TIMEOUT)
        os.close(main_fd)


def _mangling_server(listener: socket.socket) -> None:
    """A broken echo server: flips one bit of every echo."""
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(IO_TIMEOUT)
        while data := conn.recv(65536):
            conn.sendall(bytes([data[0] ^ 1]) + data[1:])


def _piece_echo_server(listener: socket.socket) -> None:
    """An echo server that echoes in whole 1 KiB pieces: a buffered read returns a piece only
    once 1024 bytes (or the end of the stream) have arrived."""
    conn, _ = listener.accept()
    with conn, conn.makefile("rb") as stream, contextlib.suppress(OSError):
        conn.settimeout(IO_TIMEOUT)  # a client that waits forever costs the test this, no more
        while piece := stream.read(1024):
            conn.sendall(piece)


PIPED_TIME_LIMIT = 10.0  # seconds; well under 1 s here, and the client's --timeout is 20


def test_piped_client_reads_while_it_writes() -> None:
    """Against a server that echoes in 1 KiB pieces, a 70 KB line comes back at once.  A client
    that wrote 64 KiB, then waited for exactly that much echo before writing on, waited for
    the last partial piece, which such a server only sends when more bytes or the end of the
    stream come: it hung until a timeout (socat, reading while it writes, took 0.1 s)."""
    line = random.Random(3).randbytes(70_000).replace(b"\n", b"") + b"\n"
    with socket.create_server((HOST, 0)) as listener:
        listener.settimeout(IO_TIMEOUT)
        thread = threading.Thread(target=_piece_echo_server, args=(listener,), daemon=True)
        thread.start()
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "portio.echo", "client", "--host", HOST,
             "--port", str(listener.getsockname()[1]), "--timeout", "20"],
            input=line + b"short\n", capture_output=True, check=False, timeout=60)
        elapsed = time.monotonic() - started
        thread.join(IO_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == line + b"short\n"
    assert elapsed < PIPED_TIME_LIMIT, f"{elapsed:.1f} s for a 70 KB line"


@contextlib.contextmanager
def half_echo_server() -> Iterator[list[str]]:
    """A broken echo server for one client: it echoes 5 of the first 10 bytes and closes.
    Yields the command line of a piped client pointed at it."""
    with socket.create_server((HOST, 0)) as listener:
        listener.settimeout(IO_TIMEOUT)

        def echo_half_then_close() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(IO_TIMEOUT)
                conn.sendall(recv_exactly(conn, 10)[:5])

        thread = threading.Thread(target=echo_half_then_close, daemon=True)
        thread.start()
        yield [sys.executable, "-m", "portio.echo", "client", "--host", HOST,
               "--port", str(listener.getsockname()[1]), "--timeout", "20"]
        thread.join(IO_TIMEOUT)


def test_piped_client_fails_when_the_echo_stops_short() -> None:
    """A server that closes before echoing everything is an error (exit 1), not a hang."""
    with half_echo_server() as argv:
        result = subprocess.run(argv, input=b"123456789\n", capture_output=True, check=False,
                                timeout=60)
    assert result.returncode == 1
    assert b"after echoing 5 of 10 bytes" in result.stderr
    assert result.stdout == b"12345"


def test_piped_client_fails_cleanly_while_its_stdin_is_still_open() -> None:
    """The echo stops short while the client's stdin thread still waits for input: the exit is
    the error (1), not an interpreter that aborts at shutdown over that thread's reader."""
    with half_echo_server() as argv:
        client = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        assert client.stdin is not None
        try:
            client.stdin.write(b"123456789\n")
            client.stdin.flush()  # and stdin stays open until the client has exited
            returncode = client.wait(IO_TIMEOUT)
            assert client.stdout is not None and client.stderr is not None
            stdout, stderr = client.stdout.read(), client.stderr.read()
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(STOP_TIMEOUT)
            client.stdin.close()
    assert returncode == 1, stderr
    assert b"after echoing 5 of 10 bytes" in stderr
    assert stdout == b"12345"


@pytest.mark.parametrize("options", [["--size", "100"], ["--connections", "3"],
                                     ["--size", "100", "--connections", "3"]])
def test_scripted_options_without_count_are_a_usage_error(options: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "portio.echo", "client", "--host", HOST, "--port", "9", *options],
        input=b"", capture_output=True, check=False, timeout=60)
    assert result.returncode == 2
    assert b"only apply to a scripted run: add --count N" in result.stderr
    for option in options[::2]:
        assert option.encode() in result.stderr


def test_scripted_client_fails_on_a_mismatch() -> None:
    with socket.create_server((HOST, 0)) as listener:
        listener.settimeout(IO_TIMEOUT)
        thread = threading.Thread(target=_mangling_server, args=(listener,), daemon=True)
        thread.start()
        port = listener.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "portio.echo", "client", "--host", HOST, "--port", str(port),
             "--count", "3", "--size", "100", "--timeout", "20"],
            capture_output=True, check=False, timeout=60)
        thread.join(IO_TIMEOUT)
    assert result.returncode == 1
    assert b"mismatch at byte 0" in result.stderr


def test_scripted_client_fails_when_nobody_listens() -> None:
    with socket.socket() as placeholder:
        placeholder.bind((HOST, 0))  # bound, never listening: connecting is refused
        port = placeholder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "portio.echo", "client", "--host", HOST, "--port", str(port),
             "--count", "1", "--timeout", "20"],
            capture_output=True, check=False, timeout=60)
    assert result.returncode == 1
    assert b"ConnectionRefusedError" in result.stderr


def test_unknown_backend_is_a_usage_error() -> None:
    result = subprocess.run([sys.executable, "-m", "portio.echo", "serve", "--backend", "nope"],
                            capture_output=True, check=False, timeout=60)
    assert result.returncode == 2
    assert b"invalid choice" in result.stderr


def test_percentile_and_format_address() -> None:
    values = sorted(float(v) for v in range(1, 101))
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) == 0.0
    assert format_address(("127.0.0.1", 9190)) == "127.0.0.1:9190"
    assert format_address(("::1", 9190, 0, 0)) == "[::1]:9190"


class _BrokenPort:
    """A real port whose waits (get_many, dispatch) fail: everything else is the port's."""

    def __init__(self, port: portio.CompletionPort) -> None:
        self._port = port

    def __getattr__(self, name: str) -> Any:
        return getattr(self._port, name)

    def get_many(self, *args: object, **kwargs: object) -> NoReturn:
        raise RuntimeError("the port broke")

    dispatch = get_many


@pytest.mark.parametrize("model", MODELS)
def test_a_failing_port_stops_the_server_with_failure(model: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A failure of the port itself (not of one client) stops the server, logged, exit 1."""
    port = _BrokenPort(portio.open_port(BACKENDS[0], concurrency=1))
    server = EchoServer(open_listener(HOST, 0), cast(portio.CompletionPort, port), model=model,
                        threads=1, max_clients=0, stop=StopFlag())
    thread = threading.Thread(target=server.run)
    thread.start()
    thread.join(STOP_TIMEOUT)
    assert not thread.is_alive()
    assert server.failed and port.closed and server.listener.fileno() == -1
    assert "the completion port failed" in caplog.text


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="finds the worker processes through Linux's /proc")
def test_a_dying_worker_process_stops_the_rest_with_failure() -> None:
    if sys.platform == "win32":  # never true under the skipif; tells mypy --platform win32
        pytest.skip("finds the worker processes through Linux's /proc")
    proc = EchoProcess("--workers", "2")
    try:
        children = _children_of(proc.proc.pid)
        assert len(children) == 2
        os.kill(children[0], signal.SIGKILL)
        assert proc.proc.wait(STOP_TIMEOUT) == 1
        assert "exited with code -9; stopping the others" in proc.stderr()
        assert not Path(f"/proc/{children[1]}").exists()
    finally:
        proc.close()


def test_io_data_grows_only_for_a_client_whose_receive_filled_it() -> None:
    io = IoData()
    assert (io.size, io.buffer) == (BUFFER_SIZE, None)  # receives given a size: no buffer
    io.grow_if_streaming()
    assert (io.size, io.buffer) == (BUFFER_SIZE, None)  # nothing filled it yet
    io.filled = True
    io.grow_if_streaming()
    assert io.size == STREAM_BUFFER_SIZE and io.buffer is not None
    assert len(io.buffer) == STREAM_BUFFER_SIZE
    grown = io.buffer
    io.grow_if_streaming()
    assert io.size == STREAM_BUFFER_SIZE  # never past the stream size
    assert io.buffer is grown  # reused while it streams
    io.filled = False
    io.grow_if_streaming()
    assert io.buffer is None  # the stream paused: back to receives that hold nothing


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_streaming_client_gets_the_larger_buffer_a_chatty_one_does_not(
        backend: str, model: str) -> None:
    port = portio.open_port(backend)
    stop = StopFlag()
    server = EchoServer(open_listener(HOST, 0), port, model=model, threads=1, max_clients=0,
                        stop=stop)
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        address = server.listener.getsockname()[:2]
        payload = random.Random(7).randbytes(4 << 20)
        with socket.create_connection(address, timeout=IO_TIMEOUT) as streamer, \
                socket.create_connection(address, timeout=IO_TIMEOUT) as chatty:
            assert echo_round_trip(streamer, payload) == payload
            for i in range(20):
                assert echo_round_trip(chatty, b"%d" % i) == b"%d" % i
            with server._clients_lock:
                sizes = {format_address(c.address): c.io.size
                         for c in server._clients.values()}
            assert sizes == {format_address(streamer.getsockname()): STREAM_BUFFER_SIZE,
                             format_address(chatty.getsockname()): BUFFER_SIZE}
    finally:
        stop.set()
        thread.join(STOP_TIMEOUT)
    assert not thread.is_alive()
