"""
A fresh PostgreSQL schema per test, in the cluster that ``.ci/run`` starts.

``NYMPROV_TEST_POSTGRES`` holds the cluster's URL; without it the
PostgreSQL tests skip, saying so.
"""

import os
import secrets

from twisted.trial.unittest import SkipTest

ENV = "NYMPROV_TEST_POSTGRES"


def postgres_url():
    """
    :returns: the test cluster's URL.
    :raises SkipTest: if none was given.
    """
    url = os.environ.get(ENV)
    if not url:
        raise SkipTest(f"no PostgreSQL: set {ENV} to a server's URL (.ci/run starts one)")
    return url


def fresh_schema(test):
    """
    Create an empty schema for ``test`` and drop it when the test ends.

    :returns: a connection string whose ``search_path`` is that schema, so
        that stores opened with it see only their own tables.
    """
    import psycopg
    from psycopg.conninfo import make_conninfo

    url = postgres_url()
    name = "t_" + secrets.token_hex(6)
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {name}")

    def drop():
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {name} CASCADE")

    test.addCleanup(drop)
    return make_conninfo(url, options=f"-csearch_path={name}")


def fresh_schema_url(test):
    """
    As :func:`fresh_schema`, as a ``postgresql://`` URL (what ``--store``
    takes).
    """
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    conninfo = fresh_schema(test)
    url = postgres_url()
    if not url.startswith(("postgresql://", "postgres://")):
        raise SkipTest(f"{ENV} must be a postgresql:// URL for the provider tests")
    options = conninfo_to_dict(conninfo)["options"]
    return url + ("&" if "?" in url else "?") + "options=" + quote(options, safe="")


def cuttable_proxy(test, url):
    """
    A loopback TCP proxy to the server of ``url``, for a test to cut and
    restore as if the database went away and came back.

    :returns: ``(proxy, conninfo)``: ``proxy.cut()`` drops every connection
        and stops listening; ``proxy.restore()`` listens again on the same
        port; ``conninfo`` reaches the server through the proxy.
    """
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(url)
    host = params.get("host") or "/var/run/postgresql"
    port = int(params.get("port") or 5432)
    proxy = _Proxy(host, port)
    proxy.restore()
    test.addCleanup(proxy.cut)
    return proxy, make_conninfo(url, host="127.0.0.1", port=str(proxy.port))


class _Proxy:
    def __init__(self, host, port):
        self._host = host
        self._server_port = port
        self._listening = None
        self._connections = set()
        self.port = 0

    def _target(self):
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint

        if self._host.startswith("/"):
            return UNIXClientEndpoint(reactor, f"{self._host}/.s.PGSQL.{self._server_port}")
        return TCP4ClientEndpoint(reactor, self._host, self._server_port)

    def restore(self):
        from twisted.internet import reactor
        from twisted.internet.protocol import Factory, Protocol

        proxy = self

        class Outbound(Protocol):
            def __init__(self, inbound):
                self.inbound = inbound

            def connectionMade(self):
                self.inbound.outbound = self
                if self.inbound.buffered:
                    self.transport.write(b"".join(self.inbound.buffered))
                    self.inbound.buffered = []

            def dataReceived(self, data):
                self.inbound.transport.write(data)

            def connectionLost(self, reason):
                self.inbound.transport.loseConnection()

        class Inbound(Protocol):
            outbound = None

            def connectionMade(self):
                self.buffered = []
                proxy._connections.add(self)
                factory = Factory.forProtocol(lambda: Outbound(self))
                d = proxy._target().connect(factory)
                d.addErrback(lambda _: self.transport.abortConnection())

            def dataReceived(self, data):
                if self.outbound is None:
                    self.buffered.append(data)
                else:
                    self.outbound.transport.write(data)

            def connectionLost(self, reason):
                proxy._connections.discard(self)
                if self.outbound is not None:
                    self.outbound.transport.loseConnection()

        self._listening = reactor.listenTCP(self.port, Factory.forProtocol(Inbound), interface="127.0.0.1")
        self.port = self._listening.getHost().port

    def cut(self):
        """
        Drop every connection and refuse new ones.
        """
        stopped = None
        if self._listening is not None:
            stopped = self._listening.stopListening()
            self._listening = None
        for connection in list(self._connections):
            connection.transport.abortConnection()
            if connection.outbound is not None:
                connection.outbound.transport.abortConnection()
        return stopped
