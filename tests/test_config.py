"""Tests for nymprov.provider.config: options, the TOML file, defaults and checks."""

import dataclasses
import os
from dataclasses import fields

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from nymprov.provider.config import (
    InvalidOption,
    InvalidSetting,
    ProviderConfig,
    RunOptions,
    load_config,
    option_name,
    parse_host_port,
)


def parse(argv):
    """Parse ``argv`` as ``nym-provider run`` would; return the ProviderConfig."""
    options = RunOptions()
    options.parseOptions(argv)
    return options.provider_config


class DefaultsTests(SynchronousTestCase):
    """With no options and no file, every setting has its documented default."""

    def test_defaults(self):
        """The defaults are those of the design."""
        config = parse([])
        home = os.path.expanduser("~")
        self.assertEqual(config.data_dir, os.path.join(home, ".local/share/nymprov"))
        self.assertEqual(config.mix_listen, ("tcp:1789:interface=127.0.0.1",))
        self.assertEqual(config.client_listen, ("tcp:9000:interface=127.0.0.1",))
        self.assertIs(config.client_tls, True)
        self.assertEqual(config.store, "sqlite")
        self.assertEqual(config.db_path, os.path.join(config.data_dir, "nymprov.sqlite"))
        self.assertEqual(config.db_synchronous, "FULL")
        self.assertEqual(config.max_delay, 30.0)
        self.assertEqual(config.first_layer, ())
        self.assertEqual(config.inbox_max_messages, 10000)
        self.assertEqual(config.inbox_max_bytes, 64 * 1024 * 1024)
        self.assertEqual(config.message_ttl, 7 * 24 * 3600)
        self.assertEqual(config.slot_size, 2048)
        self.assertEqual(config.lease_seconds, 60.0)
        self.assertEqual(config.pull_max, 64)
        self.assertEqual(config.registration, "open")
        self.assertEqual(config.invite_code, ())
        self.assertEqual(config.register_rate, 5)
        self.assertEqual(config.send_rate, 200.0)
        self.assertEqual(config.max_connections, 1024)
        self.assertEqual(config.idle_timeout, 300.0)
        self.assertEqual(config.mix_queue, 10000)
        self.assertEqual(config.stats_interval, 60.0)

    def test_dataclass_defaults_match_options(self):
        """
        ProviderConfig() equals the config of an empty command line, but for
        the operator's interfaces, which only the command line turns on (an
        embedding application adds its own).
        """
        from_command_line = parse([])
        self.assertEqual(from_command_line.http_listen, ("tcp:8000:interface=127.0.0.1",))
        self.assertEqual(from_command_line.admin_socket,
                         os.path.join(from_command_line.data_dir, "admin.sock"))
        self.assertEqual((ProviderConfig().http_listen, ProviderConfig().admin_socket), ((), None))
        self.assertEqual(ProviderConfig(), dataclasses.replace(from_command_line, http_listen=(),
                                                               admin_socket=None))

    def test_operator_interfaces_turned_off(self):
        """--http-listen none and --admin-socket none turn them off; a file can too."""
        config = parse(["--http-listen", "none", "--admin-socket", "none"])
        self.assertEqual((config.http_listen, config.admin_socket), ((), None))
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('http-listen = []\nadmin-socket = "/run/p.sock"\n')
        config = parse(["--config", path])
        self.assertEqual((config.http_listen, config.admin_socket), ((), "/run/p.sock"))

    def test_every_field_has_an_option(self):
        """Every setting appears in the run options' help."""
        help_text = str(RunOptions())
        for field in fields(ProviderConfig):
            self.assertIn(option_name(field.name), help_text)

    def test_frozen(self):
        """A ProviderConfig cannot be changed after it is made."""
        config = ProviderConfig()
        with self.assertRaises(AttributeError):
            config.max_delay = 1.0


