"""
The testnet's directory: its key and command line, the options that make
the nodes publish to it and rotate their keys, and the ``topology.json``
rewritten from its document every epoch for tools that read a file.
"""

import os

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from nymprov.directory.service import load_or_create_directory_key
from nymprov.netdoc.errors import DocumentError
from nymprov.netdoc.fetch import DocumentFetcher, DocumentHolder
from nymprov.netdoc.http import make_agent
from nymprov.netdoc.signed import key_text
from nymprov.metrics import Counters
from nymprov.topology import TopologyError, dump_topology

#: A node publishes this many times per expiry, so one lost POST costs nothing.
PUBLISHES_PER_EXPIRY = 6


class TestnetDirectory:
    """
    :param str data_dir: the directory's data directory (its key is made).
    :param int port: its HTTP port on loopback.
    :param float epoch_length: seconds per epoch.
    """

    log = Logger()

    def __init__(self, data_dir, host, port, epoch_length):
        self.data_dir = data_dir
        self.url = f"http://{host}:{port}"
        self.listen = f"tcp:{port}:interface={host}"
        self.epoch_length = epoch_length
        self.grace = epoch_length / 4
        self.expiry = max(3.0, min(3 * epoch_length, 180.0))
        self.publish_interval = self.expiry / PUBLISHES_PER_EXPIRY
        self.key = load_or_create_directory_key(os.path.join(data_dir, "directory.key")).verify_key.encode()
        self._loop = None
        self._agent = None

    @property
    def key_text(self):
        return key_text(self.key)

    def arguments(self):
        """The directory process's command line (after the interpreter)."""
        return ["-m", "nymprov.cli.directory", "run", "--data-dir", self.data_dir, "--listen", self.listen,
                "--epoch-length", repr(self.epoch_length), "--grace", repr(self.grace),
                "--expiry", repr(self.expiry)]

    def node_arguments(self):
        """What every node adds to its command line."""
        return ["--epoch-length", repr(self.epoch_length), "--epoch-grace", repr(self.grace),
                "--directory", self.url, "--directory-key", self.key_text,
                "--publish-interval", repr(self.publish_interval)]

    def client_config_lines(self):
        return f"directory = \"{self.url}\"\ndirectory_key = \"{self.key_text}\"\n"

    @inlineCallbacks
    def wait_for_nodes(self, reactor, identities, topology_path, timeout):
        """
        Wait until the document lists every node of ``identities``, write it
        as ``topology_path``, and keep rewriting it every epoch.

        :raises DocumentError: if that does not happen within ``timeout``.
        """
        self._agent = make_agent(reactor)
        fetcher = DocumentFetcher(self._agent, self.url, DocumentHolder(self.key, Counters()))
        deadline = reactor.seconds() + timeout
        while True:
            try:
                document = yield fetcher.fetch()
                if {n.identity for n in document.nodes} >= set(identities):
                    break
            except (DocumentError, ConnectionError, OSError):
                pass
            except Exception as e:  # twisted.web's connection failures are of many kinds
                self.log.debug("directory not answering yet: {e}", e=e)
            if reactor.seconds() > deadline:
                raise DocumentError(f"the directory did not list every node within {timeout:g} s")
            yield deferLater(reactor, 0.2, lambda: None)
        self._write(document, topology_path)
        self._loop = LoopingCall(self._rewrite, fetcher, topology_path)
        self._loop.clock = reactor
        self._loop.start(self.epoch_length / 2, now=False)

    def _rewrite(self, fetcher, topology_path):
        d = fetcher.fetch()
        d.addCallback(self._write, topology_path)
        d.addErrback(lambda f: self.log.warn("topology.json not refreshed: {why}", why=f.getErrorMessage()))
        return d

    def _write(self, document, topology_path):
        try:
            dump_topology(document.topology(), topology_path)
        except TopologyError as e:
            self.log.warn("topology.json not refreshed: {why}", why=str(e))

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._agent is not None:
            return self._agent.connection_pool.closeCachedConnections()
        return None
