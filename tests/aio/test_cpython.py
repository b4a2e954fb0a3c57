"""CPython's own asyncio event-loop tests, run on portio's loop for every backend.

The tests are not copied here: they are imported at test time from the interpreter's ``test``
package (``test.test_asyncio``, shipped with CPython; Debian-style systems split it out into
``libpythonX.Y-testsuite``), and each mixin is subclassed once per backend with a
``create_event_loop()`` that returns a :class:`portio.asyncio.PortioEventLoop`.

A test the mixins do not skip themselves but that cannot pass on this loop is listed in
:data:`EXCLUDED` with the reason; nothing else is skipped.  The mixins take about a minute per
backend, so they carry the ``asyncio_mixins`` marker: not in the default run, run them with
``pytest -m asyncio_mixins tests/aio``.
"""

from __future__ import annotations

import sys
import unittest
from typing import Any

import pytest

from portio.asyncio import PortioEventLoop
from tests.conftest import backends_under_test

try:
    from test import support
    from test.test_asyncio import test_events, test_sendfile, test_sock_lowlevel, test_streams
    from test.test_asyncio import utils as test_utils
except ImportError as exc:  # e.g. Debian's python3 without libpythonX.Y-testsuite
    MISSING: str | None = (f"CPython's test package test.test_asyncio is not installed "
                           f"({exc}); install the interpreter's test suite (Debian: "
                           f"libpython{sys.version_info[0]}.{sys.version_info[1]}-testsuite; "
                           "Windows: the installer's test suite option, or CPython's Lib/test "
                           "of this version on PYTHONPATH)")
else:
    MISSING = None

_NO_READINESS = "a proactor loop has no add_reader/add_writer (asyncio's ProactorEventLoop " \
                "skips these tests too)"
_NO_PIPES = "connect_read_pipe/connect_write_pipe on an os.pipe or a pty: the CompletionPort " \
            "API receives and sends on sockets only, and read/write need a seekable file"

#: test name -> why it cannot pass on portio's loop.  Every other test runs.
EXCLUDED: dict[str, str] = {
    "test_reader_callback": _NO_READINESS,
    "test_reader_callback_cancel": _NO_READINESS,
    "test_writer_callback": _NO_READINESS,
    "test_writer_callback_cancel": _NO_READINESS,
    "test_remove_fds_after_closing": _NO_READINESS,
    "test_add_fds_after_closing": _NO_READINESS,
    "test_read_pipe": _NO_PIPES,
    "test_read_pty_output": _NO_PIPES,
    "test_write_pipe": _NO_PIPES,
    "test_write_pipe_disconnect_on_close": _NO_PIPES,
    "test_write_pty": _NO_PIPES,
    "test_bidirectional_pty": _NO_PIPES,
    "test_unclosed_pipe_transport": _NO_PIPES,
    "test_read_all_from_pipe_reader": _NO_PIPES,
    "test_sendto_blocking": "patches socket.sendto to raise BlockingIOError, which only a selector "
                            "loop calls (asyncio skips it for its ProactorEventLoop too)",
}

if sys.platform == "win32":
    _NO_WINDOWS_PIPES = ("subprocess PIPEs on Windows raise NotImplementedError: a child's stdio "
                         "would be a pipe HANDLE, and the CompletionPort API has no operation "
                         "on pipes (only sockets, and files at an offset)")
    EXCLUDED.update(dict.fromkeys((
        "test_subprocess_close_client_stream", "test_subprocess_exec",
        "test_subprocess_interactive", "test_subprocess_kill", "test_subprocess_shell",
        "test_subprocess_stderr", "test_subprocess_stderr_redirect_to_stdout",
        "test_subprocess_terminate"), _NO_WINDOWS_PIPES))


def _skipper(reason: str) -> Any:
    def test(self: unittest.TestCase) -> None:
        raise unittest.SkipTest(reason)
    return test


def _suite_classes() -> dict[str, tuple[type, ...]]:
    if MISSING is not None:
        return {}
    return {
        "EventLoop": (test_events.EventLoopTestsMixin, test_events.SubprocessTestsMixin),
        "SockLowlevel": (test_sock_lowlevel.BaseSockTestsMixin,),
        "Sendfile": (test_sendfile.SendfileTestsBase,),
    }


def _make(name: str, backend: str, bases: tuple[type, ...]) -> type:
    def create_event_loop(self: unittest.TestCase) -> PortioEventLoop:
        return PortioEventLoop(backend)

    namespace: dict[str, Any] = {"create_event_loop": create_event_loop,
                                 "__module__": __name__, "__qualname__": name}
    for test, reason in EXCLUDED.items():
        if any(hasattr(base, test) for base in bases):
            namespace[test] = _skipper(reason)
    return type(name, (*bases, test_utils.TestCase), namespace)


def _make_streams(name: str, backend: str) -> type:
    def set_up(self: Any) -> None:
        # StreamTests.setUp makes asyncio.new_event_loop(): replace it by a portio loop
        test_utils.TestCase.setUp(self)
        self.loop = PortioEventLoop(backend)
        self.set_event_loop(self.loop)

    def tear_down(self: Any) -> None:
        test_streams.StreamTests.tearDown(self)
        # A test that ends with a connection still open (test_start_tls: 3.11's
        # Server.wait_closed does not wait for connections) leaves a transport <-> protocol
        # cycle; collect it now, as the EventLoopTestsMixin tearDown does, or its
        # ResourceWarning lands in whichever later test collects garbage
        # (test_unclosed_resource_warnings counts them).
        support.gc_collect()

    namespace: dict[str, Any] = {"setUp": set_up, "tearDown": tear_down,
                                 "__module__": __name__, "__qualname__": name}
    for test, reason in EXCLUDED.items():
        if hasattr(test_streams.StreamTests, test):
            namespace[test] = _skipper(reason)
    return type(name, (test_streams.StreamTests,), namespace)


for _backend in backends_under_test():
    for _suite, _bases in _suite_classes().items():
        _name = f"Test{_suite}_{_backend}"
        globals()[_name] = _make(_name, _backend, _bases)
    if MISSING is None:
        _name = f"TestStreams_{_backend}"
        globals()[_name] = _make_streams(_name, _backend)


if MISSING is not None:
    def test_cpython_asyncio_tests() -> None:
        """Stands for the mixin tests, which cannot run here: say why."""
        pytest.skip(MISSING or "")
