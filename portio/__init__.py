"""portio: one I/O completion port for every OS.

Start overlapped operations (accept, connect, recv, send, recvfrom, sendto, file read/write at
an offset), each carrying its own per-I/O ``data``; every completion is queued on the port with
the per-handle completion ``key``; any number of threads dequeue them with :meth:`get`,
:meth:`get_many` or, for operations started with ``callback=``, :meth:`dispatch`.

Backends, best first where they can run: ``iocp`` (Windows), ``io_uring`` (Linux), ``selector``
(anywhere: readiness emulation over :mod:`selectors`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading

from portio import _port
from portio._files import File, open_file
from portio._port import MAX_IO_SIZE, Completion, CompletionPort, Operation, PortBase
from portio.errors import BackendUnavailable, OperationCancelled, PortClosed


def _join_editable_install() -> bool:
    """True once ``__path__`` also holds an editable install of this very source tree.

    backends/ becomes portio.backends only when portio is installed (a setuptools package-dir
    mapping), so the source tree's portio/ alone is half a package.  It is imported anyway
    when Python runs in a checkout (the current directory comes first on ``sys.path``).  If
    the checkout is installed editable, the install (a tree of links to these same files)
    holds portio/backends/, and adding it to ``__path__`` makes the package whole again.
    """
    here = os.path.dirname(os.path.realpath(__file__))
    for entry in sys.path:
        candidate = os.path.join(entry or os.curdir, "portio")
        init = os.path.join(candidate, "__init__.py")
        if os.path.realpath(candidate) == here or not os.path.isfile(init):
            continue
        if os.path.dirname(os.path.realpath(init)) == here:
            __path__.append(candidate)
            return True
    return False


if importlib.util.find_spec("portio.backends") is None and not _join_editable_install():
    raise ImportError(
        f"portio was imported from the source tree {os.path.dirname(__file__)}, which has no "
        "portio.backends (backends/ is mapped in only by installing). Install this checkout "
        "(pip install -e .), or run Python outside the checkout to import an installed portio."
    )

__all__ = [
    "MAX_IO_SIZE",
    "BackendUnavailable",
    "COMPILED",
    "Completion",
    "CompletionPort",
    "File",
    "Operation",
    "OperationCancelled",
    "PortClosed",
    "available_backends",
    "backend_status",
    "open_file",
    "open_port",
]

__version__ = "0.1.0"

#: True when the hot path (the shared port and the Linux backends) runs as the compiled build
#: that ``pip install`` makes with mypyc on Linux; False when it runs as pure Python (an
#: editable install, ``PORTIO_PURE=1``, no compiler, or another OS).  The behaviour is the same
#: code either way; only the speed differs.
COMPILED: bool = not (_port.__file__ or "").endswith(".py")

# name -> (module, class); the order of BACKEND_PREFERENCE is "best first" per platform.
_BACKENDS = {
    "iocp": ("portio.backends.iocp", "IocpPort"),
    "io_uring": ("portio.backends.uring", "UringPort"),
    "selector": ("portio.backends.selector", "SelectorPort"),
}
_PREFERENCE = {"win32": ("iocp", "selector"), "linux": ("io_uring", "selector")}

_status_lock = threading.Lock()
_status_cache: dict[str, str | None] | None = None


def _backend_class(name: str) -> type[PortBase]:
    module_name, class_name = _BACKENDS[name]
    cls: type[PortBase] = getattr(importlib.import_module(module_name), class_name)
    return cls


def _probe(name: str) -> str | None:
    """None if backend ``name`` can run here, else the reason it cannot."""
    preferred = _PREFERENCE.get(sys.platform, ("selector",))
    if name not in preferred:
        return f"{name} does not exist on {sys.platform}"
    try:
        cls = _backend_class(name)
        cls.probe()
    except BackendUnavailable as exc:
        return str(exc)
    except ImportError as exc:
        return f"{name} backend could not be imported: {exc}"
    return None


def backend_status(refresh: bool = False) -> dict[str, str | None]:
    """Every known backend mapped to ``None`` if it can run here, else the reason it cannot.

    Probing *tries* each backend (a kernel may refuse io_uring at run time); the answer is
    cached for the process unless ``refresh`` is true.  Print it to learn why a backend is left
    out of :func:`available_backends`.
    """
    global _status_cache
    with _status_lock:
        if _status_cache is None or refresh:
            _status_cache = {name: _probe(name) for name in _BACKENDS}
        return dict(_status_cache)


def available_backends() -> list[str]:
    """The backends that can run on this machine now, best first."""
    status = backend_status()
    preferred = _PREFERENCE.get(sys.platform, ("selector",))
    return [name for name in preferred if status[name] is None]


def open_port(backend: str | None = None, *, concurrency: int = 0) -> CompletionPort:
    """Open a completion port.

    ``backend`` is ``"iocp"``, ``"io_uring"`` or ``"selector"``; ``None`` means
    ``$PORTIO_BACKEND`` if set, else the best available.  ``concurrency`` caps how many threads
    are released from ``get``/``get_many`` at once (0: one per CPU).

    Raises ``ValueError`` for an unknown backend name and :class:`BackendUnavailable` (saying
    why) for a known one that cannot run here.
    """
    if backend is None:
        backend = os.environ.get("PORTIO_BACKEND") or None
    if backend is None:
        names = available_backends()
        if not names:  # cannot happen while selector works, but say why if it does
            raise BackendUnavailable(f"no backend can run here: {backend_status()}")
        backend = names[0]
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str or None, not {type(backend).__name__}")
    if backend not in _BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(_BACKENDS)}")
    reason = backend_status()[backend]
    if reason is not None:
        raise BackendUnavailable(f"backend {backend!r} is unavailable: {reason}")
    return _backend_class(backend)(concurrency)
