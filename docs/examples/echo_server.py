import socket
import time

import portio

port = portio.open_port()                       # the best backend here
server = socket.create_server(("127.0.0.1", 9190))
port.register(server, key="server")             # per-handle data: the completion key
port.accept(server)
while True:
    c = port.get()                              # any number of threads may do this
    if c.kind == "accept":
        if c.error is not None:                 # e.g. EMFILE: out of descriptors for now;
            time.sleep(0.1)                     # the client waits in the listen backlog
        else:
            conn, address = c.result
            port.register(conn, key=address)
            port.recv(conn, 4096, data="read")  # per-I/O data comes back on the completion
        port.accept(server)                     # a failed accept never stops the listener
    elif c.error is not None or (c.kind == "recv" and not c.result):
        port.close_handle(c.op.handle)          # reset or end of stream: close the client
    elif c.kind == "recv":
        port.send(c.op.handle, c.result, data="write")  # completes when every byte is sent
    elif c.kind == "send":
        port.recv(c.op.handle, 4096, data="read")
