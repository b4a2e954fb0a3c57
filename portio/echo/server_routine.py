"""The overlapped echo server driven by completion routines (``portio-echo serve --model
routine``).

One thread does everything: the accept and every client operation are started with
``callback=``, and :meth:`CompletionPort.dispatch` (the ``SleepEx(..., TRUE)`` analog) is the
alertable wait that runs the routines; each routine runs the echo state machine of
:class:`~portio.echo.server.EchoServer`.
"""

from __future__ import annotations

from portio import Completion, OperationCancelled
from portio.echo.server import STOP_POLL_INTERVAL, EchoServer, log

__all__ = ["serve"]


class _Routines:
    """The two completion routines of one server: client operations, and the accept."""

    def __init__(self, server: EchoServer) -> None:
        self.server = server

    def client_done(self, completion: Completion) -> None:
        """The completion routine of every client operation (read-done and write-done)."""
        try:
            self.server.on_completion(completion, self.client_done)
        except Exception:
            log.exception("unexpected error on %r", completion)
            self.server.close_client(completion.key, "unexpected error")

    def accept_done(self, completion: Completion) -> None:
        """The completion routine of the accept operation: take the client, accept again."""
        server = self.server
        if isinstance(completion.error, OperationCancelled) or server.stop.is_set:
            if completion.result is not None:
                completion.result[0].close()
            return
        if completion.error is not None:
            log.warning("accept failed: %s", completion.error)
        else:
            conn, address = completion.result
            client = server.add_client(conn, address)
            if client is not None:
                server.start_client(client, self.client_done)
        server.port.accept(server.listener, callback=self.accept_done)


def serve(server: EchoServer) -> None:
    """Serve in this one thread until the stop flag is set, then shut down."""
    routines = _Routines(server)
    # One thread does everything, so accepting is an operation too: a blocking accept
    # would starve the routines of the clients already connected.
    server.port.register(server.listener, None)
    try:
        server.port.accept(server.listener, callback=routines.accept_done)
        while not server.stop.is_set:
            server.port.dispatch(STOP_POLL_INTERVAL)  # the alertable wait
    except Exception:
        server.port_failed("dispatch")
    finally:
        try:
            server.port.close_handle(server.listener)  # cancels the pending accept
        except ValueError:
            server.listener.close()
        server.close_all()
        server.port.close()
