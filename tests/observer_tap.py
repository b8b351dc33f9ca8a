"""
A passive observer on a client's link, as its own small process: relays one
TCP connection to the provider unchanged and writes, for every client-API
frame the client sends, ``time type length`` to a file (one line each,
flushed), time being ``time.time()`` when the bytes were read.

Run as ``python observer_tap.py LISTEN_PORT PROVIDER_PORT RECORD_FILE``; it
prints ``listening`` once ready and exits when the connection ends.  A
process of its own, doing nothing but this on blocking sockets, so that
the times it records are not bunched by a busy reactor (the test process
runs the whole mixnet).
"""

import socket
import struct
import sys
import threading
import time

_HEAD = struct.Struct(">IB")  # length, type (the client API's frame)


def pump(source, target, record=None):
    buffer = b""
    while True:
        try:
            data = source.recv(65536)
        except OSError:
            data = b""
        now = time.time()
        if not data:
            break
        if record is not None:
            buffer += data
            while len(buffer) >= _HEAD.size:
                length, kind = _HEAD.unpack_from(buffer)
                if len(buffer) < 4 + length:
                    break
                record.write(f"{now!r} {kind} {length}\n")
                record.flush()
                buffer = buffer[4 + length:]
        try:
            target.sendall(data)
        except OSError:
            break
    for s in (source, target):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def main(listen_port, provider_port, record_path):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", int(listen_port)))
    server.listen(1)
    print("listening", flush=True)
    client, _ = server.accept()
    provider = socket.create_connection(("127.0.0.1", int(provider_port)))
    for s in (client, provider):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with open(record_path, "w") as record:
        back = threading.Thread(target=pump, args=(provider, client), daemon=True)
        back.start()
        pump(client, provider, record)
        back.join(5)


if __name__ == "__main__":
    main(*sys.argv[1:4])