class CommandLineTests(SynchronousTestCase):
    """Values from the command line."""

    def test_values(self):
        """Each kind of option is converted to its field's type."""
        config = parse(
            [
                "--data-dir", "/srv/nym",
                "--mix-listen", "tcp:1790",
                "--mix-listen", "tcp:1791:interface=\\:\\:1",
                "--client-listen", "unix:/tmp/nymprov.sock",
                "--no-client-tls",
                "--store", "memory",
                "--db-synchronous", "normal",
                "--max-delay", "2.5",
                "--first-layer", "10.0.0.1:1789",
                "--first-layer", "[::1]:1790",
                "--announce", "192.0.2.7:1789",
                "--pull-max", "10",
                "--registration", "invite",
                "--invite-code", "abc",
                "--stats-interval", "0",
            ]
        )
        self.assertEqual(config.data_dir, "/srv/nym")
        self.assertEqual(config.db_path, "/srv/nym/nymprov.sqlite")
        self.assertEqual(config.mix_listen, ("tcp:1790", "tcp:1791:interface=\\:\\:1"))
        self.assertEqual(config.client_listen, ("unix:/tmp/nymprov.sock",))
        self.assertIs(config.client_tls, False)
        self.assertEqual(config.store, "memory")
        self.assertEqual(config.db_synchronous, "NORMAL")
        self.assertEqual(config.max_delay, 2.5)
        self.assertEqual(config.first_layer, (("10.0.0.1", 1789), ("::1", 1790)))
        self.assertEqual(config.announce, (("192.0.2.7", 1789),))
        self.assertEqual(config.pull_max, 10)
        self.assertEqual(config.registration, "invite")
        self.assertEqual(config.invite_code, ("abc",))
        self.assertEqual(config.stats_interval, 0.0)

    def test_relative_data_dir_made_absolute(self):
        """A relative --data-dir is resolved now, before twistd can chdir."""
        config = parse(["-d", "relative/dir"])
        self.assertEqual(config.data_dir, os.path.abspath("relative/dir"))

    def test_tilde_expanded(self):
        """A leading ~ in --db-path is expanded."""
        config = parse(["--db-path", "~/x.sqlite"])
        self.assertEqual(config.db_path, os.path.expanduser("~/x.sqlite"))

    def test_unknown_option(self):
        """An unknown option is a UsageError that is not an InvalidOption."""
        with self.assertRaises(usage.UsageError) as caught:
            parse(["--frobnicate"])
        self.assertNotIsInstance(caught.exception, InvalidOption)


class ConfigFileTests(SynchronousTestCase):
    """Values from the TOML file and their precedence."""

    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_file_values(self):
        """Settings in the file replace the defaults."""
        path = self.write(
            'data-dir = "/var/lib/nymprov"\n'
            'mix-listen = ["tcp:1789"]\n'
            "max-delay = 5\n"
            "inbox-max-messages = 12\n"
            "no-client-tls = true\n"
            'first-layer = ["192.0.2.1:1789"]\n'
        )
        config = parse(["--config", path])
        self.assertEqual(config.data_dir, "/var/lib/nymprov")
        self.assertEqual(config.mix_listen, ("tcp:1789",))
        self.assertEqual(config.max_delay, 5.0)
        self.assertIsInstance(config.max_delay, float)
        self.assertEqual(config.inbox_max_messages, 12)
        self.assertIs(config.client_tls, False)
        self.assertEqual(config.first_layer, (("192.0.2.1", 1789),))
        # Not in the file: still the default.
        self.assertEqual(config.pull_max, 64)

    def test_command_line_beats_file(self):
        """A value on the command line overrides the same setting in the file."""
        path = self.write('max-delay = 5.0\nmix-listen = ["tcp:1789"]\npull-max = 3\n')
        config = parse(["-c", path, "--max-delay", "7", "--mix-listen", "tcp:1800"])
        self.assertEqual(config.max_delay, 7.0)
        self.assertEqual(config.mix_listen, ("tcp:1800",))
        self.assertEqual(config.pull_max, 3)

    def test_client_tls_in_file_kept_without_flag(self):
        """no-client-tls = false in the file leaves TLS on."""
        path = self.write("no-client-tls = false\n")
        self.assertIs(parse(["-c", path]).client_tls, True)

    def test_unknown_key(self):
        """An unknown key names --config, the key and the file."""
        path = self.write("frobnicate = 1\n")
        with self.assertRaises(InvalidOption) as caught:
            parse(["-c", path])
        message = str(caught.exception)
        self.assertIn("--config", message)
        self.assertIn("frobnicate", message)
        self.assertIn(path, message)

    def test_underscore_key_suggests_dash(self):
        """A key spelled with underscores is refused with the right spelling."""
        path = self.write("max_delay = 1.0\n")
        with self.assertRaises(InvalidOption) as caught:
            parse(["-c", path])
        self.assertIn("'max-delay'", str(caught.exception))

    def test_wrong_type_names_option_and_file(self):
        """A string where a number belongs names the option and the file."""
        path = self.write('pull-max = "ten"\n')
        with self.assertRaises(InvalidOption) as caught:
            parse(["-c", path])
        message = str(caught.exception)
        self.assertTrue(message.startswith("--pull-max:"), message)
        self.assertIn(path, message)

    def test_bad_toml(self):
        """A file that is not TOML is refused naming --config."""
        path = self.write("this is = = not toml\n")
        with self.assertRaises(InvalidOption) as caught:
            parse(["-c", path])
        self.assertIn("--config", str(caught.exception))

    def test_missing_file(self):
        """A missing config file is refused naming it."""
        path = self.mktemp()
        with self.assertRaises(InvalidOption) as caught:
            parse(["-c", path])
        self.assertIn(path, str(caught.exception))

    def test_load_config_from_mapping(self):
        """load_config takes any mapping with the option names."""
        path = self.write("slot-size = 4096\n")
        self.assertEqual(load_config({"config": path}).slot_size, 4096)


