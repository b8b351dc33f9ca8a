"""
Counters of packet fates and other events, kept in memory, and their
Prometheus exposition.

A counter has a name (``packets.dropped``), an optional reason
(``replay``) and optional labels (``listener="mix_link"``).  Logs and tests
read a flat snapshot (``packets.dropped.replay``); ``/metrics`` serves the
same counts as Prometheus families, built with ``prometheus_client``, the
reason as a label.  Gauges (store sizes, queues, workers) are not kept
here: whoever owns the thing measured registers a function that reads it
when scraped.
"""

from collections import Counter
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

#: The prefix of every family nymprov serves.
NAMESPACE = "nymprov"


class Counters:
    """
    A set of monotonically increasing event counters.
    """

    def __init__(self):
        self._counts = Counter()

    @staticmethod
    def _key(name, reason, labels):
        return name, reason, tuple(sorted(labels.items()))

    def incr(self, name, reason=None, amount=1, **labels):
        """
        Add ``amount`` to counter ``name`` with ``reason`` and ``labels``.
        """
        self._counts[self._key(name, reason, labels)] += amount

    def get(self, name, reason=None, **labels):
        """
        :returns: the current value of ``name`` with ``reason`` and
            ``labels`` (0 if never counted).
        """
        return self._counts.get(self._key(name, reason, labels), 0)

    def items(self):
        """
        :returns: ``(name, reason, labels, value)`` for every counter, in
            no particular order; ``labels`` is a dict.
        """
        return [(name, reason, dict(labels), value) for (name, reason, labels), value in self._counts.items()]

    def snapshot(self):
        """
        :returns: a sorted dict of every counter, keyed ``name.reason``
            (``[label=value,...]`` appended when it has labels), for logs
            and tests.
        """
        flat = {}
        for (name, reason, labels), value in self._counts.items():
            key = name if reason is None else f"{name}.{reason}"
            if labels:
                key += "[" + ",".join(f"{k}={v}" for k, v in labels) + "]"
            flat[key] = value
        return dict(sorted(flat.items()))


@dataclass(frozen=True)
class Family:
    """
    How a counter is served: its Prometheus family (without namespace or
    ``_total``), its help, what its reason is called as a label, and
    labels it always has.
    """

    metric: str
    help: str
    reason_label: str = "reason"
    labels: dict = field(default_factory=dict)


#: The counters nymprov keeps, by name.  A counter not listed here is still
#: served, as ``nymprov_<name>_total`` with its reason as ``reason``.
FAMILIES = {
    "packets.received": Family("packets_received", "Sphinx packets received, by where from", "source"),
    "packets.delivered": Family("packets_delivered", "Final hops accepted by the backend"),
    "packets.scheduled": Family("packets_scheduled", "Forward hops held for their delay"),
    "packets.forwarded": Family("packets_forwarded", "Forward hops sent on after their delay"),
    "packets.relayed": Family("packets_relayed", "Client packets relayed unchanged to a first-layer mix"),
    "packets.dropped": Family("packets_dropped", "Packets dropped, by reason"),
    "acks.sent": Family("surb_acks_sent", "SURB-ACKs sent once the backend took their message"),
    "acks.dropped": Family("surb_acks_dropped", "SURB-ACKs not sent (their message was taken), by reason"),
    "messages.expired": Family("messages_expired", "Stored messages deleted unread at their expiry"),
    "mix_link.connections": Family(
        "connections", "Connections accepted, by listener", labels={"listener": "mix_link"}),
    "client_api.connection": Family(
        "connections", "Connections accepted, by listener", labels={"listener": "client_api"}),
    "mix_link.refused": Family(
        "connections_refused", "Connections refused, by listener and reason", labels={"listener": "mix_link"}),
    "client_api.refused": Family(
        "connections_refused", "Connections refused, by listener and reason", labels={"listener": "client_api"}),
    "client_api.rate_limited": Family(
        "rate_limited", "Requests refused by a rate limit, by listener and limit", "limit",
        labels={"listener": "client_api"}),
    "mix_link.idle_timeout": Family(
        "idle_timeouts", "Connections closed for idleness, by listener", labels={"listener": "mix_link"}),
    "client_api.timeout": Family(
        "idle_timeouts", "Connections closed for idleness, by listener", labels={"listener": "client_api"}),
    "mix_link.frame_error": Family("mix_link_frame_errors", "Mix-link frames refused, by reason"),
    "client_api.request": Family("client_api_requests", "Client API requests, by kind", "request"),
    "client_api.error": Family("client_api_errors", "Client API error answers, by reason"),
    "client_api.paused": Family("client_api_paused", "Times a client connection stopped being read (flow control)"),
    "client_api.leases_released": Family(
        "client_api_leases_released", "Leases ended early: their connection closed before the ACK"),
    "mix_sender.connected": Family("mix_sender_connections", "Connections made to neighbour nodes"),
    "mix_sender.bad_address": Family("mix_sender_bad_addresses", "Packets for a next hop with a bad address"),
}


