"""The peer echo servers portio is measured against, each as plain as its library allows.

``python -m portio.bench.peers KIND [--host H] [--port P]`` serves until SIGTERM/SIGINT and
prints one ready line, ``peer echo server KIND listening on HOST:PORT``, like portio's own
``portio-echo serve``.  KIND is one of :data:`PEERS`:

- ``asyncio``: an ``asyncio.Protocol`` whose ``data_received`` writes the data back (the
  fastest thing asyncio offers; streams would add a layer).
- ``uvloop``: the same Protocol on uvloop's loop.
- ``trio``: one task per connection, ``receive_some`` then ``send_all``.
- ``selectors``: a minimal hand-written ``selectors`` loop with non-blocking sockets and a
  per-connection backlog of unsent bytes (what a user writes without a framework).
- ``c-epoll``: a C epoll echo server, the kernel floor of ping-pong (``lg_echo_serve`` in
  ``_loadgen.c``, built with the load generator; Linux only): one thread, level-triggered
  epoll, read and send.  No Python server can spend less CPU per message than the system
  calls it makes.

Every server reads at most 64 KiB at a time and stops reading a connection whose unsent echo
exceeds 256 KiB (``c-epoll``: any unsent echo, at most 64 KiB), so a client that never reads
cannot grow the server without bound (portio's echo server promises the same).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from typing import Any

__all__ = ["BACKLOG", "NOTES", "PEERS", "EchoProtocol", "main"]

PEERS = ("asyncio", "uvloop", "trio", "selectors", "c-epoll")
# What a reader of a table or chart must be told about a peer.
NOTES = {"c-epoll": "a C epoll echo server (64 KiB reads): the kernel floor of ping-pong"}
_CHUNK = 65536
_HIGH_WATER = 256 * 1024
BACKLOG = 1024  # 100 connections at once must not overflow the accept queue


def _ready(kind: str, sock: socket.socket) -> None:
    host, port = sock.getsockname()[:2]
    print(f"peer echo server {kind} listening on {host}:{port}", flush=True)


def _listener(host: str, port: int) -> socket.socket:
    sock = socket.create_server((host, port), backlog=BACKLOG)
    sock.setblocking(False)
    return sock


class EchoProtocol(asyncio.Protocol):
    """Writes back what it receives; stops reading while the echo waits to be sent."""

    transport: Any  # asyncio.Transport, or uvloop's, which is not a subclass of it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


def serve_asyncio(host: str, port: int, use_uvloop: bool) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, stop.set_result, None)
            except NotImplementedError:  # Windows' loops have none: the signal ends the process
                break
        server = await loop.create_server(EchoProtocol, sock=_listener(host, port))
        _ready("uvloop" if use_uvloop else "asyncio", server.sockets[0])
        await stop
        server.close()

    if use_uvloop:
        import uvloop

        uvloop.run(run())
    else:
        asyncio.run(run())


def serve_trio(host: str, port: int) -> None:
    import trio

    async def handle(stream: Any) -> None:
        try:
            while True:
                data = await stream.receive_some(_CHUNK)
                if not data:
                    return
                await stream.send_all(data)
        except trio.BrokenResourceError:
            return

    async def run() -> None:
        listeners = await trio.open_tcp_listeners(port, host=host, backlog=BACKLOG)
        listening: Any = listeners[0].socket  # trio's own socket type wraps the real one
        _ready("trio", listening)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, handle, listeners)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

    trio.run(run)


def serve_selectors(host: str, port: int) -> None:
    import selectors

    sel = selectors.DefaultSelector()
    listener = _listener(host, port)
    sel.register(listener, selectors.EVENT_READ, None)
    pending: dict[socket.socket, bytearray] = {}
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _ready("selectors", listener)

    def drop(conn: socket.socket) -> None:
        sel.unregister(conn)
        pending.pop(conn, None)
        conn.close()

    while not stopping:
        for key, mask in sel.select(0.5):
            if key.data is None:
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                pending[conn] = bytearray()
                sel.register(conn, selectors.EVENT_READ, True)
                continue
            conn = key.fileobj  # type: ignore[assignment]
            backlog = pending[conn]
            try:
                if mask & selectors.EVENT_READ:
                    data = conn.recv(_CHUNK)
                    if not data:
                        drop(conn)
                        continue
                    if backlog:
                        backlog += data
                    else:
                        sent = conn.send(data)  # the common case: all of it, no copy
                        backlog += data[sent:]
                if mask & selectors.EVENT_WRITE and backlog:
                    del backlog[: conn.send(backlog)]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                drop(conn)
                continue
            events = selectors.EVENT_WRITE if backlog else 0
            if len(backlog) < _HIGH_WATER:
                events |= selectors.EVENT_READ
            if events != key.events:
                sel.modify(conn, events, True)
    for conn in list(pending):
        drop(conn)
    listener.close()
    sel.close()


def serve_c_epoll(host: str, port: int) -> None:
    from portio.bench import loadgen

    try:
        module: Any = loadgen.build()
    except RuntimeError as exc:
        sys.exit(f"c-epoll: {exc}")
    listener = _listener(host, port)
    # The C loop never returns to Python, so Python's SIGINT handler (which only sets a flag)
    # would never run: let SIGINT kill the process, as SIGTERM's default action does.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _ready("c-epoll", listener)
    err = module.lib.lg_echo_serve(listener.fileno())
    raise OSError(-err, f"c-epoll: epoll failed: {os.strerror(-err)}")


def main(argv: list[str] | None = None) -> int:
    """Run one peer server until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m portio.bench.peers",
                                     description="a peer echo server for the portio benchmark")
    parser.add_argument("kind", choices=PEERS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.kind in ("asyncio", "uvloop"):
        serve_asyncio(args.host, args.port, use_uvloop=args.kind == "uvloop")
    elif args.kind == "trio":
        serve_trio(args.host, args.port)
    elif args.kind == "c-epoll":
        serve_c_epoll(args.host, args.port)
    else:
        serve_selectors(args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
