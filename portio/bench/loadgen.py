"""The echo load generator: a small C program (``_loadgen.c``) built through cffi at first use.

Python cannot drive a Python server hard enough on two cores without becoming what is
measured, so the client is C: one thread, epoll, every echoed byte compared with what was sent
on that connection.  cffi compiles it (API mode) into a per-user cache directory the first time
it is needed; the module name carries a hash of the sources, so an edit rebuilds it.  cffi
releases the GIL around the calls, so the Python side stays responsive.

The same module carries ``lg_echo_serve``, the C reference echo server that
:mod:`portio.bench.peers` runs as the peer ``c-epoll``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import sysconfig
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["LoadGenerator", "Totals", "WindowStats", "build", "cache_dir"]

_HERE = Path(__file__).resolve().parent
_SOURCE = _HERE / "_loadgen.c"
_CDEF = _HERE / "_loadgen.cdef.h"
_build_lock = threading.Lock()
_module: ModuleType | None = None


def cache_dir() -> Path:
    """Where the compiled load generator lives: ``$PORTIO_BENCH_CACHE``, else the user cache."""
    explicit = os.environ.get("PORTIO_BENCH_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "portio-bench"


def build() -> ModuleType:
    """Compile the load generator if needed and return the loaded cffi module.

    Raises ``RuntimeError`` (with cffi's reason) when there is no C compiler or the build fails.
    """
    global _module
    with _build_lock:
        if _module is not None:
            return _module
        if not sys.platform.startswith("linux"):
            raise RuntimeError("the C load generator uses epoll: Linux only")
        source, cdef = _SOURCE.read_text(), _CDEF.read_text()
        tag = hashlib.sha256((source + cdef + sys.version).encode()).hexdigest()[:12]
        name = f"_portio_loadgen_{tag}"
        target = cache_dir()
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        path = target / f"{name}{suffix}"
        if not path.exists():
            import cffi  # a runtime dependency of portio anyway

            ffi = cffi.FFI()
            ffi.cdef(cdef)
            ffi.set_source(name, source, include_dirs=[str(_HERE)], extra_compile_args=["-O2"])
            target.mkdir(parents=True, exist_ok=True)
            try:
                built = ffi.compile(tmpdir=str(target / f"build-{tag}"), verbose=False)
            except Exception as exc:  # cffi raises VerificationError and distutils errors
                raise RuntimeError(f"could not build the C load generator: {exc}") from exc
            os.replace(built, path)
        loader = importlib.machinery.ExtensionFileLoader(name, str(path))
        spec = importlib.util.spec_from_file_location(name, path, loader=loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        _module = module
        return module


@dataclasses.dataclass
class WindowStats:
    """What one measured window saw (only messages completed inside it count)."""

    elapsed: float
    messages: int
    bytes: int
    p50_us: float
    p99_us: float
    max_us: float
    client_cpu: float


@dataclasses.dataclass
class Totals:
    """The whole session: every byte sent, and how many came back verified."""

    bytes_sent: int
    bytes_verified: int
    mismatches: int
    errors: int
    lost: int


class LoadGenerator:
    """``connections`` TCP connections to ``(host, port)``, each keeping ``window`` messages of
    ``message_size`` bytes in flight (1: ping-pong).  Traffic flows only inside
    :meth:`run_for`; :meth:`close` drains what is in flight and returns the :class:`Totals`."""

    def __init__(self, host: str, port: int, connections: int, message_size: int,
                 window: int = 1) -> None:
        self._lib: Any = build()
        ffi = self._lib.ffi
        error = ffi.new("char[]", 256)
        session = self._lib.lib.lg_open(host.encode(), port, connections, message_size, window,
                                        error, 256)
        if session == ffi.NULL:
            raise ConnectionError(f"load generator: {ffi.string(error).decode()}")
        self._session: Any = session

    def run_for(self, seconds: float) -> WindowStats:
        """Drive traffic for ``seconds`` and report that window."""
        if self._session is None:
            raise ValueError("load generator is closed")
        out = self._lib.ffi.new("struct lg_stats *")
        if self._lib.lib.lg_run_for(self._session, seconds, out) != 0:
            raise OSError("load generator: epoll_wait failed")
        return WindowStats(out.elapsed, out.messages, out.bytes, out.p50_us, out.p99_us,
                           out.max_us, out.client_cpu)

    def close(self, drain_seconds: float = 5.0) -> Totals:
        """Stop sending, wait for the echo of every byte in flight, close the connections."""
        if self._session is None:
            raise ValueError("load generator is closed")
        out = self._lib.ffi.new("struct lg_totals *")
        self._lib.lib.lg_close(self._session, drain_seconds, out)
        self._session = None
        return Totals(out.bytes_sent, out.bytes_verified, out.mismatches, out.errors, out.lost)
