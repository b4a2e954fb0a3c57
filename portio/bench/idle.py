"""What an idle connection costs an echo server: its resident memory per connection.

:func:`measure` starts a server as its own process (any command that prints a ready line with
``HOST:PORT``, as ``portio-echo serve`` and ``python -m portio.bench.peers KIND`` do), opens
``connections`` loopback connections to it, makes one 64-byte round trip on each and checks
every echoed byte, leaves them all open and idle, and reads the server's RSS
(``/proc/PID/status`` VmRSS) before and after.  Linux only (the server may be a Windows
process under Wine, which is a Linux process too: see ``tools/wine-idle.sh``).

:func:`run_idle` is the benchmark's row (``python -m portio.bench``): portio's port-model server
on every backend against asyncio's Protocol server and uvloop, measured in the same run.  Run as
a script for other counts: ``python -m portio.bench.idle 5000 15000``, or for other servers:

    python -m portio.bench.idle --server NAME=COMMAND [--server ...] [--pid-of REGEX]
        [--also NAME=PID ...] [--repeat R] COUNT...

``--pid-of`` measures not the started process but its descendant whose command line matches
REGEX (a launcher's child, such as Wine's python.exe); ``--also`` measures more processes that
grow with the server's connections (``kib_per_connection_NAME``, such as the wineserver); with
``--repeat`` each server is measured R times, interleaved, and a summary line per server gives
the median and the spread (min, max) of each figure (``--summarize FILE`` gives it for rows
saved from several runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

#: Connections opened, then verified, per batch: below the servers' listen backlogs, so no SYN
#: is dropped (a dropped SYN costs a 1 s retransmit).
BATCH = 250
MESSAGE = 64
_ADDRESS = re.compile(r"(\d+\.\d+\.\d+\.\d+):(\d+)")


def raise_fd_limit(needed: int) -> int:
    """Raise the soft descriptor limit toward the hard one (children inherit it); return the
    soft limit now."""
    if sys.platform == "win32":
        return needed  # no per-process limit on handles to raise (and no /proc to measure)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        soft = min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def rss_of(pid: int) -> int:
    """The resident set size of process ``pid``, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def parent_of(stat: str) -> int:
    """The parent pid in the text of a ``/proc/PID/stat`` file."""
    # field 2, the command name, is in parentheses and may itself hold spaces and ")"
    return int(stat[stat.rindex(")") + 2:].split()[1])


def descendant(pid: int, pattern: str, timeout: float = 30.0) -> int:
    """The pid of the descendant of process ``pid`` whose command line (arguments joined by
    spaces) matches the regular expression ``pattern``, waiting up to ``timeout`` seconds for
    it to appear."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        parents: dict[int, int] = {}
        for name in os.listdir("/proc"):
            try:
                with open(f"/proc/{name}/stat") as f:
                    parents[int(name)] = parent_of(f.read())
            except (ValueError, OSError):  # not a process, or one that just exited
                continue
        for child in sorted(parents):
            ancestor = parents[child]
            while ancestor > 1 and ancestor != pid:
                ancestor = parents.get(ancestor, 0)
            if ancestor != pid:
                continue
            try:
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    cmdline = f.read().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if regex.search(cmdline):
                return child
        if time.monotonic() > deadline:
            raise RuntimeError(f"no descendant of pid {pid} has a command line matching "
                               f"{pattern!r}")
        time.sleep(0.1)


def start_server(argv: list[str]) -> tuple[subprocess.Popen[bytes], tuple[str, int]]:
    """Start the server ``argv``; return it and the address its ready line names."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline().decode(errors="replace") if ready else ""
    match = _ADDRESS.search(line)
    if match is None:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{argv} printed no ready line (got {line!r})")
    return proc, (match.group(1), int(match.group(2)))