# Each invalid command line, and the option its error must name.
INVALID_COMMAND_LINES = [
    (["--max-delay", "soon"], "--max-delay"),
    (["--max-delay", "-1"], "--max-delay"),
    (["--max-delay", "nan"], "--max-delay"),
    (["--max-delay", "inf"], "--max-delay"),
    (["--pull-max", "-5"], "--pull-max"),
    (["--pull-max", "0"], "--pull-max"),
    (["--pull-max", "1.5"], "--pull-max"),
    (["--inbox-max-messages", "-1"], "--inbox-max-messages"),
    (["--inbox-max-bytes", "0"], "--inbox-max-bytes"),
    (["--message-ttl", "-60"], "--message-ttl"),
    (["--slot-size", "big"], "--slot-size"),
    # Smaller than a regular packet's message: every message the nymprov
    # client sends would be dropped at the final hop.
    (["--slot-size", "1000"], "--slot-size"),
    (["--lease-seconds", "0"], "--lease-seconds"),
    (["--register-rate", "-1"], "--register-rate"),
    # Values the parts refuse when they start are refused when parsed:
    # a token bucket needs room for one token, a PULL counts its slots in
    # 16 bits and a whole PULL answer must fit one 16 MiB response.
    (["--register-rate", "0"], "--register-rate"),
    (["--send-rate", "0"], "--send-rate"),
    (["--send-rate", "0.25"], "--send-rate"),
    (["--pull-max", "70000"], "--pull-max"),
    (["--slot-size", "1000000"], "--slot-size"),
    (["--pull-max", "65535", "--slot-size", "2048"], "--slot-size"),
    (["--max-connections", "0"], "--max-connections"),
    (["--idle-timeout", "-3"], "--idle-timeout"),
    (["--mix-queue", "-3"], "--mix-queue"),
    (["--stats-interval", "-1"], "--stats-interval"),
    (["--store", "postgres"], "--store"),
    (["--store", "postgresql://u:secret@host/db?nosuchparam=1"], "--store"),
    (["--db-synchronous", "OFF"], "--db-synchronous"),
    (["--registration", "maybe"], "--registration"),
    (["--registration", "invite"], "--invite-code"),
    (["--invite-code", " "], "--invite-code"),
    (["--mix-listen", "carrier-pigeon:1789"], "--mix-listen"),
    (["--mix-listen", "tcp:notaport"], "--mix-listen"),
    (["--mix-listen", "tcp:1789:interface=::1"], "--mix-listen"),
    (["--client-listen", "tcp"], "--client-listen"),
    (["--client-listen", "ssl:9000:privateKey=/nonexistent.pem"], "--client-listen"),
    (["--first-layer", "10.0.0.1"], "--first-layer"),
    (["--announce", "provider.example:1789"], "--announce"),
    (["--first-layer", "mix.example:1789"], "--first-layer"),
    (["--first-layer", "10.0.0.1:0"], "--first-layer"),
    (["--first-layer", "10.0.0.1:70000"], "--first-layer"),
    (["--first-layer", "::1:1789"], "--first-layer"),
    (["--first-layer", "[::1]1789"], "--first-layer"),
    (["--data-dir", ""], "--data-dir"),
]


