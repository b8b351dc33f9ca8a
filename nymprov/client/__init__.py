"""
``nymprov.client``: a Twisted mixnet client library (see ``doc/client.md``).
"""

from nymprov.client.core import (
    DeliveryFailed,
    NoClientApi,
    NotEnoughSurbs,
    NymClient,
    ReceivedMessage,
    UnknownProvider,
)
from nymprov.client.identity import (
    ClientAddress,
    ClientKeys,
    InvalidClientAddress,
    load_or_create_client_keys,
    load_token,
    save_token,
)

__all__ = [
    "ClientAddress", "ClientKeys", "DeliveryFailed", "InvalidClientAddress", "NoClientApi", "NotEnoughSurbs",
    "NymClient", "ReceivedMessage", "UnknownProvider", "load_or_create_client_keys",
    "load_token", "save_token",
]
