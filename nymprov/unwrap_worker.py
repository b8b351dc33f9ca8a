"""
An unwrap worker process: ``python -m nymprov.unwrap_worker``.

Its standard input is a socket to the node. It reads the node's 32-byte
Sphinx private key from it, then batches of packets (frames of
:mod:`nymprov.unwrap`), and answers each batch on the same socket with its
results, in order. It exits when its input ends, which is how the node
stops it, and also what happens if the node dies. Malformed input ends it
with status 2: the node then unwraps that batch itself.
"""

import os
import signal
import sys

from nymprov.sphinx import KeyPair
from nymprov.unwrap import LENGTH_PREFIX, MAX_FRAME, BatchFormatError, decode_packets, encode_outcomes, unwrap_final

_KEY_SIZE = 32


def _read_exactly(fd, count):
    """:returns: ``count`` bytes, or ``None`` if the input ends first."""
    chunks = []
    while count:
        chunk = os.read(fd, min(count, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def serve(read_fd, write_fd):
    """
    Answer batches until the input ends.

    :returns: the process exit status.
    """
    private = _read_exactly(read_fd, _KEY_SIZE)
    if private is None:
        return 0
    keypair = KeyPair.from_private_bytes(private)
    while True:
        prefix = _read_exactly(read_fd, LENGTH_PREFIX)
        if prefix is None:
            return 0
        length = int.from_bytes(prefix, "big")
        body = _read_exactly(read_fd, length) if length <= MAX_FRAME else None
        if body is None:
            return 2
        try:
            packets = decode_packets(body)
        except BatchFormatError:
            return 2
        _write_all(write_fd, encode_outcomes([unwrap_final(packet, keypair) for packet in packets]))


def main():
    # Ctrl-C reaches the whole process group; the node decides when its
    # workers stop (by closing their input), so they ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return serve(0, 0)
    except (BrokenPipeError, ConnectionResetError):
        # The node is gone; nobody is left to answer.
        return 0


if __name__ == "__main__":
    sys.exit(main())
