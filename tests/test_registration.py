"""
Registration modes, one set from the command line to the server: a
provider run with ``--registration closed`` over real TLS refuses new
clients and lets registered ones rotate their token.
"""

from nacl.signing import SigningKey
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nymprov.provider.registration import REGISTRATION_MODES
from nymprov.provider.config import InvalidSetting, ProviderConfig, RunOptions
from nymprov.wire import clientapi as api

from tests.test_integration import ProviderFixture


class ModesTests(SynchronousTestCase):
    """The command line accepts exactly the modes the server knows."""

    def test_every_server_mode_is_an_option(self):
        """Each of the server's modes parses; anything else is a usage error naming --registration."""
        for mode in REGISTRATION_MODES:
            options = RunOptions()
            options.parseOptions(["--registration", mode, "--invite-code", "x"])
            self.assertEqual(options.provider_config.registration, mode)
        with self.assertRaises(InvalidSetting) as caught:
            ProviderConfig(registration="maybe")
        self.assertIn("--registration", str(caught.exception))


class ClosedRegistrationTests(ProviderFixture, TestCase):
    """``--registration closed`` through a whole provider over TLS."""

    async def test_closed_refuses_new_clients_and_lets_old_ones_rotate(self):
        """A client registered while open rotates its token after closing; a new one is refused."""
        service = await self.start_provider()
        key, address, old_token, session = await self.register(service)
        session.close()
        await service.stopService()

        options = RunOptions()
        options.parseOptions(["--registration", "closed"])
        service = await self.start_provider(self.data_dir, registration=options.provider_config.registration)
        self.assertEqual(service.config.registration, "closed")
        newcomer = await self.session(service)
        error = await self.assertFailure(ensureDeferred(newcomer.register(SigningKey.generate())), api.RemoteError)
        self.assertEqual(error.code, api.ErrorCode.INVITE_REQUIRED)

        session = await self.session(service)
        new_token = await session.register(key)
        self.assertNotEqual(new_token, old_token)
        again = await self.session(service)
        await again.authenticate(address, new_token)
