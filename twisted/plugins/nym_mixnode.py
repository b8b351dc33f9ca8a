"""The ``twistd nym-mixnode`` plugin: a Nym mix node."""

from twisted.application.service import ServiceMaker

NymMixNode = ServiceMaker(
    "nym-mixnode",
    "nymprov.mixnode.tap",
    "A Nym mix node: delay Sphinx packets and send them on to their next node.",
    "nym-mixnode",
)
