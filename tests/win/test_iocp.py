"""iocp-specific behaviour the contract suite cannot see: error mapping, buffer lifetimes,
the synchronous-success path, and the places where Wine differs from Windows.

Runs under a Windows interpreter only (natively, or under Wine via tools/wine-tests.sh).
"""

from __future__ import annotations

import ctypes
import pathlib
import socket
import sys
import threading
from collections.abc import Iterator

import pytest

if sys.platform != "win32":  # a module-level skip; mypy skips the rest off Windows too
    pytest.skip("Windows only: exercises the real I/O completion port", allow_module_level=True)

from portio.backends import _winapi as w
from portio.backends.iocp import IocpPort

import portio

WAIT = 10.0


def under_wine() -> bool:
    """Wine's ntdll exports wine_get_version; Windows' does not."""
    return hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")


@pytest.fixture
def port() -> Iterator[IocpPort]:
    p = IocpPort()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname())
        b, _ = server.accept()
    with a, b:
        yield a, b


@pytest.mark.parametrize(("winerror", "exc_type"), [
    (10054, ConnectionResetError),
    (64, ConnectionResetError),       # ERROR_NETNAME_DELETED: what IOCP reports for a reset
    (1234, ConnectionResetError),     # ERROR_PORT_UNREACHABLE: ICMP on a UDP socket
    (10061, ConnectionRefusedError),
    (1225, ConnectionRefusedError),   # ERROR_CONNECTION_REFUSED: ConnectEx's status
    (10053, ConnectionAbortedError),
    (1236, ConnectionAbortedError),
    (10058, BrokenPipeError),         # WSAESHUTDOWN
    (2, FileNotFoundError),
])
def test_windows_errors_become_the_contract_types(winerror: int,
                                                 exc_type: type[OSError]) -> None:
    exc = w.winerror_to_oserror(winerror)
    assert isinstance(exc, exc_type)
    assert exc.winerror is not None


def test_both_abort_codes_mean_cancelled() -> None:
    assert w.Error.ERROR_OPERATION_ABORTED in w.ABORTED   # Windows
    assert w.Error.WINE_ERROR_CLOSED in w.ABORTED         # Wine 8, closesocket with a recv pending


def test_iocp_is_the_best_backend_here() -> None:
    assert portio.available_backends()[0] == "iocp"


def test_buffer_stays_alive_until_the_packet_is_dequeued(
        port: IocpPort, pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    port.register(a)
    op = port.recv(a, 100)
    op.cancel()
    # The completion may already be produced (the kernel wrote the status at once), but the
    # OVERLAPPED and the buffer stay referenced until the packet itself comes out of the port.
    native = op.native
    assert native is not None
    completion = port.get(timeout=WAIT)
    assert isinstance(completion.error, portio.OperationCancelled)
    with port._lock:
        still = [o for o in port._inflight.values() if o is op]
    if still:  # the packet was not dequeued yet: a later poll drains it
        with pytest.raises(TimeoutError):
            port.get(timeout=0.2)
    assert not [o for o in port._inflight.values() if o is op]


def test_data_already_waiting_completes(port: IocpPort,
                                        pair: tuple[socket.socket, socket.socket]) -> None:
    """With FILE_SKIP_COMPLETION_PORT_ON_SUCCESS on (where safe) a WSARecv that finds data
    succeeds at once and no packet is queued: the completion must still be delivered once."""
    a, b = pair
    port.register(a)
    b.sendall(b"ready")
    threading.Event().wait(0.1)  # let the bytes reach a's receive buffer
    port.recv(a, 100)
    assert port.get(timeout=WAIT).result == b"ready"
    with pytest.raises(TimeoutError):
        port.get(timeout=0.2)  # and exactly once


def test_udp_never_skips_the_port(port: IocpPort) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port.register(udp)
        assert port._entries[udp.fileno()].native is False


def test_closing_the_socket_under_a_pending_recv_cancels_it(
        port: IocpPort, pair: tuple[socket.socket, socket.socket]) -> None:
    """Windows completes it with ERROR_OPERATION_ABORTED, Wine 8 with 676: both are a cancel."""
    a, _ = pair
    port.register(a)
    port.recv(a, 100)
    threading.Event().wait(0.05)
    a.close()  # behind the port's back, not close_handle
    completion = port.get(timeout=WAIT)
    assert isinstance(completion.error, (portio.OperationCancelled, ConnectionAbortedError))


def test_a_handle_belongs_to_one_port_for_life(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    with IocpPort() as first, IocpPort() as second:
        first.register(a)
        with pytest.raises(ValueError, match="another completion port"):
            second.register(a)


def test_close_handle_closes_a_pipe_handle(port: IocpPort) -> None:
    """An int registered here is a HANDLE: close_handle closes it with CloseHandle (os.close
    would close whatever C runtime descriptor has that number)."""
    import _winapi

    r, w_end = _winapi.CreatePipe(None, 0)
    try:
        port.register(r)
        port.close_handle(r)
        with pytest.raises(OSError):
            _winapi.CloseHandle(r)  # already closed
    finally:
        _winapi.CloseHandle(w_end)


def test_invalid_and_non_overlapped_handles_are_refused_at_register(
        port: IocpPort, tmp_path: pathlib.Path) -> None:
    import _winapi
    import msvcrt

    r, w_end = _winapi.CreatePipe(None, 0)
    _winapi.CloseHandle(r)
    _winapi.CloseHandle(w_end)
    with pytest.raises(ValueError, match="not an open"):
        port.register(r)  # a HANDLE value just closed
    with open(tmp_path / "plain", "w+b") as plain, \
            pytest.raises(ValueError, match=r"portio\.open_file"):  # no FILE_FLAG_OVERLAPPED
        port.register(msvcrt.get_osfhandle(plain.fileno()))
    with portio.open_file(tmp_path / "overlapped", "w+b") as file:
        port.register(file)  # the portio.File itself is the way


def test_close_wakes_a_thread_blocked_in_the_kernel() -> None:
    """Wine does not wake GetQueuedCompletionStatus when the port handle is closed (Windows
    does, with ERROR_ABANDONED_WAIT_0): close() must wake the poller itself, on both."""
    port = IocpPort()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            port.get()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    threading.Event().wait(0.2)
    port.close()
    t.join(WAIT)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], portio.PortClosed)


def test_udp_port_unreachable_fails_the_pending_recvfrom(port: IocpPort) -> None:
    if under_wine():
        pytest.skip("Wine 8 does not surface the ICMP port-unreachable on a pending "
                    "WSARecvFrom (Windows fails it with WSAECONNRESET/ERROR_PORT_UNREACHABLE, "
                    "which the backend maps to ConnectionResetError)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = closed.getsockname()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port.register(udp)
        port.recvfrom(udp, 100)
        port.sendto(udp, b"x", nobody)
        errors = [c.error for c in (port.get(timeout=WAIT), port.get(timeout=WAIT))]
        assert any(isinstance(e, ConnectionResetError) for e in errors)
