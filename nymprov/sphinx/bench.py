"""
Benchmark of Sphinx unwrapping against the X25519 floor, measured in one
process: ``python -m nymprov.sphinx.bench``.
"""

import argparse
import gc
import os
import statistics
import sys
import time

from nacl.bindings import crypto_scalarmult

from nymprov.sphinx import aesctr, chacha
from nymprov.sphinx.address import encode_address
from nymprov.sphinx.keys import KeyPair
from nymprov.sphinx.packet import build_packet, process_packet
from nymprov.sphinx.params import PacketSize
from nymprov.sphinx.route import Destination, Node


def _microseconds(operation, count):
    """
    Mean time of ``count`` calls of ``operation``, in µs, with the cyclic
    garbage collector paused as ``timeit`` does: its pauses depend on the
    whole process's heap, not on the operation.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(count):
            operation()
        return (time.perf_counter() - start) / count * 1e6
    finally:
        if collecting:
            gc.enable()


def run_benchmark(count: int = 500, rounds: int = 9, size: PacketSize = PacketSize.REGULAR) -> dict:
    """
    Time X25519, forward-hop and final-hop unwrapping and 3-hop creation.

    Each round times every operation in turn, and the ratios to X25519 are
    taken within a round: on a shared machine the clock speed drifts
    between rounds, and this keeps the drift out of the ratios.

    :param count: operations per round.
    :param rounds: rounds; medians over rounds are reported.
    :returns: a dict of figures: ``x25519_us``, ``forward_hop_us``,
        ``final_hop_us``, ``create_3hop_us``, ``forward_hop_per_s``,
        ``final_hop_per_s``, ``forward_hop_x25519_ratio``,
        ``final_hop_x25519_ratio``, ``packet_size``, and ``chacha20`` and
        ``aes_ctr``, the stream-cipher implementations in use.
    """
    keypairs = [KeyPair.generate() for _ in range(3)]
    route = [Node(encode_address("127.0.0.1", 1789 + i), kp.public_bytes) for i, kp in enumerate(keypairs)]
    destination = Destination(encode_address("127.0.0.1", 1800), os.urandom(16))
    message = os.urandom(size.plaintext)
    delays = [0, 0, 0]
    forward_packet = build_packet(message, route, delays, destination, size.payload_size)
    final_packet = build_packet(message, route[2:], delays[2:], destination, size.payload_size)
    peer = KeyPair.generate().public_bytes
    private = keypairs[0].private_bytes

    rows = []
    for _ in range(rounds):
        x25519_us = _microseconds(lambda: crypto_scalarmult(private, peer), count)
        forward_us = _microseconds(lambda: process_packet(forward_packet, keypairs[0]), count)
        final_us = _microseconds(lambda: process_packet(final_packet, keypairs[2]), count)
        create_us = _microseconds(
            lambda: build_packet(message, route, delays, destination, size.payload_size), max(1, count // 5)
        )
        rows.append((x25519_us, forward_us, final_us, create_us, forward_us / x25519_us, final_us / x25519_us))
    x25519_us, forward_us, final_us, create_us, forward_ratio, final_ratio = (
        statistics.median(column) for column in zip(*rows)
    )
    return {
        "packet_size": size.packet_size,
        "x25519_us": x25519_us,
        "forward_hop_us": forward_us,
        "final_hop_us": final_us,
        "create_3hop_us": create_us,
        "forward_hop_per_s": 1e6 / forward_us,
        "final_hop_per_s": 1e6 / final_us,
        "forward_hop_x25519_ratio": forward_ratio,
        "final_hop_x25519_ratio": final_ratio,
        "chacha20": chacha.IMPLEMENTATION,
        "aes_ctr": aesctr.IMPLEMENTATION,
    }


def format_report(figures: dict) -> str:
    """:returns: the figures as lines of text."""
    return "\n".join(
        [
            f"Sphinx benchmark, {figures['packet_size']}-byte packets (medians of rounds; ratios within a round)",
            f"  X25519 (libsodium)   {figures['x25519_us']:8.1f} µs/op",
            f"  forward-hop unwrap   {figures['forward_hop_us']:8.1f} µs/packet"
            f"  {figures['forward_hop_per_s']:8.0f} packets/s"
            f"  {figures['forward_hop_x25519_ratio']:.2f} x X25519",
            f"  final-hop unwrap     {figures['final_hop_us']:8.1f} µs/packet"
            f"  {figures['final_hop_per_s']:8.0f} packets/s"
            f"  {figures['final_hop_x25519_ratio']:.2f} x X25519",
            f"  3-hop packet build   {figures['create_3hop_us']:8.1f} µs/packet",
            f"  stream ciphers: ChaCha20 from {figures['chacha20']}, AES-128-CTR from {figures['aes_ctr']}",
        ]
    )


def main(argv=None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(prog="python -m nymprov.sphinx.bench", description=__doc__.strip())
    parser.add_argument("--count", type=int, default=500, help="operations per round")
    parser.add_argument("--rounds", type=int, default=9, help="rounds; the median is reported")
    options = parser.parse_args(argv)
    print(format_report(run_benchmark(options.count, options.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
