"""
The ``broadcast`` backend: takes signed transactions out of the mixnet,
checks each is one transaction of the configured chain, and hands it to
that chain's node once, after a random delay, from a durable queue.

One module per concern: ``errors`` (typed refusals), ``ethereum`` and
``bitcoin`` (parsing and txids), ``rpc`` (talking to nodes), ``backend``
(queue, duplicates, answers).
"""
