"""Processes and signals: a port inherited across fork(), Ctrl-C inside a port call, and
signal handlers that call post() or close()."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import warnings

import pytest

import portio

from .loopback import WAIT

Pair = tuple[socket.socket, socket.socket]

fork = getattr(os, "fork", None)  # (absent on Windows)
posix_only = pytest.mark.skipif(fork is None,
                                reason="fork() and POSIX signals do not exist on Windows")


@posix_only
def test_a_forked_child_cannot_touch_the_parents_port(port: portio.CompletionPort,
                                                      tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    pending = port.recv(ours, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        assert fork is not None
        child = fork()
    if child == 0:  # the child: every call refuses, close() touches nothing shared
        code = 0
        try:
            for call in (lambda: port.close_handle(ours), lambda: port.post("child"),
                         lambda: port.recv(ours, 1), lambda: port.get(timeout=0)):
                try:
                    call()
                    code = 1
                except portio.PortClosed as exc:
                    if "fork" not in str(exc):
                        code = 2
            port.close()
            port.close()
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's pending receive was not cancelled by the child, and the port still works.
    peer.sendall(b"after fork")
    completion = port.get(timeout=WAIT)
    assert completion.op is pending and completion.result == b"after fork"
    port.post("parent")
    assert port.get(timeout=WAIT).key == "parent"


@posix_only
def test_a_forked_child_that_drops_the_port_touches_nothing(port: portio.CompletionPort,
                                                            tcp_pair: Pair) -> None:
    ours, peer = tcp_pair
    pending = port.recv(ours, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert fork is not None
        child = fork()
    if child == 0:
        os._exit(0)  # exits with the inherited port open
    os.waitpid(child, 0)
    peer.sendall(b"still mine")
    completion = port.get(timeout=WAIT)
    assert completion.op is pending and completion.result == b"still mine"


def run_child(source: str, backend: str, *,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(source)], check=False,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PORTIO_BACKEND": backend})


#: A server loop in the main thread is interrupted by Ctrl-C many times, wherever it happens to
#: be (waiting, reaping, starting operations); each time the port must stay whole: every
#: started operation completes exactly once and later calls neither hang nor fail.
CTRL_C_STORM = """
import os, signal, socket, subprocess, sys, threading, time
import portio

port = portio.open_port()
a, b = socket.socketpair()
port.register(a)
stop = [False]  # a plain flag: a KeyboardInterrupt inside threading.Event.set() can leave
                # its lock held (a flaw of threading, not of portio)

# The helper threads block SIGINT, so that the kernel hands every Ctrl-C to the main thread
# (Python runs handlers there, but a signal the kernel gives another thread does not wake
# the main thread's wait: it would be seen late, and merged with the next ones).
def writer():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    while not stop[0]:
        try:
            b.send(b"x" * 100)
        except BlockingIOError:
            time.sleep(0.0005)
        except OSError:
            return
        time.sleep(0.0001)

others = {"posted": 0, "taken": 0}

def poster_and_getter():
    # Another thread in the same port, so that the main thread also waits for the lock, and
    # for its turn as the poller, when the Ctrl-Cs land.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    while not stop[0]:
        others["posted"] += 1
        port.post("other")
        others["taken"] += len(port.get_many(timeout=0.001))

# Another process sends the Ctrl-Cs, so that their pace does not depend on this one's GIL;
# it starts when told to, from inside the try below.
interrupter = subprocess.Popen([sys.executable, "-c",
    "import os, sys, time\\n"
    "sys.stdin.read(1)\\n"
    "for _ in range(3000):\\n"
    "    os.kill(int(sys.argv[1]), 2)\\n"
    "    time.sleep(0.001)\\n", str(os.getpid())], stdin=subprocess.PIPE)
b.setblocking(False)
threading.Thread(target=writer, daemon=True).start()
other = threading.Thread(target=poster_and_getter)
other.start()
state = {"started": 0, "completed": 0, "interrupts": 0, "recv": None}
deadline = time.monotonic() + 2.5  # (the interrupter goes on for longer)

