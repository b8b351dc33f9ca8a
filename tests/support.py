"""
Helpers shared by the tests that run the real reactor.
"""

import time

from twisted.internet import reactor
from twisted.internet.task import deferLater

#: Upper bound for any wait in the tests; they normally take milliseconds.
WAIT_LIMIT = 30.0  # seconds


async def wait_for(predicate, what, limit=WAIT_LIMIT):
    """
    Poll ``predicate`` until it holds, for at most ``limit`` seconds.

    :raises AssertionError: naming ``what`` when the time is up.
    """
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)
