"""
Final- and forward-hop unwrapping, the batch codecs, and the pool of worker
processes that runs it beside the reactor.
"""

import os
import signal
import sys

from hypothesis import given, settings, strategies as st
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nymprov.errors import PacketRefused
from nymprov.sphinx import BadMAC, Destination, InvalidPacket, KeyPair, Node, build_packet, encode_address
from nymprov.node.unwrap import (
    FINAL,
    FORWARD,
    BatchFormatError,
    FrameReader,
    Unwrapped,
    decode_outcomes,
    decode_packets,
    encode_outcomes,
    encode_packets,
    frame,
    unwrap_any,
    unwrap_final,
)
from nymprov.node.pool import UnwrapPool, _Channel, _Worker, default_worker_count
from tests.support import wait_for

KEY = KeyPair.generate()
OTHER = KeyPair.generate()
HERE = encode_address("127.0.0.1", 1789)


def final_packet(message, key=KEY):
    return build_packet(message, [Node(HERE, key.public_bytes)], [0], Destination(bytes(range(32)), bytes(16)))


def mixed_batch():
    """Final hops, a forward hop, a bad MAC and a short packet."""
    forward = build_packet(b"on", [Node(HERE, KEY.public_bytes), Node(HERE, OTHER.public_bytes)], [0, 0],
                           Destination(bytes(32), bytes(16)))
    bad_mac = bytearray(final_packet(b"x"))
    bad_mac[40] ^= 1
    return [final_packet(b"one"), forward, bytes(bad_mac), b"short", final_packet(b"two" * 300)]


def same(test, got, expected):
    """Results match: equal values, or errors of the same class and text."""
    test.assertEqual(len(got), len(expected))
    for a, b in zip(got, expected):
        if isinstance(b, Exception):
            test.assertIs(type(a), type(b))
            test.assertEqual(str(a), str(b))
            test.assertEqual(a.reason, b.reason)
        else:
            test.assertEqual(a, b)


class UnwrapFinalTests(SynchronousTestCase):
    """unwrap_final's results."""

    def test_final_hop(self):
        """A final hop gives its destination, SURB id, message and tag."""
        outcome = unwrap_final(final_packet(b"hello"), KEY)
        self.assertIsInstance(outcome, Unwrapped)
        self.assertEqual(outcome.message, b"hello")
        self.assertEqual(outcome.destination, bytes(range(32)))
        self.assertEqual(len(outcome.replay_tag), 16)

    def test_errors_returned(self):
        """Refusals come back as typed errors, not raised."""
        outcomes = [unwrap_final(p, KEY) for p in mixed_batch()]
        self.assertIsInstance(outcomes[1], PacketRefused)
        self.assertEqual(outcomes[1].reason, "route_refused")
        self.assertIsInstance(outcomes[2], BadMAC)
        self.assertIsInstance(outcomes[3], InvalidPacket)


class CodecTests(SynchronousTestCase):
    """The batch frames between the node and a worker."""

    def test_outcomes_round_trip(self):
        """Every kind of result survives encoding, errors by class and text."""
        outcomes = [unwrap_final(p, KEY) for p in mixed_batch()]
        [body] = FrameReader().feed(encode_outcomes(outcomes))
        same(self, decode_outcomes(body), outcomes)

    def test_forward_outcomes_round_trip(self):
        """Forward hops, final hops and errors of unwrap_any survive encoding."""
        outcomes = [unwrap_any(p, KEY) for p in mixed_batch()]
        self.assertEqual([type(o).__name__ for o in outcomes],
                         ["FinalHop", "ForwardHop", "BadMAC", "InvalidPacket", "FinalHop"])
        [body] = FrameReader().feed(encode_outcomes(outcomes))
        same(self, decode_outcomes(body), outcomes)

    @given(st.lists(st.binary(max_size=3000), max_size=20), st.sampled_from([FINAL, FORWARD]))
    def test_packets_round_trip(self, packets, kind):
        """A batch of byte strings comes back as it went, with its kind."""
        [body] = FrameReader().feed(encode_packets(packets, kind))
        self.assertEqual(decode_packets(body), (kind, packets))

    @settings(max_examples=300)
    @given(st.binary(max_size=200))
    def test_garbage(self, body):
        """Any bytes decode or raise BatchFormatError, nothing else."""
        for decode in (decode_packets, decode_outcomes):
            try:
                decode(body)
            except BatchFormatError:
                pass

    def test_wrong_shapes(self):
        """Well-formed marshal data of the wrong shape is refused."""
        import marshal

        for value in ([1], [(9, b"")], [(0, b"a")], [(1, "BadMAC", 3)], {"a": 1}, [()]):
            self.assertRaises(BatchFormatError, decode_outcomes, marshal.dumps(value))
        for value in ([b"a"], (0, [b"a", "b"]), (7, [b"a"]), (0, [b"a"], 1), (1, b"a")):
            self.assertRaises(BatchFormatError, decode_packets, marshal.dumps(value))
        for value in ([(3, b"p", b"n", "1", b"t")], [(4, b"d", b"s", b"p")], [(3, b"p", b"n", 1, 2)]):
            self.assertRaises(BatchFormatError, decode_outcomes, marshal.dumps(value))

    def test_unknown_error_class(self):
        """An error name that is no Sphinx error becomes the base class."""
        from nymprov.sphinx import SphinxError

        body = encode_outcomes([BadMAC("m")])[4:].replace(b"BadMAC", b"Nopeee")
        [error] = decode_outcomes(body)
        self.assertIs(type(error), SphinxError)

    @given(st.lists(st.binary(max_size=500), max_size=6), st.data())
    def test_reader_any_split(self, bodies, data):
        """Frames split anywhere are put back together in order."""
        stream = b"".join(frame(body) for body in bodies)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
        reader, got, start = FrameReader(), [], 0
        for cut in cuts + [len(stream)]:
            got += reader.feed(stream[start:cut])
            start = cut
        self.assertEqual(got, bodies)

    def test_reader_refuses_huge_frame(self):
        """A length beyond MAX_FRAME is a broken peer."""
        self.assertRaises(BatchFormatError, FrameReader().feed, b"\xff\xff\xff\xff")


