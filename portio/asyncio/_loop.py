"""The event loop: asyncio's proactor loop driven by a portio completion port.

``asyncio.proactor_events.BaseProactorEventLoop`` holds everything that does not depend on the
OS: the transports (TCP, UDP, "pipes" over sockets, SSL through ``sslproto``), servers, the
``sock_*`` coroutines, timers.  It asks its proactor to start operations and, once per loop
iteration, to wait for completions.  :class:`PortioEventLoop` gives it a
:class:`~portio.asyncio._proactor.PortProactor` and adds what the base leaves to each OS:

- waking the loop from another thread (``call_soon_threadsafe``) is a ``post`` on the port,
  not a byte through a socketpair;
- signals: Python's C-level handler writes the signal number to the loop's socketpair
  (``signal.set_wakeup_fd``); a receive pending on the other end completes and the loop runs
  the handler, as asyncio's Unix loop does with its self-pipe;
- subprocesses: the child's pipes are socketpairs (the port's receive and send work on sockets
  only), and one thread per child waits for it to exit, as asyncio's default
  ``ThreadedChildWatcher`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import io
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from asyncio import base_events, base_subprocess, events, exceptions, proactor_events, sslproto
from collections.abc import Awaitable, Callable
from typing import IO, Any

import portio
from portio.asyncio._proactor import WAKEUP, PortProactor

__all__ = ["PortioEventLoop"]

_NO_READINESS = ("portio's asyncio loop is a proactor: it has no readiness callbacks "
                 "(add_reader/add_writer); use the loop.sock_* coroutines or a transport")


def _no_op_signal_handler(signum: int, frame: object) -> None:
    """Installed for signals with a loop handler: Python's C handler then writes the signal
    number to the wakeup fd, and the loop runs the real handler."""


class PortioEventLoop(proactor_events.BaseProactorEventLoop):
    """An asyncio event loop on a portio :class:`~portio.CompletionPort`.

    ``backend`` is ``"io_uring"``, ``"iocp"``, ``"selector"`` or ``None`` (``$PORTIO_BACKEND``,
    else the best available), as for :func:`portio.open_port`.  The loop owns its port
    (``loop.port``) and closes it with the loop; every completion on it belongs to the loop,
    so start operations through the loop (or :func:`portio.asyncio.read`/``write``), not on
    the port directly.
    """

    # set by BaseProactorEventLoop, whose private attributes typeshed does not declare
    _proactor: PortProactor
    _ssock: socket.socket
    _csock: socket.socket
    _self_reading_future: asyncio.Future[bytes] | None
    _closed: bool
    _check_closed: Callable[[], None]
    _add_callback_signalsafe: Callable[[events.Handle], None]
    _create_connection_transport: Callable[..., Awaitable[tuple[Any, Any]]]

    def __init__(self, backend: str | None = None) -> None:
        try:
            self.port = portio.open_port(backend)
        except BaseException:
            self._closed = True  # BaseEventLoop.__del__ must not try to close a loop never made
            raise
        self.backend = self.port.backend
        self._signal_handlers: dict[int, events.Handle] = {}
        try:
            super().__init__(PortProactor(self.port))
        except BaseException:
            self.port.close()
            raise

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} backend={self.backend} running={self.is_running()} "
                f"closed={self.is_closed()} debug={self.get_debug()}>")

    # ------------------------------------------------------------------ running
    def run_forever(self) -> None:
        """Run until :meth:`stop`; the signal socketpair is read only while running."""
        if self.is_running():  # before touching the running loop's signal receive
            raise RuntimeError("This event loop is already running")
        try:
            self.call_soon(self._loop_self_reading)
            super().run_forever()
        finally:
            if self._self_reading_future is not None:
                self._self_reading_future.cancel()
                self._self_reading_future = None

    def _write_to_self(self) -> None:
        # From any thread, even after close (the port then refuses it: nothing to wake).
        with contextlib.suppress(portio.PortClosed):
            self.port.post(WAKEUP)

    def _loop_self_reading(self, f: asyncio.Future[bytes] | None = None) -> None:
        # Only signal numbers arrive here (wake-ups are posts): run their handlers, read again.
        try:
            if f is not None:
                for signum in f.result():
                    self._handle_signal(signum)
            if self._self_reading_future is not f:
                return  # run_forever ended (or close) while this callback waited
            f = self._proactor.recv(self._ssock, 4096)
        except exceptions.CancelledError:
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.call_exception_handler({
                "message": "Error on reading from the event loop's signal socketpair",
                "exception": exc,
                "loop": self,
            })
        else:
            self._self_reading_future = f
            f.add_done_callback(self._loop_self_reading)

    def close(self) -> None:
        """Close the loop, its port, and restore the signals it handled."""
        if not self.is_running() and not self.is_closed():
            for signum in list(self._signal_handlers):
                self.remove_signal_handler(signum)
        super().close()

    # ------------------------------------------------------------------ signals
    def add_signal_handler(self, sig: int, callback: Callable[..., object],  # type: ignore[override]
                           *args: Any) -> None:
        """Run ``callback(*args)`` on the loop when signal ``sig`` arrives (POSIX only).

        Raises ``ValueError`` for an invalid signal, ``RuntimeError`` when it cannot be caught
        or the loop does not run in the main thread, ``TypeError`` for a coroutine.
        """
        if sys.platform == "win32":
            raise NotImplementedError("portio's asyncio loop: add_signal_handler needs POSIX "
                                      "signals; Windows has none (as for asyncio's own loops)")
        if asyncio.iscoroutine(callback) or asyncio.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        try:
            # raises ValueError outside the main thread: only it may take signals
            signal.set_wakeup_fd(self._csock.fileno())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc)) from None
        self._signal_handlers[sig] = events.Handle(callback, args, self, None)
        try:
            signal.signal(sig, _no_op_signal_handler)
            signal.siginterrupt(sig, False)  # SA_RESTART: fewer EINTRs in other code
        except OSError as exc:
            del self._signal_handlers[sig]
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught") from None
            raise

    def remove_signal_handler(self, sig: int) -> bool:
        """Remove the handler of ``sig``; True if there was one.  The signal's disposition
        returns to the default (SIGINT: ``KeyboardInterrupt``)."""
        self._check_signal(sig)
        if self._signal_handlers.pop(sig, None) is None:
            return False
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught") from None
            raise
        return True

    @staticmethod
    def _check_signal(sig: int) -> None:
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def _handle_signal(self, sig: int) -> None:
        handle = self._signal_handlers.get(sig)
        if handle is None:
            return  # removed while the signal was on its way
        if handle.cancelled():
            self.remove_signal_handler(sig)
        else:
            self._add_callback_signalsafe(handle)

    # ------------------------------------------------------------------ Unix sockets
    # asyncio's base loop leaves these to the Unix loop; the proactor transports serve them
    # like TCP (the port accepts, connects, receives and sends on AF_UNIX as on AF_INET).
    async def create_unix_connection(  # type: ignore[override]
            self, protocol_factory: Callable[[], asyncio.BaseProtocol], path: Any = None, *,
            ssl: Any = None, sock: socket.socket | None = None,
            server_hostname: str | None = None, ssl_handshake_timeout: float | None = None,
            **shutdown: Any) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        """Connect to the Unix stream socket at ``path`` (or use the connected ``sock``).
        Accepts what :meth:`asyncio.loop.create_unix_connection` accepts."""
        family = _check_unix_family()
        ssl_shutdown_timeout = _ssl_shutdown_timeout(shutdown)
        if ssl:
            if server_hostname is None:
                raise ValueError("you have to pass server_hostname when using ssl")
        else:
            _only_with_ssl(server_hostname=server_hostname,
                           ssl_handshake_timeout=ssl_handshake_timeout,
                           ssl_shutdown_timeout=ssl_shutdown_timeout)
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                await self.sock_connect(sock, os.fspath(path))
            except BaseException:
                sock.close()
                raise
        else:
            _check_unix_stream(sock, "no path and sock were specified")
        extra = {} if ssl_shutdown_timeout is None else {
            "ssl_shutdown_timeout": ssl_shutdown_timeout}
        return await self._create_connection_transport(
            sock, protocol_factory, ssl, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout, **extra)

    async def create_unix_server(
            self, protocol_factory: Callable[[], asyncio.BaseProtocol], path: Any = None, *,
            sock: socket.socket | None = None, backlog: int = 100, ssl: Any = None,
            ssl_handshake_timeout: float | None = None, start_serving: bool = True,
            **shutdown: Any) -> asyncio.Server:
        """Listen on the Unix stream socket ``path`` (a stale socket file there is removed) or
        on the bound ``sock``.  Accepts what :meth:`asyncio.loop.create_unix_server` accepts."""
        family = _check_unix_family()
        ssl_shutdown_timeout = _ssl_shutdown_timeout(shutdown)
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if not ssl:
            _only_with_ssl(ssl_handshake_timeout=ssl_handshake_timeout,
                           ssl_shutdown_timeout=ssl_shutdown_timeout)
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                if path[0] not in (0, "\x00"):  # not an abstract (Linux) name
                    with contextlib.suppress(FileNotFoundError):
                        if stat.S_ISSOCK(os.stat(path).st_mode):
                            os.remove(path)  # a socket file left by a server that is gone
                sock.bind(path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(errno.EADDRINUSE,
                                  f"Address {path!r} is already in use") from None
                raise
            except BaseException:
                sock.close()
                raise
        else:
            _check_unix_stream(sock, "path was not specified, and no sock specified")
        assert sock is not None
        sock.setblocking(False)
        extra = () if sys.version_info < (3, 11) else (ssl_shutdown_timeout,)
        server = base_events.Server(self, [sock], protocol_factory, ssl, backlog,
                                    ssl_handshake_timeout, *extra)
        if start_serving:
            server._start_serving()  # type: ignore[attr-defined]
            await asyncio.sleep(0)  # let the accept start before the caller connects
        return server

    # ------------------------------------------------------------------ unsupported
    def add_reader(self, fd: Any, callback: Callable[..., object],  # type: ignore[override]
                   *args: Any) -> None:
        """Not supported: a proactor has no readiness callbacks."""
        raise NotImplementedError(_NO_READINESS)

    def remove_reader(self, fd: Any) -> bool:
        """Not supported: a proactor has no readiness callbacks."""
        raise NotImplementedError(_NO_READINESS)

    def add_writer(self, fd: Any, callback: Callable[..., object],  # type: ignore[override]
                   *args: Any) -> None:
        """Not supported: a proactor has no readiness callbacks."""
        raise NotImplementedError(_NO_READINESS)

    def remove_writer(self, fd: Any) -> bool:
        """Not supported: a proactor has no readiness callbacks."""
        raise NotImplementedError(_NO_READINESS)

    # ------------------------------------------------------------------ transports
    def _make_socket_transport(self, sock: socket.socket, protocol: Any, waiter: Any = None,
                               extra: Any = None, server: Any = None) -> Any:
        return _SocketTransport(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(self, rawsock: socket.socket, protocol: Any, sslcontext: Any,
                            waiter: Any = None, *, server_side: bool = False,
                            server_hostname: str | None = None, extra: Any = None,
                            server: Any = None, ssl_handshake_timeout: float | None = None,
                            **shutdown: Any) -> Any:
        # sslproto runs TLS over any transport: here, the port's socket transport
        ssl_protocol = sslproto.SSLProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout, **shutdown)  # type: ignore[arg-type]
        _SocketTransport(self, rawsock, ssl_protocol,  # type: ignore[arg-type]
                         extra=extra, server=server)
        return ssl_protocol._app_transport

    def _make_datagram_transport(self, sock: socket.socket, protocol: Any, address: Any = None,
                                 waiter: Any = None, extra: Any = None) -> Any:
        return _DatagramTransport(self, sock, protocol, address, waiter, extra)

    # asyncio's proactor "pipe" transports receive and send; the port does that on sockets
    # only (its read/write need an offset, which a pipe or a tty has not).
    def _make_duplex_pipe_transport(self, sock: Any, protocol: Any, waiter: Any = None,
                                    extra: Any = None) -> Any:
        _check_pipe(sock, "a duplex pipe transport")
        return _DuplexPipeTransport(self, sock, protocol, waiter, extra)

    def _make_read_pipe_transport(self, sock: Any, protocol: Any, waiter: Any = None,
                                  extra: Any = None) -> Any:
        _check_pipe(sock, "connect_read_pipe")
        return _ReadPipeTransport(self, sock, protocol, waiter, extra)

    def _make_write_pipe_transport(self, sock: Any, protocol: Any, waiter: Any = None,
                                   extra: Any = None) -> Any:
        _check_pipe(sock, "connect_write_pipe")
        return _WritePipeTransport(self, sock, protocol, waiter, extra)

    # ------------------------------------------------------------------ sendfile
    async def _sock_sendfile_native(self, sock: socket.socket, file: IO[bytes], offset: int,
                                    count: int | None) -> int:
        """sendfile through the port: read a chunk of the file at its offset, send it, repeat
        (no thread; io_uring reads the file asynchronously).  POSIX only: on Windows a file's
        descriptor is not the HANDLE the port would need, and asyncio falls back."""
        if sys.platform == "win32":
            raise exceptions.SendfileNotAvailableError(
                "portio's loop on Windows: a file descriptor is not an overlapped HANDLE")
        try:
            fileno = file.fileno()
            size = os.fstat(fileno).st_size
        except (AttributeError, io.UnsupportedOperation, OSError) as exc:
            raise exceptions.SendfileNotAvailableError("not a regular file") from exc
        end = size if not count else min(offset + count, size)
        if offset >= end:
            return 0
        fd = os.dup(fileno)  # the port closes what it registered: a copy, not the user's file
        try:
            self._proactor.register(fd)
        except BaseException:
            os.close(fd)
            raise
        chunk = memoryview(bytearray(min(_SENDFILE_CHUNK, end - offset)))
        sent = 0
        try:
            while offset + sent < end:
                got = await self._proactor.read(
                    fd, chunk[:min(len(chunk), end - offset - sent)], offset + sent)
                if not got:
                    break  # the file shrank under us
                sending = self._proactor.send(sock, chunk[:got])
                try:
                    await sending
                except OSError:
                    sent += sending.nbytes  # the file position must say what went
                    raise
                sent += got
        finally:
            self._proactor.forget(fd)
            if sent:
                file.seek(offset + sent)
        return sent

    # ------------------------------------------------------------------ subprocesses
    async def _make_subprocess_transport(self, protocol: Any, args: Any, shell: bool,
                                         stdin: Any, stdout: Any, stderr: Any, bufsize: int,
                                         extra: Any = None, **kwargs: Any) -> Any:
        if sys.platform == "win32" and subprocess.PIPE in (stdin, stdout, stderr):
            raise NotImplementedError(
                "portio's asyncio loop: subprocess pipes on Windows are not supported (the "
                "port receives and sends on sockets only, and Windows cannot give a child a "
                "socket as its stdin/stdout)")
        waiter = self.create_future()
        transport = _SubprocessTransport(self, protocol, args, shell, stdin, stdout, stderr,
                                         bufsize, waiter=waiter, extra=extra, **kwargs)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transport.close()
            await transport._wait()
            raise
        return transport


#: Windows builds of CPython have no AF_UNIX.
_AF_UNIX: int | None = getattr(socket, "AF_UNIX", None)


def _check_unix_family() -> int:
    if _AF_UNIX is None:
        raise NotImplementedError("Unix sockets need socket.AF_UNIX, which this Python lacks")
    return _AF_UNIX


def _check_unix_stream(sock: socket.socket | None, missing: str) -> None:
    if sock is None:
        raise ValueError(missing)
    if sock.family != _AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")


def _ssl_shutdown_timeout(shutdown: dict[str, Any]) -> float | None:
    # ssl_shutdown_timeout is new in Python 3.11; accept it by keyword where asyncio has it
    unknown = set(shutdown) - ({"ssl_shutdown_timeout"} if sys.version_info >= (3, 11) else set())
    if unknown:
        raise TypeError(f"unexpected keyword argument {sorted(unknown)[0]!r}")
    value: float | None = shutdown.get("ssl_shutdown_timeout")
    return value


def _only_with_ssl(**given: Any) -> None:
    for name, value in given.items():
        if value is not None:
            raise ValueError(f"{name} is only meaningful with ssl")


#: The unit of sendfile through the port: the size asyncio's transports read at once.
_SENDFILE_CHUNK = 256 * 1024
#: Python 3.13's Server tracks its transports: ``_detach(transport)``.
_DETACH_TAKES_TRANSPORT = len(inspect.signature(
    base_events.Server._detach).parameters) > 1  # type: ignore[attr-defined]


class _PortTransport:
    """How a proactor transport lets go of its socket on portio (mixed into each kind).

    asyncio's proactor transports were written for Windows, where ``shutdown()`` of a reset
    connection succeeds; POSIX refuses it (``ENOTCONN``), and the rest of the cleanup must
    still happen.  The socket is also taken off the port with ``close_handle`` (cancelling
    whatever is still pending on it) instead of closed behind the port's back.
    """

    _called_connection_lost: bool
    _protocol: Any
    _sock: Any
    _server: Any
    _loop: Any

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        if self._called_connection_lost:
            return
        try:
            self._protocol.connection_lost(exc)
        finally:
            sock = self._sock
            # shutdown sends the FIN now, even if another process shares the socket
            with contextlib.suppress(OSError):
                if sock.fileno() != -1:
                    sock.shutdown(socket.SHUT_RDWR)
            self._loop._proactor.forget(sock)
            sock.close()
            self._sock = None
            server = self._server
            if server is not None:
                if _DETACH_TAKES_TRANSPORT:
                    server._detach(self)
                else:
                    server._detach()
                self._server = None
            self._called_connection_lost = True


class _SocketTransport(_PortTransport, proactor_events._ProactorSocketTransport):
    """A TCP or Unix stream transport."""


class _DatagramTransport(_PortTransport,
                         proactor_events._ProactorDatagramTransport):  # type: ignore[misc,name-defined]
    """A UDP (or Unix datagram) transport."""


class _DuplexPipeTransport(_PortTransport, proactor_events._ProactorDuplexPipeTransport):
    """A two-way "pipe": a socketpair end."""


class _ReadPipeTransport(_PortTransport, proactor_events._ProactorReadPipeTransport):
    """The read end of a "pipe": a socketpair end (a subprocess's stdout/stderr)."""


class _WritePipeTransport(_PortTransport, proactor_events._ProactorWritePipeTransport):
    """The write end of a "pipe": a socketpair end (a subprocess's stdin)."""


def _check_pipe(pipe: Any, what: str) -> None:
    if not isinstance(pipe, socket.socket):
        raise NotImplementedError(
            f"portio's asyncio loop: {what}() works on sockets only (a socketpair end), not "
            f"{type(pipe).__name__}: the CompletionPort API cannot receive from a pipe or a tty")


class _SubprocessTransport(base_subprocess.BaseSubprocessTransport):
    """A child process whose ``PIPE`` streams are socketpairs, watched by a thread."""

    _proc: subprocess.Popen[bytes] | None

    def _start(self, args: Any, shell: bool, stdin: Any, stdout: Any, stderr: Any,
               bufsize: int, **kwargs: Any) -> None:
        parents: dict[str, socket.socket] = {}
        children: list[socket.socket] = []

        def end(spec: Any, name: str) -> Any:
            if spec != subprocess.PIPE:
                return spec
            parent, child = socket.socketpair()
            parents[name] = parent
            children.append(child)
            return child

        try:
            self._proc = subprocess.Popen(
                args, shell=shell, stdin=end(stdin, "stdin"), stdout=end(stdout, "stdout"),
                stderr=end(stderr, "stderr"), universal_newlines=False, bufsize=bufsize,
                **kwargs)
        except BaseException:
            for sock in parents.values():
                sock.close()
            raise
        finally:
            for sock in children:
                sock.close()  # the child has its copies; EOF must come when it closes them
        for name, sock in parents.items():
            # BaseSubprocessTransport connects these with connect_read/write_pipe
            setattr(self._proc, name, sock)
        threading.Thread(target=self._watch, args=(self._proc,), daemon=True,
                         name=f"portio-asyncio-waitpid-{self._proc.pid}").start()

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        returncode = proc.wait()
        try:
            self._loop.call_soon_threadsafe(self._process_exited, returncode)
        except RuntimeError:
            # the loop was closed first: nobody is left to tell
            if not self._loop.is_closed():
                raise
