"""The ``portio-echo`` command line: ``serve`` (either server model, or N worker processes) and
``client``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import portio
from portio.echo.client import client
from portio.echo.server import EchoServer, StopFlag, log, open_listener, print_ready, ready_line
from portio.echo.supervisor import supervise

__all__ = ["DEFAULT_PORT", "build_parser", "main", "serve"]

DEFAULT_PORT = 9190
#: What a scripted run (``client --count``) uses for the options not given.
SCRIPTED_DEFAULTS = {"size": 64, "connections": 1}


def serve(args: argparse.Namespace) -> int:
    """``portio-echo serve``."""
    stop = StopFlag()
    stop.install()
    if args.workers > 1:
        return supervise(args, stop)
    try:
        # Concurrency 0, as the classic server's CreateIoCompletionPort(..., 0): the port runs
        # one thread per CPU this process may use, however many workers wait on it; more
        # workers than that only stand by (a worker blocked elsewhere lets another run).
        port = portio.open_port(args.backend)
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    threads = 1 if args.model == "routine" else (args.threads or port.concurrency)
    try:
        listener = open_listener(args.host, args.port, reuse_port=args.reuse_port)
    except OSError as exc:
        port.close()
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
        return 2
    server = EchoServer(listener, port, model=args.model, threads=threads,
                        max_clients=args.max_clients, stop=stop)
    print_ready(ready_line(listener.getsockname(), port.backend, args.model, threads))
    server.run()
    log.info("stopped%s", f" by {stop.signal_name}" if stop.signal_name else "")
    return 1 if server.failed else 0



# ---------------------------------------------------------------------- command line
def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``portio-echo`` command line."""
    parser = argparse.ArgumentParser(
        prog="portio-echo",
        description="The classic IOCP echo server and stable echo client, on a portio port.")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--host", default="127.0.0.1", help="address (default: %(default)s)")
        sub.add_argument("--port", type=_non_negative, default=DEFAULT_PORT,
                         help="TCP port (default: %(default)s; 0 = any free port, printed)")
        sub.add_argument("--backend", choices=sorted(portio.backend_status()), default=None,
                         help="portio backend (default: $PORTIO_BACKEND, else the best here)")
        sub.add_argument("-v", "--verbose", action="store_true",
                         help="log connects, disconnects and errors to stderr")

    serve_parser = commands.add_parser("serve", help="run the echo server")
    common(serve_parser)
    serve_parser.add_argument("--model", choices=("port", "routine"), default="port",
                              help="port: worker threads on get_many (default); "
                                   "routine: one thread, callbacks run by dispatch()")
    serve_parser.add_argument("--threads", type=_non_negative, default=0,
                              help="worker threads for --model port (default: CPU count)")
    serve_parser.add_argument("--workers", type=_positive, default=1,
                              help="server processes sharing the port with SO_REUSEPORT "
                                   "(Linux/BSD; default: 1)")
    serve_parser.add_argument("--max-clients", type=_non_negative, default=0,
                              help="refuse connections beyond this many (default: 0 = no limit)")
    serve_parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve_parser.set_defaults(run=serve)

    client_parser = commands.add_parser("client", help="run the stable echo client")
    common(client_parser)
    client_parser.add_argument("--count", type=_positive, default=None,
                               help="scripted run: messages per connection")
    # No defaults here: main() must tell "not given" from "given", see SCRIPTED_DEFAULTS.
    client_parser.add_argument("--size", type=_positive, default=None,
                               help="scripted run: bytes per message "
                                    f"(default: {SCRIPTED_DEFAULTS['size']})")
    client_parser.add_argument("--connections", type=_positive, default=None,
                               help="scripted run: concurrent connections "
                                    f"(default: {SCRIPTED_DEFAULTS['connections']})")
    client_parser.add_argument("--timeout", type=float, default=60.0,
                               help="give up after this many seconds (default: %(default)s)")
    client_parser.set_defaults(run=client)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``portio-echo``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "client":
        given = [f"--{name}" for name in SCRIPTED_DEFAULTS if getattr(args, name) is not None]
        if given and args.count is None:
            # Silently ignoring them would echo stdin instead of the run that was asked for.
            parser.error(f"{' and '.join(given)} only apply to a scripted run: "
                         "add --count N (messages per connection)")
        for name, default in SCRIPTED_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="portio-echo[%(process)d]: %(levelname)s %(message)s",
                        stream=sys.stderr)
    code: int = args.run(args)
    return code

