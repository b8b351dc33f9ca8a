"""
The client side of the provider benchmark: many registered clients, and a
pull-and-ack loop that empties their inboxes.
"""

from dataclasses import dataclass

from nacl.signing import SigningKey

from nymprov.client import session as provider_client


@dataclass(frozen=True)
class BenchClient:
    """A registered client: its key, address and token."""

    key: SigningKey
    address: bytes
    token: bytes


def _fingerprint(certificate):
    if certificate is None:
        return None
    from nymprov.net.tls import certificate_fingerprint

    return certificate_fingerprint(certificate)


async def register_clients(reactor, address, certificate, count):
    """
    Register ``count`` fresh clients with the provider at ``address``.

    :returns: a list of :class:`BenchClient`.
    """
    session = await provider_client.connect(reactor, address.host, address.port, _fingerprint(certificate))
    clients = []
    try:
        for _ in range(count):
            key = SigningKey.generate()
            token = await session.register(key)
            clients.append(BenchClient(key, bytes(key.verify_key), token))
    finally:
        session.close()
    return clients


async def pull_and_ack_all(reactor, address, certificate, clients, batch=64, progress=None):
    """
    Empty every client's inbox over one connection each, in batches.

    :param progress: a ``Progress`` told how many clients are done.

    :returns: how many messages were pulled and acked.
    """
    total = 0
    fingerprint = _fingerprint(certificate)
    for done, client in enumerate(clients):
        if progress is not None:
            progress.update(done)
        session = await provider_client.connect(reactor, address.host, address.port, fingerprint)
        try:
            await session.authenticate(client.address, client.token)
            while True:
                batch_messages = await session.pull(batch)
                if not batch_messages.messages:
                    break
                total += await session.ack(batch_messages.lease_id)
        finally:
            session.close()
    return total