def _family_of(name):
    family = FAMILIES.get(name)
    if family is not None:
        return family
    if name.startswith("backend.") and name.endswith(".failed"):
        backend = name[len("backend."):-len(".failed")]
        return Family("backend_failures", "Deliveries the backend refused or failed, by reason",
                      labels={"backend": backend})
    if name.startswith("backend.") and name.endswith(".overdue"):
        backend = name[len("backend."):-len(".overdue")]
        return Family("backend_overdue", "Deliveries unanswered at the delivery deadline (still awaited)",
                      labels={"backend": backend})
    return Family(name.replace(".", "_").replace("-", "_"), f"Counter {name}")


class NodeMetrics:
    """
    A node's metrics for Prometheus: its :class:`Counters`, gauges read
    when scraped, and the process collector, in one ``prometheus_client``
    registry of its own (so that two nodes in one process do not mix).

    :param counters: the node's :class:`Counters`.
    """

    def __init__(self, counters):
        self.counters = counters
        self._gauges = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def add_gauge(self, metric, help, read, labels=()):
        """
        Serve ``nymprov_<metric>``, read by ``read()`` at each scrape.

        :param labels: the label names; then ``read()`` returns
            ``{(label values...): value}``, else a number.
        """
        self._gauges.append((metric, help, read, tuple(labels)))

    def collect(self):
        """prometheus_client's custom collector API."""
        families = {}
        for name, reason, labels, value in self.counters.items():
            family = _family_of(name)
            every = dict(family.labels)
            if reason is not None:
                every[family.reason_label] = str(reason)
            every.update({k: str(v) for k, v in labels.items()})
            names = tuple(sorted(every))
            key = (family.metric, names)
            if key not in families:
                families[key] = CounterMetricFamily(f"{NAMESPACE}_{family.metric}", family.help, labels=names)
            families[key].add_metric([every[n] for n in names], value)
        # One family per metric name: counters whose label sets differ
        # (a reason given sometimes) are merged under the union of labels.
        yield from _merge(families)
        for metric, help, read, labels in self._gauges:
            gauge = GaugeMetricFamily(f"{NAMESPACE}_{metric}", help, labels=labels or None)
            value = read()
            if labels:
                for values, number in sorted(value.items()):
                    gauge.add_metric([str(v) for v in values], number)
            elif value is not None:
                gauge.add_metric([], value)
            yield gauge

    def exposition(self, accept=""):
        """
        :param str accept: the scraper's ``Accept`` header: it may ask for
            OpenMetrics; Prometheus' text format otherwise.
        :returns: ``(content type, body bytes)``.
        """
        encode, content_type = choose_encoder(accept)
        return content_type, encode(self.registry)


def _merge(families):
    by_name = {}
    for (metric, names), family in families.items():
        by_name.setdefault(metric, []).append((names, family))
    for metric, parts in sorted(by_name.items()):
        if len(parts) == 1:
            yield parts[0][1]
            continue
        union = tuple(sorted({n for names, _ in parts for n in names}))
        merged = CounterMetricFamily(f"{NAMESPACE}_{metric}", parts[0][1].documentation, labels=union)
        for names, family in parts:
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    merged.add_metric([sample.labels.get(n, "") for n in union], sample.value)
        yield merged
