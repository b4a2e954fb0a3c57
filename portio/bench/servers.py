"""The servers under test: how to start each as its own process, and how the OS accounts for it.

Every server, portio's and the peers, runs as a subprocess started the same way, prints one
ready line containing ``HOST:PORT``, and is stopped with SIGTERM.  While it runs, its CPU time
comes from the kernel's accounting of the whole process (``/proc/PID/stat`` utime + stime, all
threads), and its peak RSS from ``VmHWM`` in ``/proc/PID/status``; writing ``5`` to
``/proc/PID/clear_refs`` resets that peak, so each measurement gets its own.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from portio.bench import loadgen
from portio.bench.peers import NOTES, PEERS

__all__ = ["ServerProcess", "ServerSpec", "allowed_cpus", "available_servers", "pin_to",
           "why_unavailable"]

if sys.platform == "linux":
    def allowed_cpus() -> set[int] | None:
        """The CPUs this process may run on (None where the OS cannot say)."""
        return os.sched_getaffinity(0)

    def pin_to(cpus: set[int]) -> None:
        """Restrict this process (threads started later inherit it) to ``cpus``."""
        os.sched_setaffinity(0, cpus)
else:
    def allowed_cpus() -> set[int] | None:
        """The CPUs this process may run on (None where the OS cannot say)."""
        return None

    def pin_to(cpus: set[int]) -> None:
        """Pinning is not supported here: do nothing."""

_ADDRESS = re.compile(r"(\d+\.\d+\.\d+\.\d+):(\d+)")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclasses.dataclass(frozen=True)
class ServerSpec:
    """One server configuration: a short ``name`` for tables, the ``argv`` that starts it, and
    ``family`` ("portio" or "peer") and ``backend``/``model``/``threads`` for portio's; ``note``
    is what a reader of the results must be told about it (e.g. that it is the C floor)."""

    name: str
    argv: tuple[str, ...]
    family: str
    backend: str | None = None
    model: str | None = None
    threads: int | None = None
    note: str | None = None


def why_unavailable(kind: str) -> str | None:
    """Why the peer ``kind`` cannot run here, or None when it can."""
    if kind in ("asyncio", "selectors"):
        return None
    if kind == "c-epoll":
        if not sys.platform.startswith("linux"):
            return "c-epoll is an epoll server (Linux only): not measured"
        # Build it here, once: the server process then loads it from the cache instead of
        # compiling it while its ready line is awaited.
        try:
            loadgen.build()
        except RuntimeError as exc:
            return (f"c-epoll cannot be built, it needs a C compiler and Python headers ({exc}): "
                    "not measured")
        return None
    if importlib.util.find_spec(kind) is None:
        return f"{kind} is not installed (pip install 'portio[bench]'): not measured"
    return None


def available_servers(backends: Sequence[str], threads: int) -> tuple[list[ServerSpec], list[str]]:
    """The servers that can run here, and notes on those that cannot.

    For each portio backend: the port model with 1 thread and with ``threads`` threads, and the
    routine model; then every peer whose library is installed (``c-epoll``: that can be built).
    """
    specs: list[ServerSpec] = []
    notes: list[str] = []
    if importlib.util.find_spec("portio.echo") is None:
        notes.append("portio.echo is not installed: no portio servers measured")
        backends = ()
    for backend in backends:
        for model, count in (("port", 1), ("port", threads), ("routine", 1)):
            name = f"{backend}/{model}" + (f"x{count}" if model == "port" else "")
            argv: tuple[str, ...] = (
                sys.executable, "-m", "portio.echo", "serve", "--host", "127.0.0.1",
                "--port", "0", "--backend", backend, "--model", model)
            if model == "port":
                argv += ("--threads", str(count))
            specs.append(ServerSpec(name, argv, "portio", backend, model, count))
    # The same asyncio Protocol echo server as the asyncio peer, on portio's event loop.  Its
    # backend is in the name, not in ``backend``: it is not portio's own server, and the
    # targets that judge portio's servers per backend must not pick it up.
    for backend in backends:
        specs.append(ServerSpec(
            f"asyncio@{backend}",
            (sys.executable, "-m", "portio.asyncio._echo", "--backend", backend),
            "portio", note=f"asyncio's Protocol echo server on portio's event loop ({backend})"))
    for kind in PEERS:
        reason = why_unavailable(kind)
        if reason is None:
            specs.append(ServerSpec(kind, (sys.executable, "-m", "portio.bench.peers", kind),
                                    "peer", note=NOTES.get(kind)))
        else:
            notes.append(reason)
    return specs, notes


class ServerProcess:
    """A running server: started pinned to ``cpus`` (when given), stopped by :meth:`stop`."""

    def __init__(self, spec: ServerSpec, cpus: set[int] | None = None,
                 ready_timeout: float = 30.0) -> None:
        self.spec = spec
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server)
        self._stderr_text = ""

        def pin() -> None:  # in the child, before exec: every thread it starts inherits it
            if cpus:
                pin_to(cpus)

        self.process = subprocess.Popen(
            spec.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr,
            preexec_fn=pin if cpus else None)  # noqa: PLW1509 (the parent has no threads yet)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], ready_timeout)
        line = self.process.stdout.readline().decode(errors="replace") if ready else ""
        match = _ADDRESS.search(line)
        if match is None:
            self.process.kill()
            self.process.wait()
            tail = self.stderr_tail()
            self.stop()
            raise RuntimeError(f"{spec.name} did not print a ready line "
                               f"(got {line.strip()!r}); stderr: {tail}")
        self.host, self.port = match.group(1), int(match.group(2))

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def alive(self) -> bool:
        """True while the server process runs."""
        return self.process.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the whole process (all threads) so far."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)

    def reset_peak_rss(self) -> None:
        """Make the next :meth:`peak_rss_mib` the peak from now on (best effort)."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def peak_rss_mib(self) -> float | None:
        """Peak resident set size since start or the last reset, in MiB (None if unknown)."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def stderr_tail(self, limit: int = 2000) -> str:
        """The last ``limit`` characters the server wrote to stderr."""
        if not self._stderr.closed:
            self._stderr.seek(0)
            self._stderr_text = self._stderr.read().decode(errors="replace")
        return self._stderr_text[-limit:]

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.stderr_tail()  # kept for messages after the file is gone
        self._stderr.close()
        return self.process.returncode
