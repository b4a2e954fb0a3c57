"""``portio-echo serve --workers N``: N server processes sharing one TCP port.

Each worker is a ``portio-echo serve --workers 1`` process with its own listening socket bound to
the same port with ``SO_REUSEPORT``, so the kernel spreads connections over them and the server
scales past one core despite the GIL.  This process only starts, watches and stops them.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys

from portio.echo.server import (
    SHUTDOWN_GRACE,
    STOP_POLL_INTERVAL,
    StopFlag,
    log,
    print_ready,
    ready_line,
)

__all__ = ["supervise"]


def supervise(args: argparse.Namespace, stop: StopFlag) -> int:
    """Run ``args.workers`` server processes until ``stop`` is set; the exit code."""
    if not hasattr(socket, "SO_REUSEPORT") or sys.platform == "win32":
        log.error("--workers needs SO_REUSEPORT (Linux or BSD); use --threads instead")
        return 2
    # For --port 0 the port must be chosen once for all workers: a bound (not listening)
    # placeholder with SO_REUSEPORT reserves it until the workers hold it themselves.  Not
    # listening, it is never handed a connection.
    placeholder = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    try:
        placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        placeholder.bind((args.host, args.port))
    except OSError as exc:
        placeholder.close()
        log.error("cannot bind %s:%d: %s", args.host, args.port, exc)
        return 2
    address = placeholder.getsockname()
    command = [sys.executable, "-m", "portio.echo", "serve", "--host", args.host,
               "--port", str(address[1]), "--model", args.model, "--workers", "1",
               "--reuse-port", "--max-clients", str(args.max_clients)]
    if args.backend:
        command += ["--backend", args.backend]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.verbose:
        command += ["--verbose"]
    children: list[subprocess.Popen[str]] = []
    ready: list[str] = []
    try:
        for _ in range(args.workers):
            child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            children.append(child)
            assert child.stdout is not None
            line = child.stdout.readline()  # the worker's ready line (or "" if it died)
            if not line.startswith("portio-echo ready"):
                log.error("worker %d failed to start (exit code %s)", child.pid, child.wait())
                return 2
            ready.append(line)
        placeholder.close()
        fields = dict(part.split("=", 1) for part in ready[0].split() if "=" in part)
        print_ready(ready_line(address, fields["backend"], args.model, int(fields["threads"]),
                                args.workers))
        while not stop.is_set:
            for child in children:
                if child.poll() is not None and not stop.is_set:
                    log.error("worker %d exited with code %d; stopping the others", child.pid,
                              child.returncode)
                    stop.set()
            stop.event.wait(STOP_POLL_INTERVAL)
    finally:
        placeholder.close()
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        failed = False
        for child in children:
            try:
                code = child.wait(SHUTDOWN_GRACE)
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not stop within %g s; killing it", child.pid,
                            SHUTDOWN_GRACE)
                child.kill()
                code = child.wait()
            failed |= code not in (0, -signal.SIGTERM)
            if child.stdout is not None:
                child.stdout.close()
    return 1 if failed else 0