def serve():  # returns at the deadline; a Ctrl-C anywhere in it is counted
    while True:
        try:
            if interrupter.stdin is not None:
                go, interrupter.stdin = interrupter.stdin, None
                go.write(b"g")
                go.close()
            if time.monotonic() >= deadline:
                return
            if state["recv"] is None:
                state["started"] += 1  # counted first: a Ctrl-C may follow the call
                state["recv"] = port.recv(a, 1000)
            state["started"] += 1
            port.post("tick")
            for c in port.get_many(timeout=0.01):
                state["completed"] += 1
                if c.op is state["recv"]:
                    assert c.error is None, c.error
                    state["recv"] = None
        except KeyboardInterrupt:
            state["interrupts"] += 1

# A Ctrl-C can also land in this script's own lines between two port calls (the loop's
# jump, an except clause): those are caught one and two levels out, and serve() resumes.
def guarded():
    while True:
        try:
            serve()
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            return
        except KeyboardInterrupt:
            state["interrupts"] += 1

while True:
    try:
        guarded()
        break
    except KeyboardInterrupt:
        state["interrupts"] += 1
interrupter.wait()
stop[0] = True
other.join(10)
assert not other.is_alive(), "the other thread hangs in the port"
started = state["started"] + others["posted"]
completed = state["completed"] + others["taken"]
interrupts = state["interrupts"]
# Whatever was interrupted, the port is whole.  Every operation still on the socket
# completes once it is closed, and draining ends (nothing hangs, nothing is stuck):
port.close_handle(a)
while True:
    batch = port.get_many(timeout=0.5)
    if not batch:
        break
    completed += len(batch)
# A Ctrl-C that lands in this script's own lines right after a call returned loses what the
# call returned (Python cannot assign a value and be interrupted atomically): at most one
# call's worth per Ctrl-C.  The port itself never loses or repeats a completion.
assert completed <= started, ("completions no operation started", completed, started)
assert started - completed <= 64 * interrupts, (completed, started, interrupts)
assert not port._polling and not port._waiters, "the port's wait state was left behind"
c, d = socket.socketpair()
port.register(c)
op = port.recv(c, 10)
d.send(b"alive")
done = port.get(timeout=5)
assert done.op is op and done.result == b"alive"
port.post("alive")
assert port.get(timeout=5).key == "alive"
port.close()
# Signals that arrive while the main thread waits for the GIL merge into one, so how many
# land depends on the machine's load: dozens at least, usually hundreds.
assert interrupts >= 20, interrupts
print("ok", interrupts, started)
"""


@posix_only
def test_ctrl_c_inside_port_calls_never_corrupts_the_port(backend: str) -> None:
    result = run_child(CTRL_C_STORM, backend)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")


BLOCKED_GET = """
import os, signal, threading, time
import portio

port = portio.open_port()
threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGINT)).start()
try:
    port.get()  # no timeout: only Ctrl-C ends this
    raise SystemExit("get() returned")
except KeyboardInterrupt:
    pass
port.post("after")
assert port.get(timeout=5).key == "after"
print("ok")
"""


@posix_only
def test_ctrl_c_interrupts_a_blocked_get(backend: str) -> None:
    result = run_child(BLOCKED_GET, backend, timeout=30)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "ok\n"


HANDLERS_CALL_THE_PORT = """
import os, signal, threading, time
import portio

port = portio.open_port()
signal.signal(signal.SIGUSR1, lambda *_: port.post("from handler"))
signal.signal(signal.SIGUSR2, lambda *_: port.close())

def signaller():
    for _ in range(300):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.0005)
    os.kill(os.getpid(), signal.SIGUSR2)

threading.Thread(target=signaller).start()
posted = got = 0
try:
    while True:  # the main thread keeps the port busy while the handlers interrupt it
        port.post("busy")
        posted += 1
        for c in port.get_many(timeout=1):
            got += c.key == "from handler"
except portio.PortClosed:
    pass
assert port.closed
assert got > 0, got
print("ok", got)
"""


@posix_only
def test_signal_handlers_may_call_post_and_close(backend: str) -> None:
    result = run_child(HANDLERS_CALL_THE_PORT, backend)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")


def test_a_users_own_sigint_handler_is_left_alone(backend: str) -> None:
    result = run_child("""
        import signal, portio
        def mine(*_): pass
        signal.signal(signal.SIGINT, mine)
        portio.open_port().close()
        assert signal.getsignal(signal.SIGINT) is mine
        print("ok")
    """, backend)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "ok\n"
