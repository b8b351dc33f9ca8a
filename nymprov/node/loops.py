"""
Loops from the node itself (Loopix's λ_M): the node sends packets through
the mix layers back to itself at Poisson intervals, built like client
packets (regular size, one mix per layer, exponential per-hop delays), and
watches how many come back in time.  Too few back in a window is the sign
of a node dropping packets, or of an (n-1) attack that holds back
everything but the target's; the loops also hide how loaded the node is.

A loop is addressed to the node's own identity with a random 16-byte SURB
identifier that only the node knows; the node core hands every final hop it
unwraps to :meth:`NodeLoops.take` first.
"""

import collections
import random

from twisted.logger import Logger

from nymprov.sphinx import Destination, PacketSize, build_packet, poisson_delays
from nymprov.topology import TopologyError
from nymprov.wire.frames import rotation_of_epoch

NANOSECONDS = 1_000_000_000

#: Seconds within which a loop counts as returned; later it is late.
DEFAULT_LOOP_DEADLINE = 10.0
#: Seconds per window over which the returned share is judged.
DEFAULT_LOOP_WINDOW = 30.0
#: A window whose returned share is below this logs a warning.
DEFAULT_LOOP_THRESHOLD = 0.8
#: Fewer loops than this due in a window say nothing either way.
MIN_LOOPS_JUDGED = 5
#: Mean per-hop delay of the node's loops (Nym's client default).
DEFAULT_LOOP_MEAN_DELAY = 0.05


def loop_route(topology, own_node):
    """
    The route of one loop from ``own_node`` back to itself: one random mix
    of each layer, in order, starting after the node's own layer (a
    provider: all layers), then the node itself.

    :returns: a function ``rng -> [route nodes]``, or ``None`` if no loop
        can leave the node (no other layer).
    """
    layers = [layer for layer, nodes in sorted(topology.layers.items())
              if not any(n.address == own_node.address for n in nodes)]
    own_layer = next((layer for layer, nodes in topology.layers.items()
                      if any(n.address == own_node.address for n in nodes)), None)
    if own_layer is not None:
        # The layers after this one, then those before it: the order a
        # packet travels in, wrapped around.
        layers = [layer for layer in layers if layer > own_layer] + [layer for layer in layers if layer < own_layer]
    if not layers:
        return None

    def route(rng):
        return [rng.choice(topology.layers[layer]).route_node for layer in layers] + [own_node.route_node]

    return route


class DocumentLoopRoute:
    """
    Loop routes with the Sphinx keys of the epoch now, read from the held
    network documents at each loop, so that loops go on across key
    rotations.  A loop sent just before a boundary is unwrapped with the
    retired key inside the grace period, so it still comes back in time.

    :param holder: a :class:`nymprov.netdoc.fetch.DocumentHolder`.
    :param identity: the node's 32-byte identity.
    :param epochs: ``when -> epoch`` (a :class:`nymprov.netdoc.Epochs`).
    :param clock: an ``IReactorTime``.
    :ivar rotation: the frame's key-rotation byte of the last route made.
    """

    def __init__(self, holder, identity, epochs, clock):
        self._holder = holder
        self._identity = identity
        self._epochs = epochs
        self._clock = clock
        self._made = (None, None)  # (document, epoch) -> the route maker for it
        self._maker = None
        self.rotation = None

    def __call__(self, rng):
        """:returns: a route, or ``None`` while no document lists a way home."""
        epoch = self._epochs.number_at(self._clock.seconds())
        document = self._holder.document_for(epoch) or self._holder.latest
        if document is None:
            return None
        if self._made != (document, epoch):
            self._made, self._maker = (document, epoch), None
            try:
                topology = document.topology(epoch)
                self._maker = loop_route(topology, topology.by_identity(self._identity))
            except (KeyError, TopologyError):  # not listed with this epoch's key, or a layer missing
                self._maker = None
        if self._maker is None:
            return None
        self.rotation = rotation_of_epoch(epoch)
        return self._maker(rng)


