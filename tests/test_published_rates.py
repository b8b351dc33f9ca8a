"""
Shaping rates from the network document (as Katzenpost's directory
publishes λP/λL/λD): ``nym-directory --send-rate ...`` puts them in the
signed document served over loopback HTTP; a client takes each one it was
not given locally; a document with a bad rate is refused whole.
"""

import json
import math
import os

from nacl.signing import SigningKey
from twisted.internet import reactor
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nymprov.cli.client import RunOptions, _published_rates
from nymprov.client.stream import DEFAULT_DROP_RATE, DEFAULT_LOOP_RATE, DEFAULT_SEND_RATE
from nymprov.directory.config import DirectoryOptions
from nymprov.directory.service import DirectoryService
from nymprov.netdoc import verify_document
from nymprov.netdoc.document import NetworkDocument, parse_document
from nymprov.netdoc.errors import MalformedDocument
from nymprov.netdoc.http import make_agent, request


def client_settings(tmp, *args):
    """The settings ``nym-client run`` resolves from its command line."""
    options = RunOptions()
    options.parseOptions(["--data-dir", tmp, "--topology", "t.json", "--provider", "p", *args])
    return options.settings()


class PublishedRatesTests(TestCase):
    timeout = 30

    async def document_of(self, *args):
        """The verified document of a ``nym-directory`` started with ``args``."""
        options = DirectoryOptions()
        options.parseOptions(["--data-dir", os.path.abspath(self.mktemp()),
                              "--listen", "tcp:0:interface=127.0.0.1", *args])
        service = DirectoryService(options.directory_config, reactor)
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        await service.when_started()
        agent = make_agent(reactor)
        self.addCleanup(agent.connection_pool.closeCachedConnections)
        url = f"http://127.0.0.1:{service.ports[0].getHost().port}/v1/document"
        status, body = await request(agent, b"GET", url)
        self.assertEqual(status, 200)
        return verify_document(body, service.public_key)

    async def test_client_takes_the_published_rates_it_was_not_given(self):
        document = await self.document_of("--send-rate", "12.5", "--loop-rate", "3", "--drop-rate", "0")
        self.assertEqual({k: document.parameters[k] for k in ("send_rate", "loop_rate", "drop_rate")},
                         {"send_rate": 12.5, "loop_rate": 3.0, "drop_rate": 0.0})
        settings = client_settings(self.mktemp(), "--loop-rate", "9")
        _published_rates(settings, document)
        # The local option overrides; the others are the directory's.
        self.assertEqual((settings["send_rate"], settings["loop_rate"], settings["drop_rate"]), (12.5, 9.0, 0.0))

    async def test_without_published_rates_the_client_keeps_its_defaults(self):
        document = await self.document_of()
        self.assertFalse({"send_rate", "loop_rate", "drop_rate"} & set(document.parameters))
        settings = client_settings(self.mktemp())
        _published_rates(settings, document)
        self.assertEqual((settings["send_rate"], settings["loop_rate"], settings["drop_rate"]),
                         (DEFAULT_SEND_RATE, DEFAULT_LOOP_RATE, DEFAULT_DROP_RATE))

    def test_directory_refuses_a_send_rate_of_zero(self):
        options = DirectoryOptions()
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions(["--data-dir", self.mktemp(), "--send-rate", "0"])
        self.assertIn("--send-rate", str(caught.exception))


class ParseRatesTests(SynchronousTestCase):
    def payload(self, **rates):
        document = NetworkDocument(
            directory=SigningKey.generate().verify_key.encode(), epoch=1, epoch_start=60.0, epoch_end=120.0,
            generated=61, parameters={"epoch_length": 60.0, "epoch_zero": 0.0, "expiry": 180.0, "grace": 15.0,
                                      **rates},
            nodes=())
        # Through JSON text, as a document arrives: NaN is what the parser gives.
        return json.loads(json.dumps(document.to_json()))

    def test_good_rates_parse(self):
        parsed = parse_document(self.payload(send_rate=50, loop_rate=0.5))
        self.assertEqual((parsed.parameters["send_rate"], parsed.parameters["loop_rate"]), (50, 0.5))
        self.assertNotIn("drop_rate", parsed.parameters)

    def test_bad_rates_are_refused_naming_the_field(self):
        for name, value in [("send_rate", 0), ("send_rate", -1), ("loop_rate", -0.5), ("drop_rate", math.nan),
                            ("loop_rate", math.inf), ("send_rate", 1e9), ("drop_rate", "fast"),
                            ("loop_rate", True)]:
            with self.assertRaises(MalformedDocument, msg=(name, value)) as caught:
                parse_document(self.payload(**{name: value}))
            self.assertIn(f"parameters.{name}", str(caught.exception))
