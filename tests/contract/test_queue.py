"""The queue itself: posts, get/get_many, timeouts, many threads, the concurrency cap, close."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

import portio
from tests.contract.support import WAIT


def test_post_and_get_carry_key_nbytes_and_data(port: portio.CompletionPort) -> None:
    port.post("key", nbytes=42, data={"per": "io"})
    completion = port.get(timeout=WAIT)
    assert completion.kind == "post"
    assert completion.op is None
    assert completion.key == "key"
    assert completion.nbytes == 42
    assert completion.data == {"per": "io"}
    assert completion.error is None


def test_completions_come_out_fifo(port: portio.CompletionPort) -> None:
    for i in range(100):
        port.post(i)
    assert [port.get(timeout=WAIT).key for _ in range(100)] == list(range(100))


def test_get_times_out(port: portio.CompletionPort) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        port.get(timeout=0.05)
    assert time.monotonic() - started < WAIT


def test_get_with_zero_timeout_polls(port: portio.CompletionPort) -> None:
    with pytest.raises(TimeoutError):
        port.get(timeout=0)
    port.post(1)
    assert port.get(timeout=0).key == 1


def test_get_many_takes_what_is_queued_up_to_max(port: portio.CompletionPort) -> None:
    for i in range(10):
        port.post(i)
    first = port.get_many(max_entries=4, timeout=WAIT)
    rest = port.get_many(timeout=WAIT)
    assert [c.key for c in first] == [0, 1, 2, 3]
    assert [c.key for c in rest] == list(range(4, 10))
    assert port.get_many(timeout=0.01) == []


def test_get_many_waits_for_the_first(port: portio.CompletionPort) -> None:
    threading.Timer(0.05, port.post, args=("late",)).start()
    batch = port.get_many(timeout=WAIT)
    assert [c.key for c in batch] == ["late"]


def test_post_from_another_thread_wakes_a_waiter(port: portio.CompletionPort) -> None:
    got: list[portio.Completion] = []
    waiter = threading.Thread(target=lambda: got.append(port.get(timeout=WAIT)))
    waiter.start()
    time.sleep(0.05)
    port.post("wake")
    waiter.join(WAIT)
    assert [c.key for c in got] == ["wake"]


def test_many_threads_each_completion_exactly_once(backend: str) -> None:
    total, threads = 2000, 6
    with portio.open_port(backend, concurrency=threads) as port:
        seen: list[int] = []
        lock = threading.Lock()

        def worker() -> None:
            while True:
                completion = port.get(timeout=WAIT)
                if completion.key is None:
                    return
                with lock:
                    seen.append(completion.key)

        workers = [threading.Thread(target=worker) for _ in range(threads)]
        for t in workers:
            t.start()
        def poster(base: int) -> None:
            for i in range(base, base + total // 4):
                port.post(i)

        posters = [threading.Thread(target=poster, args=(base,))
                   for base in range(0, total, total // 4)]
        for t in posters:
            t.start()
        for t in posters:
            t.join(WAIT)
        for _ in workers:
            port.post(None)
        for t in workers:
            t.join(WAIT)
        assert not any(t.is_alive() for t in workers)
        assert sorted(seen) == list(range(total))


def test_concurrency_cap_holds_back_extra_threads(backend: str) -> None:
    with portio.open_port(backend, concurrency=1) as port:
        port.post("a")
        port.post("b")
        assert port.get(timeout=WAIT).key == "a"  # this thread now counts as running
        outcome: list[object] = []

        def second_thread() -> None:
            try:
                outcome.append(port.get(timeout=0.2).key)
            except TimeoutError as exc:
                outcome.append(exc)

        t = threading.Thread(target=second_thread)
        t.start()
        t.join(WAIT)
        assert len(outcome) == 1 and isinstance(outcome[0], TimeoutError), outcome
        # Calling get again ends this thread's turn; "b" is still there.
        assert port.get(timeout=WAIT).key == "b"


def test_running_thread_takes_the_next_completion_first(backend: str) -> None:
    with portio.open_port(backend, concurrency=1) as port:
        port.post("first")
        assert port.get(timeout=WAIT).key == "first"
        got: list[object] = []

        def held_back() -> None:
            try:
                got.append(port.get(timeout=WAIT).key)
            except portio.PortClosed as exc:
                got.append(exc)

        t = threading.Thread(target=held_back)
        t.start()
        time.sleep(0.1)
        port.post("second")
        time.sleep(0.1)
        assert got == []  # held back while this thread runs
        # Calling get again ends this thread's turn and, like IOCP, hands it the queued packet.
        assert port.get(timeout=WAIT).key == "second"
        port.close()
        t.join(WAIT)
        assert len(got) == 1 and isinstance(got[0], portio.PortClosed)


def test_a_thread_that_ended_frees_its_slot(backend: str) -> None:
    with portio.open_port(backend, concurrency=1) as port:
        port.post("first")
        ended = threading.Thread(target=lambda: port.get(timeout=WAIT))
        ended.start()
        ended.join(WAIT)  # it ran, then ended without calling get again
        port.post("second")
        got: list[object] = []
        t = threading.Thread(target=lambda: got.append(port.get(timeout=WAIT).key))
        t.start()
        t.join(WAIT)
        assert got == ["second"]


def test_a_waiter_held_by_the_cap_runs_once_the_running_thread_ends(backend: str) -> None:
    with portio.open_port(backend, concurrency=1) as port:
        port.post("first")
        running_may_end = threading.Event()

        def running() -> None:
            port.get(timeout=WAIT)
            running_may_end.wait(WAIT)  # holds the only slot, then ends without calling get

        first = threading.Thread(target=running)
        first.start()
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(port.get(timeout=WAIT).key))
        waiter.start()
        port.post("second")
        time.sleep(0.2)
        assert got == []  # held back by the cap
        running_may_end.set()
        first.join(WAIT)
        waiter.join(WAIT)
        assert got == ["second"]


def test_waiting_threads_are_released_lifo(backend: str) -> None:
    with portio.open_port(backend, concurrency=8) as port:
        order: list[int] = []
        threads = []
        def waiter(i: int) -> None:
            port.get(timeout=WAIT)
            order.append(i)

        for i in range(3):
            t = threading.Thread(target=waiter, args=(i,))
            t.start()
            threads.append(t)
            time.sleep(0.15)  # let each one block before the next arrives
        for _ in range(3):
            port.post()
            time.sleep(0.15)
        for t in threads:
            t.join(WAIT)
        assert order == [2, 1, 0]


@pytest.mark.parametrize("method", ["get", "get_many", "dispatch"])
def test_close_wakes_every_blocked_thread(backend: str, method: str) -> None:
    port = portio.open_port(backend)
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            getattr(port, method)(timeout=WAIT * 3)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=blocked) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    port.close()
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    assert len(errors) == 3 and all(isinstance(e, portio.PortClosed) for e in errors), errors


def test_every_call_after_close_raises_port_closed(backend: str) -> None:
    port = portio.open_port(backend)
    port.close()
    calls: list[Callable[[], object]] = [
        lambda: port.get(timeout=0),
        lambda: port.get_many(timeout=0),
        lambda: port.dispatch(timeout=0),
        port.post,
        lambda: port.register(0),
        lambda: port.close_handle(0),
    ]
    for call in calls:
        with pytest.raises(portio.PortClosed):
            call()


def test_queued_completions_are_dropped_at_close(backend: str) -> None:
    port = portio.open_port(backend)
    port.post("never seen")
    port.close()
    with pytest.raises(portio.PortClosed):
        port.get(timeout=0)
