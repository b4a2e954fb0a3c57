"""Completion routines: each operation carries a callback, run by dispatch (the alertable
wait) in the thread that calls it; such operations never come out of get()."""

import socket

import portio

MESSAGE = b"hello, completion routines"
received = bytearray()


def on_send(c: portio.Completion) -> None:
    if c.error is not None:
        raise c.error  # an exception in a callback propagates out of dispatch()
    print(f"send completed: {c.result} bytes")


def on_recv(c: portio.Completion) -> None:
    if c.error is not None:
        raise c.error
    received.extend(c.result)
    if len(received) < len(MESSAGE):  # a stream: the bytes may come in several pieces
        port.recv(c.op.handle, 4096, callback=on_recv)


with portio.open_port() as port:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        port.register(ours)
        port.register(theirs)
        port.recv(theirs, 4096, callback=on_recv)
        port.send(ours, MESSAGE, callback=on_send)
        while len(received) < len(MESSAGE):
            if port.dispatch(timeout=10) == 0:
                raise TimeoutError("no completion within 10 s")
print(f"received {bytes(received)!r}")
