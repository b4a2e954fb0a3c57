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
import errno
import signal
import socket
import subprocess
import sys
import threading
from asyncio import base_subprocess, events, exceptions, proactor_events
from collections.abc import Callable
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

    def __init__(self, backend: str | None = None) -> None:
        self.port = portio.open_port(backend)
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
        try:
            assert self._self_reading_future is None
            self.call_soon(self._loop_self_reading)
            super().run_forever()
        finally:
            if self._self_reading_future is not None:
                self._self_reading_future.cancel()
                self._self_reading_future = None

    def _write_to_self(self) -> None:
        # From any thread, even after close (the port then refuses it: nothing to wake).
        try:
            self.port.post(WAKEUP)
        except portio.PortClosed:
            pass

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
    def add_signal_handler(self, sig: int, callback: Callable[..., object],
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

    # ------------------------------------------------------------------ unsupported
    def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
        """Not supported: a proactor has no readiness callbacks."""
        raise NotImplementedError(_NO_READINESS)

    def remove_reader(self, fd: Any) -> bool:
        """Not supported: a proactor has no readiness callbacks."""
        raise NotImplementedError(_NO_READINESS)

    def add_writer(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
        """Not supported: a proactor has no readiness callbacks."""
        raise NotImplementedError(_NO_READINESS)

    def remove_writer(self, fd: Any) -> bool:
        """Not supported: a proactor has no readiness callbacks."""
        raise NotImplementedError(_NO_READINESS)

    # ------------------------------------------------------------------ pipes
    # asyncio's proactor "pipe" transports receive and send; the port does that on sockets
    # only (its read/write need an offset, which a pipe or a tty has not).
    def _make_read_pipe_transport(self, sock: Any, protocol: Any, waiter: Any = None,
                                  extra: Any = None) -> Any:
        _check_pipe(sock, "connect_read_pipe")
        return super()._make_read_pipe_transport(sock, protocol, waiter, extra)

    def _make_write_pipe_transport(self, sock: Any, protocol: Any, waiter: Any = None,
                                   extra: Any = None) -> Any:
        _check_pipe(sock, "connect_write_pipe")
        return super()._make_write_pipe_transport(sock, protocol, waiter, extra)

    # ------------------------------------------------------------------ sendfile
    async def _sock_sendfile_native(self, sock: socket.socket, file: IO[bytes], offset: int,
                                    count: int | None) -> int:
        # The port has no sendfile operation: asyncio's fallback reads the file and sends it.
        raise exceptions.SendfileNotAvailableError(
            "portio's CompletionPort has no sendfile operation")

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
