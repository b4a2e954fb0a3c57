"""The completion-port echo server (``portio-echo serve``, ``--model port``, the default).

The main thread accepts, registers each client with its per-handle data (the socket and the
address) as the completion key, and starts a recv whose per-I/O data is the buffer; worker
threads loop on :meth:`CompletionPort.get_many` and run the echo state machine of
:class:`~portio.echo.server.EchoServer` on each completion.
"""

from __future__ import annotations

import threading
import time

from portio import PortClosed
from portio.echo.server import (
    SHUTDOWN_GRACE,
    STOP_POLL_INTERVAL,
    Client,
    EchoServer,
    log,
)

__all__ = ["serve"]


def _worker(server: EchoServer) -> None:
    """One worker thread: dequeue completions in batches until the port closes."""
    while True:
        try:
            batch = server.port.get_many(64)
        except PortClosed:
            return
        except Exception:
            server.port_failed(threading.current_thread().name)
            return
        for completion in batch:
            try:
                server.on_completion(completion, None)
            except Exception:  # never let one client take a worker down
                log.exception("unexpected error on %r", completion)
                if isinstance(completion.key, Client):
                    server.close_client(completion.key, "unexpected error")


def serve(server: EchoServer) -> None:
    """Serve with ``server.threads`` workers until the stop flag is set, then shut down."""
    workers = [threading.Thread(target=_worker, args=(server,), name=f"portio-echo-worker-{i}")
               for i in range(server.threads)]
    for worker in workers:
        worker.start()
    # The main thread accepts with a *blocking* accept(), as the classic IOCP server does,
    # rather than with an accept operation on the port: accepting is the one job the main
    # thread has, so blocking costs nothing; the workers stay a pure data path (an accept
    # completion would land on any worker and need a second kind of key); and it is the
    # same code on every backend.  The accept times out every STOP_POLL_INTERVAL only so
    # that a stop asked for by a signal is seen.
    listener = server.listener
    listener.settimeout(STOP_POLL_INTERVAL)
    try:
        while not server.stop.is_set:
            try:
                conn, address = listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:  # e.g. EMFILE: say so and keep serving the others
                log.warning("accept failed: %s", exc)
                time.sleep(STOP_POLL_INTERVAL)
                continue
            conn.settimeout(None)  # accepted sockets inherit the listener's timeout
            client = server.add_client(conn, address)
            if client is not None:
                server.start_client(client, None)
    finally:
        listener.close()  # stop accepting first: new clients are refused at once
        server.close_all()
        server.port.close()  # wakes every worker blocked in get_many with PortClosed
        for worker in workers:
            worker.join(SHUTDOWN_GRACE)
            if worker.is_alive():
                log.warning("%s did not stop within %g s", worker.name, SHUTDOWN_GRACE)