class InvalidValueTests(SynchronousTestCase):
    """Every invalid value is one line naming the option, and creates nothing."""

    def test_each_invalid_value(self):
        """Each invalid value raises InvalidOption whose one line names the option."""
        root = self.mktemp()
        os.mkdir(root)
        data_dir = os.path.join(root, "data")
        for argv, option in INVALID_COMMAND_LINES:
            with self.subTest(argv=argv):
                options = RunOptions()
                with self.assertRaises(InvalidOption) as caught:
                    options.parseOptions(["--data-dir", data_dir] + argv)
                message = str(caught.exception)
                self.assertTrue(message.startswith(option + ":"), message)
                self.assertNotIn("\n", message)
        self.assertEqual(os.listdir(root), [])

    def test_invalid_values_in_file(self):
        """Wrongly typed or out-of-range values from the file name the option."""
        cases = [
            ("max-delay = true", "--max-delay"),
            ("pull-max = 2.0", "--pull-max"),
            ('mix-listen = "tcp:1789"', "--mix-listen"),
            ("mix-listen = []", "--mix-listen"),
            ("mix-listen = [1789]", "--mix-listen"),
            ('no-client-tls = "yes"', "--no-client-tls"),
            ("data-dir = 3", "--data-dir"),
            ("first-layer = [[1, 2, 3]]", "--first-layer"),
            ("inbox-max-bytes = -1", "--inbox-max-bytes"),
        ]
        root = self.mktemp()
        os.mkdir(root)
        for text, option in cases:
            with self.subTest(text=text):
                path = os.path.join(root, "provider.toml")
                with open(path, "w") as f:
                    f.write(f'data-dir = "{root}/data"\n' if "data-dir" not in text else "")
                    f.write(text + "\n")
                with self.assertRaises(InvalidOption) as caught:
                    parse(["-c", path])
                self.assertTrue(str(caught.exception).startswith(option + ":"))
        self.assertEqual(os.listdir(root), ["provider.toml"])

    def test_client_tls_with_ssl_endpoint(self):
        """An ssl: client endpoint with client TLS on is refused (TLS twice)."""
        from nymprov.net.tls import load_or_create_certificate

        data_dir = self.mktemp()
        load_or_create_certificate(data_dir)
        pair = os.path.join(data_dir, "pair.pem")
        with open(os.path.join(data_dir, "tls.key")) as k, open(
            os.path.join(data_dir, "tls.crt")
        ) as c:
            with open(pair, "w") as f:
                f.write(k.read() + c.read())
        endpoint = f"ssl:0:privateKey={pair}"
        with self.assertRaises(InvalidOption) as caught:
            parse(["--client-listen", endpoint])
        self.assertTrue(str(caught.exception).startswith("--client-listen:"))
        config = parse(["--client-listen", endpoint, "--no-client-tls"])
        self.assertEqual(config.client_listen, (endpoint,))

    def test_direct_construction_checked(self):
        """ProviderConfig itself refuses a bad value with InvalidSetting."""
        with self.assertRaises(InvalidSetting) as caught:
            ProviderConfig(pull_max=-1)
        self.assertEqual(caught.exception.field, "pull_max")
        self.assertTrue(str(caught.exception).startswith("--pull-max:"))


class HostPortTests(SynchronousTestCase):
    """parse_host_port."""

    @settings(max_examples=100)
    @given(st.ip_addresses(), st.integers(1, 65535))
    def test_round_trip(self, address, port):
        """Any IP address and port, written as text, parse back to themselves."""
        text = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
        self.assertEqual(parse_host_port(text), (str(address), port))

    @settings(max_examples=200)
    @given(st.text(max_size=40))
    def test_garbage(self, text):
        """Arbitrary text parses to an (ip, port) pair or raises ValueError."""
        try:
            host, port = parse_host_port(text)
        except ValueError:
            return
        self.assertIsInstance(host, str)
        self.assertTrue(0 < port < 65536)


class PostgresStoreSettingTests(SynchronousTestCase):
    """--store takes a PostgreSQL URL besides sqlite and memory."""

    def test_url_accepted(self):
        """A postgresql:// or postgres:// URL is kept as given."""
        for url in ("postgresql://nym@db.example:5433/nym", "postgres:///nym?host=/run/postgresql"):
            self.assertEqual(ProviderConfig(store=url).store, url)

    def test_bad_url_not_echoed(self):
        """A malformed URL is refused without quoting it: it may hold a password."""
        with self.assertRaises(InvalidSetting) as caught:
            ProviderConfig(store="postgresql://nym:hunter2@db/nym?nosuchparam=1")
        self.assertIn("--store", str(caught.exception))
        self.assertNotIn("hunter2", str(caught.exception))