def _round_trips(socks: list[socket.socket], first: int) -> int:
    """One verified 64-byte round trip on each of ``socks``; return the bytes verified."""
    payloads = []
    for i, sock in enumerate(socks):
        payload = (b"%08d" % (first + i)) * (MESSAGE // 8)
        payloads.append(payload)
        sock.sendall(payload)
    for sock, payload in zip(socks, payloads, strict=True):
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(len(payload) - len(got))
            if not chunk:
                raise AssertionError(f"the server closed connection {first} early")
            got += chunk
        if got != payload:
            raise AssertionError(f"connection echoed {got!r}, not {payload!r}")
    return sum(map(len, payloads))


def measure(argv: list[str], connections: int, settle: float = 1.0, pid_of: str | None = None,
            also: dict[str, int] | None = None) -> dict[str, Any]:
    """Serve ``connections`` idle, verified connections with the server ``argv``; return its
    RSS before and with them open, and KiB per connection.

    ``pid_of``: measure (and at the end terminate) the descendant of ``argv``'s process whose
    command line matches this regular expression, not the process itself.  ``also``: more
    processes, by name and pid, whose growth is reported as ``kib_per_connection_NAME``."""
    also = also or {}
    proc, address = start_server(argv)
    server = proc.pid
    socks: list[socket.socket] = []
    try:
        if pid_of is not None:
            server = descendant(proc.pid, pid_of)
        with socket.create_connection(address, timeout=10) as warm:  # first-use costs
            _round_trips([warm], 0)
        time.sleep(settle)
        before = rss_of(server)
        others = {name: rss_of(pid) for name, pid in also.items()}
        verified = 0
        while len(socks) < connections:
            batch = [socket.create_connection(address, timeout=30)
                     for _ in range(min(BATCH, connections - len(socks)))]
            verified += _round_trips(batch, len(socks))
            socks.extend(batch)
        time.sleep(settle)  # idle: every connection waits in a receive
        idle = rss_of(server)
        grown = {f"kib_per_connection_{name}": kib_per_connection(rss_of(also[name]) - rss,
                                                                  connections)
                 for name, rss in others.items()}
        if proc.poll() is not None:
            raise RuntimeError(f"{argv} exited while measured")
        return {"connections": connections, "bytes_verified": verified,
                "rss_before_mib": round(before / 2**20, 1), "rss_idle_mib": round(idle / 2**20, 1),
                "kib_per_connection": kib_per_connection(idle - before, connections), **grown}
    finally:
        for sock in socks:
            sock.close()
        if server != proc.pid:  # a launcher (Wine's, say) need not pass its signal on
            with contextlib.suppress(OSError):  # already gone
                os.kill(server, signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kib_per_connection(grown: int, connections: int) -> float:
    """``grown`` bytes of memory spread over ``connections``, in KiB each."""
    return round(grown / connections / 1024, 2)


def portio_server(backend: str) -> list[str]:
    """``portio-echo serve`` on ``backend``, the port model with its default threads."""
    return [sys.executable, "-m", "portio.echo", "serve", "--host", "127.0.0.1", "--port", "0",
            "--backend", backend]


def peer_server(kind: str) -> list[str]:
    """One of portio.bench's peer echo servers (asyncio, uvloop, ...)."""
    return [sys.executable, "-m", "portio.bench.peers", kind]


def idle_servers(backends: list[str], peer_kinds: list[str]) -> dict[str, list[str]]:
    """The servers of the idle row: ``BACKEND/port`` for each backend, then the peers."""
    servers = {f"{backend}/port": portio_server(backend) for backend in backends}
    servers.update({kind: peer_server(kind) for kind in peer_kinds})
    return servers


def run_idle(servers: dict[str, list[str]], connections: int, progress: Any = None,
             **how: Any) -> list[dict[str, Any]]:
    """Measure each of ``servers`` with ``connections`` idle connections, one after another
    (``how``: :func:`measure`'s keyword arguments); a server that cannot run here (or fails)
    gets an ``error`` instead of figures."""
    raise_fd_limit(connections + 512)
    rows = []
    for name, argv in servers.items():
        if progress is not None:
            progress(f"idle connections: measuring {name} ({connections})")
        try:
            rows.append({"server": name, **measure(argv, connections, **how)})
        except (OSError, RuntimeError, AssertionError) as exc:
            rows.append({"server": name, "connections": connections,
                         "error": f"{type(exc).__name__}: {exc}"})
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per server and count over repeated measurements: the median, min and max of
    each ``kib_per_connection*`` figure, over the runs that gave one (failed runs are counted
    in ``errors``)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["server"], row["connections"]), []).append(row)
    summary = []
    for (server, connections), runs in groups.items():
        good = [run for run in runs if "error" not in run]
        line: dict[str, Any] = {"server": server, "connections": connections,
                                "runs": len(good), "errors": len(runs) - len(good)}
        for key in sorted({key for run in good for key in run if key.startswith("kib_per_")}):
            values = [run[key] for run in good if key in run]
            line[key] = {"median": round(statistics.median(values), 2),
                         "min": min(values), "max": max(values)}
        summary.append(line)
    return summary


def _named(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m portio.bench.idle",
                                     description="Server memory per idle connection.")
    parser.add_argument("counts", nargs="*", type=int, default=[5000], metavar="COUNT")
    parser.add_argument("--server", action="append", type=_named, default=[],
                        metavar="NAME=COMMAND", help="measure this server (default: portio's "
                        "io_uring and selector, asyncio, uvloop)")
    parser.add_argument("--pid-of", metavar="REGEX",
                        help="measure the descendant whose command line matches REGEX")
    parser.add_argument("--also", action="append", type=_named, default=[], metavar="NAME=PID",
                        help="also report the growth of process PID")
    parser.add_argument("--repeat", type=int, default=1, metavar="R")
    parser.add_argument("--summarize", metavar="FILE",
                        help="measure nothing: print the summary of the JSON rows in FILE")
    args = parser.parse_args(argv)
    if args.summarize is not None:
        with open(args.summarize) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        for line in summarize(rows):
            print(json.dumps({"summary": line}), flush=True)
        return 0
    if args.repeat < 1 or any(count < 1 for count in args.counts):
        parser.error("--repeat and every COUNT must be at least 1")
    servers = ({name: shlex.split(command) for name, command in args.server} or
               idle_servers(["io_uring", "selector"], ["asyncio", "uvloop"]))
    also = {name: int(pid) for name, pid in args.also}
    rows = []
    for count in args.counts:
        for _ in range(args.repeat):
            for row in run_idle(servers, count, pid_of=args.pid_of, also=also):
                print(json.dumps(row), flush=True)
                rows.append(row)
    if args.repeat > 1:
        for line in summarize(rows):
            print(json.dumps({"summary": line}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
