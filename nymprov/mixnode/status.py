"""The mix node's status for the operator's HTTP API."""

from nymprov.node.status import NodeStatus


class MixNodeStatus(NodeStatus):
    """
    :param service: a :class:`nymprov.mixnode.service.MixNodeService`; its
        replay cache is the store that must be open.
    """

    def __init__(self, service):
        NodeStatus.__init__(self, service, "mix", service.replay_cache)
