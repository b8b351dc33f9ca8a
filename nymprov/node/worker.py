"""
An unwrap worker process: ``python -m nymprov.node.worker``.

Its standard input is a socket to the node. It reads frames of
:mod:`nymprov.node.unwrap` from it: first the node's 32-byte Sphinx private key,
then batches of packets (final or forward hops); it answers each batch on
the same socket with its results, in order. It exits when its input ends, which is how the node
stops it, and also what happens if the node dies. Malformed input ends it
with status 2: the node then unwraps that batch itself.
"""

import os
import signal
import sys

from nymprov.sphinx import KeyPair
from nymprov.node.unwrap import BatchFormatError, FrameReader, decode_packets, encode_outcomes, unwrap_batch


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def serve(read_fd, write_fd):
    """
    Answer batches until the input ends.

    :returns: the process exit status.
    """
    reader = FrameReader()
    keypair = None
    while True:
        data = os.read(read_fd, 1 << 20)
        if not data:
            # Input that ends inside a frame is malformed too.
            return 2 if reader.buffered else 0
        try:
            for body in reader.feed(data):
                if keypair is None:
                    keypair = KeyPair.from_private_bytes(body)
                    continue
                kind, packets = decode_packets(body)
                _write_all(write_fd, encode_outcomes(unwrap_batch(kind, packets, keypair)))
        except (BatchFormatError, ValueError):
            return 2


def main():
    # Ctrl-C reaches the whole process group, and a service manager's
    # SIGTERM often the whole group too; the node decides when its workers
    # stop (by closing their input, once their batches are answered), so
    # they ignore both.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        return serve(0, 0)
    except (BrokenPipeError, ConnectionResetError):
        # The node is gone; nobody is left to answer.
        return 0


if __name__ == "__main__":
    sys.exit(main())
