"""The benchmark's asyncio echo server, on portio's loop.

``python -m portio.asyncio._echo [--backend B] [--host H] [--port P]`` serves until
SIGTERM/SIGINT and prints one ready line,
``portio.asyncio echo server backend=B listening on HOST:PORT``.  It is the benchmark's
``asyncio`` peer, the same class (``portio.bench.peers.EchoProtocol``: an ``asyncio.Protocol``
whose ``data_received`` writes the data back), run on
:class:`portio.asyncio.PortioEventLoop` instead of asyncio's own loop: the difference between
the two measures the loop, nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys

import portio.asyncio
from portio.bench.peers import BACKLOG, EchoProtocol

__all__ = ["main", "serve"]

async def _serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    if sys.platform != "win32":
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set_result, None)
    listener = socket.create_server((host, port), backlog=BACKLOG)
    server = await loop.create_server(EchoProtocol, sock=listener)
    address = server.sockets[0].getsockname()
    backend = loop.backend if isinstance(loop, portio.asyncio.PortioEventLoop) else "?"
    print(f"portio.asyncio echo server backend={backend} listening on "
          f"{address[0]}:{address[1]}", flush=True)
    await stop
    server.close()


def serve(host: str = "127.0.0.1", port: int = 0, backend: str | None = None) -> None:
    """Run the echo server on a :class:`~portio.asyncio.PortioEventLoop` on ``backend``
    until SIGTERM/SIGINT (Windows: until interrupted)."""
    loop = portio.asyncio.new_event_loop(backend)
    try:
        loop.run_until_complete(_serve(host, port))
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(prog="python -m portio.asyncio._echo",
                                     description="asyncio Protocol echo on portio's loop")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
