"""portio-echo: the classic IOCP echo programs, rebuilt on one completion port.

The classic teaching sequence for Windows I/O has three programs; each has a counterpart here,
one module each:

``portio-echo serve --model routine`` (:mod:`portio.echo.server_routine`)
    The overlapped echo server driven by *completion routines* in an alertable wait: one
    thread, every operation started with ``callback=``, and :meth:`CompletionPort.dispatch`
    (the ``SleepEx(..., TRUE)`` analog) runs the routines.  Read-done starts the echo send
    (and, for a streaming client, the next recv); write-done starts the next recv otherwise.
``portio-echo serve`` (``--model port``, the default; :mod:`portio.echo.server_port`)
    The *completion-port* echo server: the main thread accepts, registers each client with its
    per-handle data (the socket and the address) as the completion key, and starts a recv whose
    per-I/O data is the buffer; ``--threads`` workers loop on :meth:`CompletionPort.get_many`.
``portio-echo client`` (:mod:`portio.echo.client`)
    The *stable* echo client: it keeps reading until every byte it sent has come back, which is
    the only correct way to use a TCP stream (one ``send`` may come back in many ``recv``\\ s).

What both servers share (the per-handle and per-I/O data, the echo state machine) is
:mod:`portio.echo.server`; ``--workers N`` (N server processes on one port) is
:mod:`portio.echo.supervisor`; the command line is :mod:`portio.echo.cli`.

Both servers pipeline a streaming client like the seed's server (on a read completion it calls
WSASend and then WSARecv at once): after a large receive, the next one starts while the echo is
being sent.  After a small one (a message whose sender waits for its echo) the next receive
starts when the echo is sent, since a receive started earlier would only wait, which costs more
(see ``COPY_LIMIT`` in :mod:`portio.echo.server`).  Memory per client stays bounded: at most
``MAX_SENDS_IN_FLIGHT`` echo sends per client are in flight, and a client at that bound gets
its next receive only when one of them completes.  A client that never reads therefore stalls
only itself (the kernel's socket buffers fill, its sends wait, its receive is not restarted):
backpressure instead of unbounded buffering.
"""

from portio.echo.cli import main
from portio.echo.client import percentile
from portio.echo.server import (
    BUFFER_SIZE,
    MAX_SENDS_IN_FLIGHT,
    STREAM_BUFFER_SIZE,
    Client,
    EchoServer,
    IoData,
    StopFlag,
    format_address,
    open_listener,
)

__all__ = ["BUFFER_SIZE", "MAX_SENDS_IN_FLIGHT", "STREAM_BUFFER_SIZE", "Client", "EchoServer",
           "IoData", "StopFlag", "format_address", "main", "open_listener", "percentile"]
