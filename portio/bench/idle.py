"""What an idle connection costs an echo server: its resident memory per connection.

:func:`measure` starts a server as its own process (any command that prints a ready line with
``HOST:PORT``, as ``portio-echo serve`` and ``python -m portio.bench.peers KIND`` do), opens
``connections`` loopback connections to it, makes one 64-byte round trip on each and checks
every echoed byte, leaves them all open and idle, and reads the server's RSS
(``/proc/PID/status`` VmRSS) before and after.  Linux only.

:func:`run_idle` is the benchmark's row (``python -m portio.bench``): portio's port-model server
on every backend against asyncio's Protocol server and uvloop, measured in the same run.  Run as
a script for other counts: ``python -m portio.bench.idle 5000 15000``.
"""

from __future__ import annotations

import json
import re
import select
import signal
import socket
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


def measure(argv: list[str], connections: int, settle: float = 1.0) -> dict[str, Any]:
    """Serve ``connections`` idle, verified connections with the server ``argv``; return its
    RSS before and with them open, and KiB per connection."""
    proc, address = start_server(argv)
    socks: list[socket.socket] = []
    try:
        with socket.create_connection(address, timeout=10) as warm:  # first-use costs
            _round_trips([warm], 0)
        time.sleep(settle)
        before = rss_of(proc.pid)
        verified = 0
        while len(socks) < connections:
            batch = [socket.create_connection(address, timeout=30)
                     for _ in range(min(BATCH, connections - len(socks)))]
            verified += _round_trips(batch, len(socks))
            socks.extend(batch)
        time.sleep(settle)  # idle: every connection waits in a receive
        idle = rss_of(proc.pid)
        if proc.poll() is not None:
            raise RuntimeError(f"{argv} exited while measured")
        return {"connections": connections, "bytes_verified": verified,
                "rss_before_mib": round(before / 2**20, 1), "rss_idle_mib": round(idle / 2**20, 1),
                "kib_per_connection": round((idle - before) / connections / 1024, 2)}
    finally:
        for sock in socks:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


def run_idle(servers: dict[str, list[str]], connections: int,
             progress: Any = None) -> list[dict[str, Any]]:
    """Measure each of ``servers`` with ``connections`` idle connections, one after another;
    a server that cannot run here (or fails) gets an ``error`` instead of figures."""
    raise_fd_limit(connections + 512)
    rows = []
    for name, argv in servers.items():
        if progress is not None:
            progress(f"idle connections: measuring {name} ({connections})")
        try:
            rows.append({"server": name, **measure(argv, connections)})
        except (OSError, RuntimeError, AssertionError) as exc:
            rows.append({"server": name, "connections": connections,
                         "error": f"{type(exc).__name__}: {exc}"})
    return rows


def main(argv: list[str]) -> int:
    counts = [int(a) for a in argv] or [5000]
    servers = idle_servers(["io_uring", "selector"], ["asyncio", "uvloop"])
    for count in counts:
        for row in run_idle(servers, count):
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
