"""The ``twistd nym-provider`` plugin: a Nym mixnet provider node."""

from twisted.application.service import ServiceMaker

NymProvider = ServiceMaker(
    "nym-provider",
    "nymprov.provider.tap",
    "A Nym mixnet provider: store messages for clients, relay their packets.",
    "nym-provider",
)