class ChannelTests(SynchronousTestCase):
    """The node's end of a worker socket, on a StringTransport."""

    def setUp(self):
        self.pool = UnwrapPool(Clock(), KEY, 0)
        self.worker = _Worker(self.pool)
        self.killed = []
        self.worker.kill = lambda: self.killed.append(True)
        self.channel = _Channel(self.worker)
        self.channel.makeConnection(StringTransport())
        self.worker.channel = self.channel

    def test_answers_in_order(self):
        """Answers fire the batches' Deferreds in the order they were sent."""
        first, second = [final_packet(b"a")], [final_packet(b"b"), b"bad"]
        d1, d2 = self.worker.send(first, FINAL), self.worker.send(second, FINAL)
        sent = self.channel.transport.value()
        self.assertEqual(decode_packets(FrameReader().feed(sent)[0]), (FINAL, first))
        answer = encode_outcomes([unwrap_final(p, KEY) for p in first]) + encode_outcomes(
            [unwrap_final(p, KEY) for p in second])
        for i in range(len(answer)):
            self.channel.dataReceived(answer[i:i + 1])
        same(self, self.successResultOf(d1), [unwrap_final(p, KEY) for p in first])
        same(self, self.successResultOf(d2), [unwrap_final(p, KEY) for p in second])
        self.assertEqual(self.killed, [])

    def test_bad_answer_kills(self):
        """Garbage, a wrong count or an unasked answer kills the worker."""
        d = self.worker.send([final_packet(b"a")], FINAL)
        self.channel.dataReceived(frame(b"\x00garbage"))
        self.assertEqual(self.killed, [True])
        self.assertNoResult(d)
        self.channel.dataReceived(encode_outcomes([]))
        self.assertEqual(len(self.killed), 2)
        self.assertNoResult(d)

    def test_answer_to_nothing(self):
        """An answer when no batch is out kills the worker."""
        self.channel.dataReceived(encode_outcomes([]))
        self.assertEqual(self.killed, [True])


