"""Choosing and opening backends; the port's basic properties."""

from __future__ import annotations

import os
import sys

import pytest

import portio


def test_selector_is_always_available() -> None:
    assert "selector" in portio.available_backends()


def test_status_names_every_backend_and_says_why_one_is_missing() -> None:
    status = portio.backend_status()
    assert set(status) == {"iocp", "io_uring", "selector"}
    for name, reason in status.items():
        if name in portio.available_backends():
            assert reason is None
        else:
            assert isinstance(reason, str) and reason


def test_available_backends_are_best_first() -> None:
    names = portio.available_backends()
    if sys.platform == "win32" and "iocp" in names:
        assert names[0] == "iocp"
    if sys.platform == "linux" and "io_uring" in names:
        assert names[0] == "io_uring"
    assert names[-1] == "selector"


def test_default_backend_is_the_best(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORTIO_BACKEND", raising=False)
    with portio.open_port() as port:
        assert port.backend == portio.available_backends()[0]


def test_environment_variable_picks_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTIO_BACKEND", "selector")
    with portio.open_port() as port:
        assert port.backend == "selector"


def test_unknown_backend_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        portio.open_port("kqueue-please")


def test_backend_name_must_be_a_string() -> None:
    with pytest.raises(TypeError):
        portio.open_port(3)  # type: ignore[arg-type]


def test_unavailable_backend_says_why() -> None:
    missing = [name for name, why in portio.backend_status().items() if why is not None]
    if not missing:
        pytest.skip(f"every backend runs on {sys.platform}")
    with pytest.raises(portio.BackendUnavailable, match=missing[0]):
        portio.open_port(missing[0])


def test_port_properties(backend: str) -> None:
    port = portio.open_port(backend, concurrency=3)
    assert isinstance(port, portio.CompletionPort)
    assert port.backend == backend
    assert port.concurrency == 3
    assert not port.closed
    port.close()
    assert port.closed
    port.close()  # idempotent


def test_a_port_keeps_its_state_in_slots(backend: str) -> None:
    """No instance dict: interpreted, a port whose attributes outgrow CPython's inline values
    (30) gets a real dict, and every attribute and method lookup of its hot path slows down
    (see PortBase.__slots__).  One class without slots anywhere in its chain would give it one."""
    with portio.open_port(backend) as port:
        assert not hasattr(port, "__dict__"), type(port).__mro__


def test_concurrency_zero_means_one_per_usable_cpu(backend: str) -> None:
    if hasattr(os, "sched_getaffinity"):
        usable = len(os.sched_getaffinity(0))
    else:
        usable = os.cpu_count() or 1
    with portio.open_port(backend) as port:
        assert port.concurrency == usable


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_bad_concurrency(backend: str, bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        portio.open_port(backend, concurrency=bad)  # type: ignore[arg-type]


def test_context_manager_closes(backend: str) -> None:
    with portio.open_port(backend) as port:
        pass
    assert port.closed
    with pytest.raises(portio.PortClosed):
        port.post()


def test_errors_are_the_documented_types() -> None:
    assert issubclass(portio.OperationCancelled, OSError)
    assert portio.OperationCancelled().errno == __import__("errno").ECANCELED
    assert issubclass(portio.PortClosed, ValueError)
    assert issubclass(portio.BackendUnavailable, OSError)
