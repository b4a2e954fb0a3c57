"""UDP through a completion port: a datagram out with sendto, the reply back with recvfrom."""

import socket

import portio

with portio.open_port() as port, \
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server, \
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
    server.bind(("127.0.0.1", 0))
    port.register(server, key="server")
    port.register(client, key="client")
    port.recvfrom(server, 2048, data="request")
    port.sendto(client, b"ping", server.getsockname(), data="ping")
    while True:
        c = port.get(timeout=10)
        if c.error is not None:
            raise c.error
        if c.data == "ping":  # sent, so the client now has an address to receive on
            port.recvfrom(client, 2048, data="reply")
        elif c.data == "request":
            payload, address = c.result  # recvfrom: (bytes, the sender's address)
            print(f"{c.key} got {payload!r}")
            port.sendto(server, payload.upper(), address, data="pong")
        elif c.data == "reply":
            print(f"{c.key} got {c.result[0]!r}")
            break
