"""Tests for the twistd plugin and nymprov.provider.tap."""

import os

from twisted.application.service import IService, IServiceMaker

from nymprov.provider.service import ProviderService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from nymprov.provider import tap
from nymprov.provider.config import RunOptions


def _nym_provider_maker():
    for maker in getPlugins(IServiceMaker):
        if maker.tapname == "nym-provider":
            return maker
    return None


class PluginTests(SynchronousTestCase):
    """The plugin is found, and twistd parses the same options as run."""

    def test_found(self):
        """getPlugins(IServiceMaker) holds a nym-provider plugin using nymprov.provider.tap."""
        maker = _nym_provider_maker()
        self.assertIsNotNone(maker, "no nym-provider plugin: run trial from the repo root")
        self.assertTrue(IPlugin.providedBy(maker))
        self.assertIs(maker.options, RunOptions)
        self.assertIs(maker.makeService, tap.makeService)

    def test_twistd_parses_run_options(self):
        """twistd nym-provider takes the run options and checks them."""
        options = ServerOptions()
        options.parseOptions(["nym-provider", "--pull-max", "3", "--store", "memory"])
        self.assertIsInstance(options.subOptions, RunOptions)
        self.assertEqual(options.subOptions.provider_config.pull_max, 3)
        self.assertEqual(options.subOptions.provider_config.store, "memory")

    def test_twistd_help_lists_same_options(self):
        """twistd nym-provider --help shows the same options as nym-provider help run."""
        options = ServerOptions()
        options.parseOptions(["nym-provider"])
        twistd_help = str(options.subOptions)
        for line in str(RunOptions()).splitlines():
            if line.lstrip().startswith("-"):
                self.assertIn(line, twistd_help)

    def test_twistd_refuses_invalid_value(self):
        """twistd nym-provider with a bad value is a usage error naming the option."""
        options = ServerOptions()
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions(["nym-provider", "--idle-timeout", "-1"])
        self.assertIn("--idle-timeout", str(caught.exception))


class MakeServiceTests(SynchronousTestCase):
    """tap.makeService builds the provider service from the options."""

    def test_builds_service(self):
        """
        makeService returns an IService built from the parsed config, not
        yet running and with nothing made on disk: the keys are made by
        privilegedStartService, after the ports are bound.
        """
        data_dir = os.path.abspath(self.mktemp())
        options = tap.Options()
        options.parseOptions(["--data-dir", data_dir, "--store", "memory"])
        service = tap.makeService(options, MemoryReactorClock())
        self.assertTrue(IService.providedBy(service))
        self.assertFalse(service.running)
        self.assertIsInstance(service.node, ProviderService)
        self.assertFalse(os.path.exists(data_dir))
        service.privilegedStartService()
        self.assertTrue(os.path.exists(os.path.join(data_dir, "identity.key")))

    def test_builds_from_mapping(self):
        """makeService also takes a plain mapping of option names, checking it."""
        data_dir = os.path.abspath(self.mktemp())
        service = tap.makeService({"data-dir": data_dir, "store": "memory"},
                                  MemoryReactorClock())
        self.assertTrue(IService.providedBy(service))
        with self.assertRaises(usage.UsageError):
            tap.makeService({"data-dir": data_dir, "pull-max": "-1"}, MemoryReactorClock())
