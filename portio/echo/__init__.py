"""portio-echo: the classic IOCP echo programs, rebuilt on one completion port.

The classic teaching sequence for Windows I/O has three programs; each has a counterpart here,
one module each:

``portio-echo serve --model routine`` (:mod:`portio.echo.server_routine`)
    The overlapped echo server driven by *completion routines* in an alertable wait: one
    thread, every operation started with ``callback=``, and :meth:`CompletionPort.dispatch`
    (the ``SleepEx(..., TRUE)`` analog) runs the routines.  Read-done starts the echo send,
    write-done starts the next recv.
``portio-echo serve`` (``--model port``, the default; :mod:`portio.echo.server_port`)
    The *completion-port* echo server: the main thread accepts, registers each client with its
    per-handle data (the socket and the address) as the completion key, and starts a recv whose
    per-I/O data is the buffer and whether it is a read or a write; ``--threads`` workers loop
    on :meth:`CompletionPort.get_many`.
``portio-echo client`` (:mod:`portio.echo.client`)
    The *stable* echo client: it keeps reading until every byte it sent has come back, which is
    the only correct way to use a TCP stream (one ``send`` may come back in many ``recv``\\ s).

What both servers share (the per-handle and per-I/O data, the echo state machine) is
:mod:`portio.echo.server`; ``--workers N`` (N server processes on one port) is
:mod:`portio.echo.supervisor`; the command line is :mod:`portio.echo.cli`.

Memory per client is bounded: each client has one receive of ``size`` bytes in flight, and the
next recv is only started once the echo of the previous one has been sent.  The receive is
given a size, not a buffer, so an idle client holds no receive buffer at all: the bytes object
exists only once data has arrived, and only until its echo is sent.  Only a client whose
receives fill their size (it streams) gets a reused 256 KiB buffer, until one no longer does.
A client that never reads stalls only itself (the kernel's socket buffers fill and its send
waits): backpressure instead of unbounded buffering.
"""

from portio.echo.cli import main
from portio.echo.client import percentile
from portio.echo.server import (
    BUFFER_SIZE,
    STREAM_BUFFER_SIZE,
    Client,
    EchoServer,
    IoData,
    StopFlag,
    format_address,
    open_listener,
)

__all__ = ["BUFFER_SIZE", "STREAM_BUFFER_SIZE", "Client", "EchoServer", "IoData", "StopFlag",
           "format_address", "main", "open_listener", "percentile"]
