"""
``nym-client run`` (a client that keeps running and serves the local API),
and ``send``/``receive`` through a running client when there is one.
"""

import base64
import json
import os

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ConnectError

from nymprov.errors import ConfigError

#: Asks the running client not to hand this connection received messages
#: (a nymprov extension: ``send`` must not take what ``receive`` is for).
SEND_ONLY_QUERY = "?receive=no"


def running_api(data_dir):
    """
    :returns: the URL of the local API of a client running on ``data_dir``
        (as its API file says), or ``None``.
    """
    from nymprov.client.daemon import API_FILE

    try:
        with open(os.path.join(data_dir, API_FILE)) as f:
            url = json.load(f)["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if isinstance(url, str) and url.startswith("ws://") else None


async def connect_running(reactor, data_dir, query=""):
    """
    :returns: a :class:`nymprov.client.localapi.LocalApiClient` connected
        to the client running on ``data_dir``, or ``None`` if none answers.
    """
    from nymprov.client.localapi import connect_local_api

    url = running_api(data_dir)
    if url is None:
        return None
    try:
        return await connect_local_api(reactor, url.rstrip("/") + "/" + query)
    except (ConnectError, ConnectionError):
        return None  # a file left by a client that died


def fallback_notice(program, command, data_dir, err):
    """Say plainly that this command connects by itself, visibly."""
    print(f"{program} {command}: no running client for {data_dir} (start one with '{program} run');"
          " connecting once by itself: an observer of the link can see when this happens", file=err)


async def send_through(reactor, api, recipient, data, wait):
    """
    Send through a running client's API and wait for its acknowledgement.

    :raises ConfigError: for the API's typed error, or no answer in time.
    """
    try:
        api.request({"type": "send", "recipient": recipient,
                     "messageBase64": base64.b64encode(data).decode("ascii"), "id": 1})
        while True:
            d = api.next_message()
            d.addTimeout(wait, reactor)
            try:
                answer = await d
            except TimeoutError:
                raise ConfigError(f"no acknowledgement within {wait:g} seconds (--wait);"
                                  " the running client keeps trying") from None
            if answer.get("id") != 1:
                continue
            if answer.get("type") == "error":
                raise ConfigError(f"the running client refused: {answer.get('kind')}: {answer.get('message')}")
            return
    finally:
        await api.close()


async def receive_through(reactor, api, wait):
    """:returns: the bytes of the messages a running client hands over within ``wait`` seconds."""
    messages = []
    deadline = reactor.seconds() + wait
    try:
        while True:
            remaining = deadline - reactor.seconds()
            if remaining <= 0:
                break
            d = api.next_message()
            d.addTimeout(remaining, reactor)
            try:
                event = await d
            except TimeoutError:
                break
            if event.get("type") != "received":
                continue
            if "messageBase64" in event:
                messages.append(base64.b64decode(event["messageBase64"]))
            else:
                messages.append(event["message"].encode("utf-8"))
    finally:
        await api.close()
    return messages


async def run(reactor, client, settings, options, out, earlier, save):
    """
    Start a :class:`nymprov.client.daemon.ClientDaemon` and keep it until
    the reactor stops (Ctrl-C, SIGTERM); then ``save(messages)`` what no
    application took.
    """
    from nymprov.client.daemon import ClientDaemon

    daemon = ClientDaemon(client, reactor, options["api-listen"], options["api-public"],
                          settings["data_dir"], earlier, options["api-allow-origin"])
    await daemon.start()
    socks = await _serve_socks5(reactor, client, options) if options["socks5"] else None

    async def shutdown():
        save(await daemon.stop())

    reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(shutdown()))
    stream = client.stream
    shaping = (f"shaped: λ_P {stream.send_rate:g}/s" if stream.shaped else "UNSHAPED (observable)")
    print(f"client {client.address}\nlocal API on {daemon.url} ({shaping}); Ctrl-C stops", file=out, flush=True)
    if socks is not None:
        address = socks.getHost()
        print(f"SOCKS5 on {address.host}:{address.port} through {options['service']}", file=out, flush=True)
    await Deferred()  # until the reactor stops


async def _serve_socks5(reactor, client, options):
    """Listen for SOCKS5 on ``--socks5``: each connection one stream to ``--service``."""
    from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

    from nymprov.client.socks5.server import Socks5Factory
    from nymprov.client.socks5.streams import MixStreams

    try:
        streams = MixStreams(client, options["service"], reactor)
    except (KeyError, ValueError):
        raise ConfigError(f"--service: {options['service']} is not a provider of the topology") from None
    host = options["socks5-host"]
    endpoint_class = TCP6ServerEndpoint if ":" in host else TCP4ServerEndpoint
    port = await endpoint_class(reactor, options["socks5-port"], interface=host).listen(
        Socks5Factory(streams, reactor))
    reactor.addSystemEventTrigger("before", "shutdown", streams.close)
    return port
