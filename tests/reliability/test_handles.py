"""Handles the port does not own any more, or never did: names to resolve, numbers reused by
the OS, objects that close themselves, and register()/close_handle() racing each other."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

import portio

from .loopback import WAIT

Pair = tuple[socket.socket, socket.socket]


def test_a_slow_name_lookup_does_not_stall_other_threads(
        port: portio.CompletionPort, monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo
    resolving = threading.Event()

    def slow_getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        resolving.set()
        time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port.register(sock)
        sender = threading.Thread(target=port.sendto, args=(sock, b"x", ("localhost", 9)))
        sender.start()
        assert resolving.wait(WAIT)
        started = time.monotonic()
        port.post("meanwhile")
        assert port.get(timeout=WAIT).key == "meanwhile"
        assert time.monotonic() - started < 1.0, "post/get waited for another thread's lookup"
        sender.join(WAIT)
        assert port.get(timeout=WAIT).kind == "sendto"


def test_a_failed_name_lookup_is_a_gaierror_at_the_call(port: portio.CompletionPort) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        port.register(sock)
        with pytest.raises(socket.gaierror):
            port.sendto(sock, b"x", ("no-such-host.invalid", 9))
        with pytest.raises(TimeoutError):
            port.get(timeout=0.05)  # nothing was started


def test_a_reused_descriptor_number_is_not_registered(port: portio.CompletionPort) -> None:
    registered = socket.socket()
    port.register(registered)
    number = registered.fileno()
    registered.close()  # behind the port's back
    newcomer = socket.socket()
    try:
        if newcomer.fileno() != number:
            pytest.skip("the OS did not reuse the descriptor number")
        for call in (lambda: port.recv(newcomer, 10), lambda: port.send(newcomer, b"x"),
                     lambda: port.close_handle(newcomer)):
            with pytest.raises(ValueError, match="not registered"):
                call()
        port.register(newcomer)  # and it can be registered for real
        newcomer.setblocking(True)
    finally:
        newcomer.close()


class OwnsItsDescriptor:
    """An object with fileno() and close() that closes its number itself, exactly once."""

    def __init__(self, sock: socket.socket) -> None:
        self.fd = sock.detach()
        self.closes = 0

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        self.closes += 1
        if self.fd >= 0:
            socket.close(self.fd)  # (a SOCKET on Windows, not a C runtime descriptor)
            self.fd = -1


def test_close_handle_closes_through_the_object(port: portio.CompletionPort) -> None:
    a, b = socket.socketpair()
    with b:
        owner = OwnsItsDescriptor(a)
        number = owner.fd
        port.register(owner)
        port.recv(owner, 10)
        port.close_handle(owner)
        assert port.get(timeout=WAIT).error is not None  # cancelled
        assert owner.closes == 1 and owner.fd == -1
        # The number was closed once, by the object: a newcomer that reuses it survives.
        with socket.socket() as newcomer:
            if newcomer.fileno() == number:
                owner.close()  # closes nothing more
                newcomer.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)  # still open


def test_register_racing_close_handle_raises_only_documented_errors(backend: str) -> None:
    documented = (ValueError, TypeError)
    with portio.open_port(backend) as port:
        for _ in range(300):
            sock = socket.socket()
            port.register(sock)  # close_handle unregisters and closes it while it registers
            barrier = threading.Barrier(2)
            errors: list[BaseException] = []

            def register(s: socket.socket = sock, b: threading.Barrier = barrier,
                         errors: list[BaseException] = errors) -> None:
                b.wait()
                try:
                    port.register(s)
                except BaseException as exc:
                    errors.append(exc)

            def close(s: socket.socket = sock, b: threading.Barrier = barrier,
                      errors: list[BaseException] = errors) -> None:
                b.wait()
                try:
                    port.close_handle(s)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=register), threading.Thread(target=close)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(WAIT)
            unexpected = [e for e in errors if not isinstance(e, documented)]
            assert not unexpected, unexpected
            if sock.fileno() >= 0:  # registered and not closed: close it through the port
                port.close_handle(sock)
            sock.close()
        # The port is intact: it still serves.
        port.post("alive")
        assert port.get(timeout=WAIT).key == "alive"


def test_calls_raise_only_documented_errors_for_bad_handles(port: portio.CompletionPort) -> None:
    class BadFileno:
        def fileno(self) -> object:
            return "3"

    class RaisingFileno:
        def fileno(self) -> int:
            raise OSError("gone")

    documented = (ValueError, TypeError)
    for handle in (None, "x", 1.5, -1, 2**70, BadFileno(), RaisingFileno(), object()):
        for call in (port.register, port.close_handle, lambda h: port.recv(h, 1),
                     lambda h: port.send(h, b"x"), lambda h: port.connect(h, ("127.0.0.1", 9)),
                     lambda h: port.read(h, 1, 0)):
            with pytest.raises(documented):
                call(handle)


class ClosedWhileRegistering(socket.socket):
    """A socket another thread closes at the worst moment: as register() attaches it."""

    def setblocking(self, flag: bool) -> None:
        self.close()
        super().setblocking(flag)


def test_a_handle_closed_while_it_registers_is_a_value_error(
        port: portio.CompletionPort) -> None:
    sock = ClosedWhileRegistering()
    with pytest.raises(ValueError, match="cannot be registered"):
        port.register(sock)
    with socket.socket() as newcomer:  # the number is not left registered
        port.register(newcomer)