class PoolTests(TestCase):
    """Real worker processes on the real reactor."""

    timeout = 60

    def start_pool(self, workers=1, **kwargs):
        pool = UnwrapPool(reactor, KEY, workers, **kwargs)
        pool.start()
        self.addCleanup(pool.stop)
        return pool

    def test_default_count(self):
        """One worker per core beyond the first, at most four."""
        for cores, workers in ((None, 0), (1, 0), (2, 1), (5, 4), (64, 4)):
            self.patch(os, "cpu_count", lambda: cores)
            self.assertEqual(default_worker_count(), workers, cores)

    async def _results_match(self, pool):
        batch = mixed_batch()
        got = await pool.unwrap_many(batch)
        same(self, got, [unwrap_final(p, KEY) for p in batch])

    def test_worker_results(self):
        """A worker's results equal the reactor thread's, errors included."""
        pool = self.start_pool()

        async def check():
            await wait_for(lambda: pool.workers, "a worker")
            await self._results_match(pool)
            self.assertEqual((pool.batches_in_workers, pool.batches_here), (1, 0))

        return ensureDeferred(check())

    def test_busy_workers(self):
        """
        Batches beyond what the workers hold are unwrapped here at once, and
        every batch gets its own results.
        """
        pool = self.start_pool(batches_per_worker=1)

        async def check():
            await wait_for(lambda: pool.workers, "a worker")
            batches = [[final_packet(b"%d" % i)] for i in range(5)]
            results = await gatherResults([pool.unwrap_many(batch) for batch in batches])
            for batch, got in zip(batches, results):
                same(self, got, [unwrap_final(p, KEY) for p in batch])
            self.assertEqual((pool.batches_in_workers, pool.batches_here), (1, 4))

        return ensureDeferred(check())

    def test_killed_worker(self):
        """
        A worker killed with batches in hand: they are unwrapped here,
        nothing is lost, and a new worker takes over.
        """
        pool = self.start_pool(restart_delay=0.05)

        async def check():
            await wait_for(lambda: pool.workers, "a worker")
            [worker] = pool.workers
            os.kill(worker.transport.pid, signal.SIGSTOP)
            batch = mixed_batch()
            d = pool.unwrap_many(batch)
            os.kill(worker.transport.pid, signal.SIGKILL)
            same(self, await d, [unwrap_final(p, KEY) for p in batch])
            self.assertEqual(pool.batches_here, 1)
            await wait_for(lambda: pool.workers and pool.workers[0] is not worker, "a new worker")
            await self._results_match(pool)

        return ensureDeferred(check())

    def test_stop(self):
        """
        Stopping answers the batches in hand first, and every worker
        process exits.
        """
        pool = UnwrapPool(reactor, KEY, 2)
        pool.start()

        async def check():
            await wait_for(lambda: len(pool.workers) == 2, "two workers")
            pids = [worker.transport.pid for worker in pool.workers]
            batch = mixed_batch()
            d = pool.unwrap_many(batch)
            await pool.stop()
            same(self, await d, [unwrap_final(p, KEY) for p in batch])
            self.assertEqual(pool.batches_in_workers, 1)
            self.assertEqual(pool.workers, [])
            for pid in pids:
                self.assertRaises(ProcessLookupError, os.kill, pid, 0)
            # Unwrapping still works, here.
            await self._results_match(pool)

        return ensureDeferred(check())

    def test_no_workers(self):
        """With no workers everything is unwrapped here."""
        pool = self.start_pool(workers=0)

        async def check():
            await self._results_match(pool)
            self.assertEqual(pool.batches_here, 1)
            await deferLater(reactor, 0, lambda: None)

        return ensureDeferred(check())

    def test_broken_worker_backs_off(self):
        """
        A worker that dies at once, again and again, is retried ever more
        slowly, and batches meanwhile are unwrapped here.
        """
        pool = UnwrapPool(reactor, KEY, 1, restart_delay=0.01)
        pool.command = (sys.executable, "-c", "import sys; sys.exit(3)")
        pool.start()
        self.addCleanup(pool.stop)

        async def check():
            await wait_for(lambda: pool._failures >= 3, "three failed starts")
            self.assertGreaterEqual(pool.next_restart_delay, 0.01 * 2**3)
            await self._results_match(pool)
            self.assertEqual(pool.batches_in_workers, 0)

        return ensureDeferred(check())


class ForwardPoolTests(TestCase):
    """Forward hops in real worker processes."""

    timeout = 60
    start_pool = PoolTests.start_pool

    async def test_worker_results_and_order(self):
        """
        A worker's forward-hop results equal the reactor thread's, typed
        errors included; batches answered by workers and here come back in
        the order they were given.
        """
        pool = self.start_pool(batches_per_worker=1)
        await wait_for(lambda: pool.workers, "a worker")
        batches = [mixed_batch() for _ in range(4)]
        released = []
        ds = [pool.unwrap_many(batch, FORWARD).addCallback(lambda got, i=i: released.append(i) or got)
              for i, batch in enumerate(batches)]
        results = await gatherResults(ds)
        for batch, got in zip(batches, results):
            same(self, got, [unwrap_any(p, KEY) for p in batch])
        self.assertEqual(released, [0, 1, 2, 3])
        self.assertEqual((pool.batches_in_workers, pool.batches_here), (1, 3))

    async def test_killed_worker_loses_nothing(self):
        """A worker killed holding forward hops: they are unwrapped here."""
        pool = self.start_pool(restart_delay=0.05)
        await wait_for(lambda: pool.workers, "a worker")
        [worker] = pool.workers
        os.kill(worker.transport.pid, signal.SIGSTOP)
        batch = mixed_batch()
        d = pool.unwrap_many(batch, FORWARD)
        os.kill(worker.transport.pid, signal.SIGKILL)
        same(self, await d, [unwrap_any(p, KEY) for p in batch])
        self.assertEqual(pool.batches_here, 1)


class ReleaseOrderTests(SynchronousTestCase):
    """Batch results are handed back in the order the batches came."""

    def test_failure_in_turn_does_not_stall(self):
        """
        A later answer waits for the earlier ones; a failed earlier batch
        is handed on (as its failure) in its turn, and the later ones follow.
        """
        from twisted.internet.defer import Deferred

        pool = UnwrapPool(Clock(), KEY, 0)
        first, second, third = Deferred(), Deferred(), Deferred()
        results = [pool._in_order(answer) for answer in (first, second, third)]
        third.callback(["c"])
        second.callback(["b"])
        self.assertNoResult(results[1])
        first.errback(RuntimeError("worker bug"))
        self.failureResultOf(results[0], RuntimeError)
        self.assertEqual(self.successResultOf(results[1]), ["b"])
        self.assertEqual(self.successResultOf(results[2]), ["c"])