class NodeLoops:
    """
    Sends the node's loops and counts them: ``loops.sent``,
    ``loops.returned``, ``loops.late``, ``loops.lost``, ``loops.warnings``.

    :param identity: the node's 32-byte identity (the loops' destination).
    :param route: ``rng -> route`` from :func:`loop_route`.
    :param sender: the node's ``IMixSender``.
    :param clock: an ``IReactorTime``.
    :param counters: the node's :class:`nymprov.metrics.Counters`.
    :param float rate: λ_M, loops per second.
    """

    log = Logger()

    def __init__(self, identity, route, sender, clock, counters, *, rate, deadline=DEFAULT_LOOP_DEADLINE,
                 window=DEFAULT_LOOP_WINDOW, threshold=DEFAULT_LOOP_THRESHOLD,
                 mean_delay=DEFAULT_LOOP_MEAN_DELAY, rng=None):
        if not rate > 0:
            raise ValueError("the loop rate must be above 0")
        self._identity = identity
        self._route = route
        self._sender = sender
        self._clock = clock
        self._counters = counters
        self.rate = rate
        self.deadline = deadline
        self.window = window
        self.threshold = threshold
        self._mean_ns = int(mean_delay * NANOSECONDS)
        self._rng = rng or random.SystemRandom()
        self._in_flight = collections.OrderedDict()  # loop id -> sent at, in sending order
        self._returned = set()  # ids back within the deadline, not yet judged
        self._overdue = collections.OrderedDict()  # ids judged lost, kept a while to count late ones
        self._judged = {"due": 0, "returned": 0}
        self.last_share = None
        self._send_call = None
        self._window_call = None

    def start(self):
        """
        Start sending after one window (while the node's links to its
        neighbours come up, loops would come back late for reasons of no
        interest) and judging after two.
        """
        self._send_call = self._clock.callLater(self.window, self._schedule_send)
        self._window_call = self._clock.callLater(2 * self.window, self._judge)

    def stop(self):
        """Stop sending and judging."""
        for call in (self._send_call, self._window_call):
            if call is not None and call.active():
                call.cancel()
        self._send_call = self._window_call = None

    def _schedule_send(self):
        self._send_call = self._clock.callLater(self._rng.expovariate(self.rate), self._send)

    def _send(self):
        self._schedule_send()
        route = self._route(self._rng)
        if route is None:
            # No document lists a way home this epoch (yet): not a lost loop.
            self._counters.incr("loops.no_route")
            return
        delays = poisson_delays(self._mean_ns, len(route) - 1, self._rng) + [0] if self._mean_ns else [0] * len(route)
        loop_id = self._rng.randbytes(16)
        payload = self._rng.randbytes(PacketSize.REGULAR.plaintext)
        packet = build_packet(payload, route, delays, Destination(self._identity, loop_id))
        self._in_flight[loop_id] = self._clock.seconds()
        self._counters.incr("loops.sent")
        rotation = getattr(self._route, "rotation", None)
        sent = (self._sender.send(route[0].address, packet) if rotation is None
                else self._sender.send(route[0].address, packet, key_rotation=rotation))
        if not sent:
            self._counters.incr("loops.send_refused")

    def take(self, destination, surb_id):
        """
        :returns: whether a final hop unwrapped here is one of this node's
            loops (then it is counted and goes no further).
        """
        if destination != self._identity:
            return False
        sent_at = self._in_flight.pop(surb_id, None)
        if sent_at is not None:
            if self._clock.seconds() - sent_at <= self.deadline:
                self._returned.add(surb_id)
                self._counters.incr("loops.returned")
            else:
                self._counters.incr("loops.late")
            return True
        if self._overdue.pop(surb_id, None) is not None:
            self._counters.incr("loops.late")
            return True
        return False

    def _judge(self):
        """Judge the loops whose deadline passed since the last window."""
        self._window_call = self._clock.callLater(self.window, self._judge)
        now = self._clock.seconds()
        due = returned = 0
        for loop_id, sent_at in list(self._in_flight.items()):
            if sent_at + self.deadline > now:
                break
            del self._in_flight[loop_id]
            due += 1
            self._overdue[loop_id] = sent_at
            self._counters.incr("loops.lost")
        for loop_id in self._returned:
            due += 1
            returned += 1
        self._returned.clear()
        # Late arrivals are recognised for one more window, then forgotten.
        while self._overdue and next(iter(self._overdue.values())) + self.deadline + self.window < now:
            self._overdue.popitem(last=False)
        if due < MIN_LOOPS_JUDGED:
            return
        share = returned / due
        self.last_share = share
        sent = self._counters.get("loops.sent")
        if share < self.threshold:
            self._counters.incr("loops.warnings")
            self.log.warn(
                "node loops: {returned} of {due} returned within {deadline:g} s in the last {window:g} s window"
                " (λ_M {rate:g}/s, {sent} sent so far), below {threshold:.0%}: a node on the routes drops"
                " or holds packets (an (n-1) attack?)",
                returned=returned, due=due, deadline=self.deadline, window=self.window, rate=self.rate,
                threshold=self.threshold, sent=sent)
        else:
            self.log.info("node loops: {returned} of {due} returned in the last {window:g} s window"
                          " ({sent} sent so far)", returned=returned, due=due, window=self.window, sent=sent)

    def stats(self):
        """:returns: the figures for the node's stats."""
        return {"loops.in_flight": len(self._in_flight), "loops.last_share": self.last_share}


def node_loops(node, identity, sphinx_public, topology, sender, clock, counters, config, name, *,
               holder=None, epochs=None):
    """
    Make the loops of a node from its config's ``node_loop_*`` settings
    and hand them to its core (``node.loops``).

    :param topology: the whole :class:`nymprov.topology.Topology`, or
        ``None`` (then no loops, logged), when the node follows no directory.
    :param holder: with ``epochs``, the node's directory documents: loops
        are then built with each epoch's keys from them.
    :returns: the started-to-be :class:`NodeLoops`, or ``None`` if the
        node sends none.
    """
    if not config.node_loop_rate > 0:
        return None
    own = route = None
    if holder is not None and epochs is not None:
        route = DocumentLoopRoute(holder, identity, epochs, clock)
    elif topology is not None:
        own = next((n for n in list(topology.nodes) if n.sphinx_key == sphinx_public), None)
        route = loop_route(topology, own) if own is not None else None
    if route is None:
        NodeLoops.log.warn("{name}: no node loops: the topology does not list this node,"
                           " or no other layer can carry them", name=name)
        return None
    # A loop not back within a window (or the default deadline, if
    # shorter) is lost: it is judged at the end of the next one.
    loops = NodeLoops(identity, route, sender, clock, counters, rate=config.node_loop_rate,
                      deadline=min(DEFAULT_LOOP_DEADLINE, config.node_loop_window),
                      window=config.node_loop_window, threshold=config.node_loop_threshold)
    node.loops = loops
    return loops
