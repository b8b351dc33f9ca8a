"""Tests for nymprov.plugins: backends found, chosen, configured and documented."""

import io
import os
import shutil
import subprocess
import sys

from twisted.internet.task import Clock
from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import nymprov.plugins
from nymprov.cli import provider as cli
from nymprov.backends.echo import EchoProvider
from nymprov.backends.forward import ForwardProvider
from nymprov.backends.inbox import InboxProvider
from nymprov.backends.surbreply import decode_fragment, encode_fragment, encode_service_request
from nymprov.backends.webproxy import WebProxyProvider
from nymprov.provider.config import InvalidSetting, ProviderConfig, RunOptions, read_config_file
from nymprov.interfaces import IProvider, IProviderMaker
from nymprov.plugins import all_makers, describe_backends, find_maker
from nymprov.provider.service import ProviderService

from .test_backend_surbreply import TOPOLOGY, RecordingSender, final, make_surb, walk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "nymprov", "plugins", "shout.py")
DOC = os.path.join(ROOT, "doc", "providers.md")


class DiscoveryTests(SynchronousTestCase):
    """The built-in backends are plugins."""

    def test_built_ins(self):
        """inbox, echo, webproxy and forward are found and provide both interfaces."""
        makers = {maker.name: maker for maker in all_makers()}
        self.assertTrue({"inbox", "echo", "webproxy", "forward"} <= set(makers))
        for maker in makers.values():
            self.assertTrue(IPlugin.providedBy(maker))
            verifyObject(IProviderMaker, maker)

    def test_products(self):
        """Each maker makes its IProvider from the node's parts."""
        config = ProviderConfig(data_dir=self.mktemp(), store="memory")
        service = ProviderService(config, Clock())
        service.assemble()
        self.assertIsInstance(service.backend, InboxProvider)
        expected = {"echo": ([], EchoProvider), "webproxy": (["allow=https://example.org"], WebProxyProvider),
                    "forward": (["url=http://127.0.0.1:1/x"], ForwardProvider)}
        for name, (options, kind) in expected.items():
            config = ProviderConfig(data_dir=self.mktemp(), store="memory", backend=name,
                                    backend_option=options)
            service = ProviderService(config, Clock())
            service.assemble()
            backend = service.backend
            self.assertIsInstance(backend, kind)
            verifyObject(IProvider, backend)

    def test_unknown_backend(self):
        """An unknown name is an InvalidSetting naming --backend and the known names."""
        with self.assertRaises(InvalidSetting) as caught:
            ProviderConfig(backend="nope")
        self.assertIn("--backend", str(caught.exception))
        self.assertIn("webproxy", str(caught.exception))


class OptionTests(SynchronousTestCase):
    """Backend options come from the command line or the config file, checked by the maker."""

    def test_command_line(self):
        """--backend-option pairs reach the config and are checked."""
        options = RunOptions()
        options.parseOptions(["--backend", "webproxy", "--backend-option", "allow=http://a:1",
                              "--backend-option", "timeout=3"])
        self.assertEqual(options.provider_config.backend_option, (("allow", "http://a:1"), ("timeout", "3")))
        for bad in (["timeout=x"], ["nope=1"], ["allow=ftp://a"], ["noequals"]):
            with self.assertRaises(InvalidSetting) as caught:
                ProviderConfig(backend="webproxy", backend_option=bad)
            self.assertIn("--backend-option", str(caught.exception))

    def test_forward_needs_url(self):
        """forward without url is refused before anything is made."""
        self.assertRaises(InvalidSetting, ProviderConfig, backend="forward")

    def test_config_file_table(self):
        """A [backend-option] table becomes pairs; lists are joined with commas."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('backend = "webproxy"\n[backend-option]\nallow = ["http://a:1", "https://b"]\n'
                    "timeout = 4\n")
        config = ProviderConfig(**read_config_file(path))
        self.assertEqual(config.backend_option, (("allow", "http://a:1,https://b"), ("timeout", "4")))


class HelpAndDocTests(SynchronousTestCase):
    """help backends lists every plugin, and the doc agrees with it."""

    def test_help_backends(self):
        """nym-provider help backends prints every backend, its description and options."""
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(cli.main(["help", "backends"], out, err), 0)
        text = out.getvalue()
        for maker in all_makers():
            self.assertIn(f"  {maker.name}: {maker.description}", text)
            for name, *_ in maker.options.optParameters:
                self.assertIn(f"    {name}=", text)

    def test_doc_agrees(self):
        """doc/providers.md holds the help output and the example plugin verbatim."""
        with open(DOC) as f:
            doc = f.read()
        self.assertIn(describe_backends(), doc)
        with open(EXAMPLE) as f:
            example = f.read().rstrip("\n")
        self.assertIn(example, doc)
        self.assertLess(len(example.splitlines()), 60)


class SysPathTests(SynchronousTestCase):
    """Plugins are found in a nymprov/plugins/ directory anywhere on sys.path."""

    def test_pythonpath_examples(self):
        """PYTHONPATH=examples nym-provider help backends lists shout (a child process)."""
        env = dict(os.environ, PYTHONPATH="examples")
        # -m puts the working directory (the checkout) first on sys.path,
        # as an installed nym-provider finds nymprov in site-packages.
        child = subprocess.run([sys.executable, "-m", "nymprov", "help", "backends"],
                               capture_output=True, env=env, cwd=ROOT, timeout=60)
        self.assertEqual(child.returncode, 0, child.stderr)
        out = child.stdout.decode()
        self.assertIn("  shout: answer every request in capitals", out)
        self.assertIn("    times=1  how many times to repeat the body", out)
        self.assertIn("  inbox: ", out)
        self.assertNotIn(b"Warning", child.stderr)

    def test_packaging_recipe_is_the_example(self):
        """The pyproject.toml in doc/providers.md is examples/pyproject.toml."""
        with open(DOC) as f:
            doc = f.read()
        with open(os.path.join(ROOT, "examples", "pyproject.toml")) as f:
            recipe = f.read()
        self.assertIn(f"```toml\n{recipe}```", doc)
        self.assertIn('include = ["nymprov.plugins"]', recipe)


class ExamplePluginTests(SynchronousTestCase):
    """The example plugin from the docs, installed from a directory of its own."""

    def setUp(self):
        plugins = os.path.join(self.mktemp(), "nymprov", "plugins")
        os.makedirs(plugins)
        shutil.copy(EXAMPLE, plugins)
        nymprov.plugins.__path__.append(plugins)
        self.addCleanup(nymprov.plugins.__path__.remove, plugins)

    def test_selected_with_backend(self):
        """--backend shout selects it; its options are checked; it answers in capitals."""
        self.assertEqual(find_maker("shout").name, "shout")
        self.assertIn("shout: answer every request in capitals", describe_backends())
        options = RunOptions()
        options.parseOptions(["--backend", "shout", "--backend-option", "times=2",
                              "--data-dir", self.mktemp(), "--store", "memory"])
        self.assertRaises(InvalidSetting, ProviderConfig, backend="shout", backend_option=["times=11"])
        sender = RecordingSender()
        maker = find_maker("shout")
        backend = maker.make(options.provider_config, nymprov.plugins.parse_backend_options(
            maker, options.provider_config.backend_option), sender, TOPOLOGY, Clock())
        verifyObject(IProvider, backend)
        message = encode_fragment(b"s" * 16, 0, 1, encode_service_request([make_surb()], b"hey"))
        self.successResultOf(backend.deliver(final(message)))
        [(_, packet)] = sender.sent
        reply = walk(packet)
        self.assertEqual(decode_fragment(reply[1:]).chunk, b"HEYHEY")
