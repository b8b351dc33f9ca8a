"""
A mix node: the provider's node core and mix link without a client API or
inbox, as a Twisted service and the ``nym-mixnode`` command.
"""

import os
import sys
from dataclasses import dataclass, fields

from twisted.internet.defer import fail, inlineCallbacks, maybeDeferred
from twisted.logger import Logger
from twisted.python import usage
from zope.interface import implementer

# Reused so that both nodes check and word their settings alike.
from nymprov.cli import create_and_print_keys, parse_command_options
from nymprov.config import (
    InvalidOption,
    InvalidSetting,
    _check_endpoint,
    _check_optional_path,
    _check_path,
    _float,
    _int,
    _list_of,
    option_name,
)
from nymprov._version import __version__
from nymprov.errors import ConfigError, DeliveryError
from nymprov.interfaces import IProvider
from nymprov.keys import load_or_create_keys
from nymprov.metrics import Counters
from nymprov.node import NodeCore
from nymprov.nodeservice import NodeService
from nymprov.protocols.mixlink import MixLinkFactory
from nymprov.protocols.mixsender import MixSenderPool
from nymprov.storage.limits import StoreLimits
from nymprov.topology import load_topology

PROGRAM = "nym-mixnode"
DEFAULT_DATA_DIR = "~/.local/share/nymprov-mixnode"
REPLAY_DB_FILE = "replay.sqlite"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class MixNodeConfig:
    """
    Every setting of a mix node, with its default; construction checks each
    and raises :class:`nymprov.config.InvalidSetting` naming the option.

    ``topology`` (the topology file) is needed to run, not to ``init``.
    """

    data_dir: str = DEFAULT_DATA_DIR
    mix_listen: tuple = ("tcp:1790:interface=127.0.0.1",)
    topology: str = None
    max_delay: float = 30.0  # seconds: the cap on a forward hop's delay
    mix_queue: int = 10000  # packets queued per neighbour
    max_delayed: int = 100_000  # forward hops waiting for their delay at once
    max_connections: int = 1024
    idle_timeout: float = 300.0  # seconds
    stats_interval: float = 60.0  # seconds; 0 disables

    def __post_init__(self):
        for field in fields(self):
            value = _CHECKS[field.name](field.name, getattr(self, field.name))
            object.__setattr__(self, field.name, value)

    @property
    def replay_db_path(self):
        """The SQLite file of replay tags."""
        return os.path.join(self.data_dir, REPLAY_DB_FILE)


_CHECKS = {
    "data_dir": _check_path,
    "mix_listen": _list_of(_check_endpoint, non_empty=True),
    "topology": _check_optional_path,
    "max_delay": _float(0.0),
    "mix_queue": _int(1),
    "max_delayed": _int(1),
    "max_connections": _int(1),
    "idle_timeout": _float(0.0, exclusive=True),
    "stats_interval": _float(0.0),
}

_DEFAULTS = MixNodeConfig.__dataclass_fields__

_HELP = {
    "data_dir": "directory for keys and the replay database",
    "topology": "topology file (JSON) naming every node; needed to run",
    "max_delay": "cap on a forward hop's delay, seconds",
    "mix_queue": "packets queued per neighbour",
    "max_delayed": "forward hops waiting for their delay at once",
    "max_connections": "open connections at most",
    "idle_timeout": "seconds before an idle connection is closed",
    "stats_interval": "seconds between counter log lines (0: never)",
}


def _help(field):
    default = _DEFAULTS[field].default
    return _HELP[field] if default is None else f"{_HELP[field]} [default: {default}]"


class MixNodeOptions(usage.Options):
    """
    The options of ``nym-mixnode run`` and ``twistd nym-mixnode``; after
    parsing, ``mixnode_config`` holds the checked :class:`MixNodeConfig`.
    """

    synopsis = "[options]"
    longdesc = (
        "Run a Nym mix node: take Sphinx packets over the mix link, hold each"
        " for the delay its header asks for and send it on to the next node"
        " that the topology file names."
    )
    optParameters = [[option_name(f)[2:], None, None, _help(f)] for f in _HELP]
    #: Whether --topology must be given (run: yes; init: no).
    needs_topology = True

    def __init__(self):
        usage.Options.__init__(self)
        self["mix-listen"] = []
        self.mixnode_config = None

    def opt_mix_listen(self, description):
        """endpoint for the mix link, repeatable [default: tcp:1790:interface=127.0.0.1]"""
        self["mix-listen"].append(description)

    def opt_version(self):
        """Print the version and exit."""
        print(f"nymprov {__version__}")
        raise SystemExit(0)

    def postOptions(self):
        values = {}
        for field in _DEFAULTS:
            given = self.get(option_name(field)[2:])
            if field == "mix_listen":
                if given:
                    values[field] = list(given)
            elif given is not None:
                values[field] = _from_text(field, given)
        try:
            self.mixnode_config = MixNodeConfig(**values)
        except InvalidSetting as e:
            raise InvalidOption(str(e))
        if self.needs_topology and self.mixnode_config.topology is None:
            raise InvalidOption("--topology: a mix node needs the topology file to run")


def _from_text(field, text):
    kind = _DEFAULTS[field].type
    try:
        return kind(text) if kind in (int, float) else text
    except ValueError:
        raise InvalidOption(f"{option_name(field)}: expected a number, got {text!r}")


@implementer(IProvider)
class _NoFinalHops:
    """
    The backend of a mix node: it has none.  The node core refuses final
    hops at a mix before they reach a backend; this is here for the
    interface's sake and refuses too.
    """

    name = "none"

    def deliver(self, destination, surb_id, message):
        """IProvider API"""
        return fail(DeliveryError("a mix node delivers nothing"))


class MixNodeService(NodeService):
    """
    A mix node: replay cache, node core, mix link in and out.

    Starting opens the replay cache before any port listens; stopping closes
    the ports, sends delayed packets on at once, lets neighbour queues drain
    and commits the replay cache last.

    :param config: a :class:`MixNodeConfig` whose ``topology`` is set.
    :param reactor: the reactor (injected, for tests).
    :param topology: an ``ITopology`` to use instead of reading
        ``config.topology``.
    """

    log = Logger()
    name = "nym-mixnode"

    def __init__(self, config, reactor, *, topology=None, stop_reactor_on_failure=False):
        from nymprov.storage.sqlite import SQLiteStore

        if topology is None:
            if config.topology is None:
                raise ConfigError("--topology: a mix node needs the topology file to run")
            topology = load_topology(config.topology)
        self.config = config
        self.topology = topology
        NodeService.__init__(self, reactor, stop_reactor_on_failure)
        self.counters = Counters()
        self.keys = load_or_create_keys(config.data_dir)
        # The store is used only as the persistent IReplayCache; tags are
        # only meaningful for the key that produced them.
        self.replay_cache = SQLiteStore(
            reactor,
            config.replay_db_path,
            StoreLimits(),
            replay_key_id=self.keys.replay_key_id,
        )
        self.sender = MixSenderPool(reactor, self.counters, queue_limit=config.mix_queue)
        self.node = NodeCore(
            self.keys.sphinx,
            self.replay_cache,
            _NoFinalHops(),
            self.sender,
            self.topology,
            reactor,
            self.counters,
            max_delay=config.max_delay,
            max_delayed=config.max_delayed,
            role="mix",
        )
        self.mix_ports = []

    @inlineCallbacks
    def _start(self):
        yield self.replay_cache.start()
        own = self.keys.sphinx.public_bytes
        if not any(node.sphinx_key == own for node in getattr(self.topology, "nodes", ())):
            self.log.warn("this node's Sphinx key is not in the topology; no one will route here")
        factory = MixLinkFactory(
            self.node,
            self.counters,
            self._reactor,
            max_connections=self.config.max_connections,
            idle_timeout=self.config.idle_timeout,
        )
        self.mix_ports = yield self.listen(self.config.mix_listen, factory, "mix link", self.node)
        if self.config.stats_interval > 0:
            self.add_chore(self.config.stats_interval, self._log_stats)

    def _log_stats(self):
        self.log.info("stats: {counters}", counters=self.counters.snapshot())

    @inlineCallbacks
    def stopService(self):
        yield self._stop_listening()
        self.mix_ports = []
        sent_early = self.node.stop()
        if sent_early:
            self.log.info("sent {count} delayed packets on at shutdown", count=sent_early)
        yield self.sender.stopService()
        yield self.replay_cache.close()
        self.log.info("nym-mixnode stopped; counters: {counters}", counters=self.counters.snapshot())




# -- the nym-mixnode command ----------------------------------------------------


class RunCommandOptions(MixNodeOptions):
    """``nym-mixnode run``: the node's options plus the log level."""

    synopsis = f"Usage: {PROGRAM} run [options]"
    optParameters = [["log-level", None, "info", "least level logged: debug, info, warn, error"]]


class InitOptions(MixNodeOptions):
    """``nym-mixnode init``: only --data-dir matters."""

    synopsis = f"Usage: {PROGRAM} init [options]"
    longdesc = "Create the data directory and keys if missing, then print the public keys."
    needs_topology = False


COMMANDS = (
    ("run", "run the mix node in the foreground (Ctrl-C stops it)"),
    ("init", "create the data directory and keys; print the public keys"),
    ("help", "list the commands, or describe one: help COMMAND"),
    ("--version", "print the version"),
)


def _command_list():
    lines = [f"Usage: {PROGRAM} COMMAND [options]", "", "Commands:"]
    lines += [f"  {name:<9}  {summary}" for name, summary in COMMANDS]
    return "\n".join(lines + ["", f"'{PROGRAM} help COMMAND' describes a command."])


def _init(args, stdout, stderr):
    options = InitOptions()
    failed = parse_command_options(options, args, stdout, stderr, PROGRAM)
    if failed is not None:
        return failed
    return create_and_print_keys(options.mixnode_config.data_dir, stdout, stderr, PROGRAM)


def _run(args, stdout, stderr):
    from twisted.internet import reactor
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    options = RunCommandOptions()
    failed = parse_command_options(options, args, stdout, stderr, PROGRAM)
    if failed is not None:
        return failed
    try:
        level = LogLevel.levelWithName(options["log-level"])
    except Exception:
        print(f"{PROGRAM}: --log-level: unknown level {options['log-level']!r}", file=stderr)
        return EXIT_USAGE
    observer = FilteringLogObserver(
        textFileLogObserver(stderr), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    try:
        service = MixNodeService(options.mixnode_config, reactor, stop_reactor_on_failure=True)
    except (ConfigError, OSError) as e:
        print(f"{PROGRAM}: {e}", file=stderr)
        return EXIT_FAILURE
    outcome = {"code": EXIT_OK}

    def failed_to(failure, doing):
        Logger(namespace="nymprov.mixnode").failure(doing, failure)
        outcome["code"] = EXIT_FAILURE

    def start():
        service.startService()
        service.when_started().addErrback(failed_to, "The mix node failed to start")

    def stop():
        # Holds the reactor until delayed packets are sent and tags committed.
        if not service.running:
            return None
        return maybeDeferred(service.stopService).addErrback(failed_to, "The mix node did not stop cleanly")

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    return outcome["code"]


def _help_command(args, stdout, stderr):
    texts = {"run": lambda: str(RunCommandOptions()), "init": lambda: str(InitOptions()),
             "help": _command_list, "--version": lambda: f"Usage: {PROGRAM} --version"}
    if not args:
        print(_command_list(), file=stdout)
        return EXIT_OK
    text = texts.get(args[0]) if len(args) == 1 else None
    if text is None:
        print(f"{PROGRAM}: no such command: {' '.join(args)}\n\n{_command_list()}", file=stderr)
        return EXIT_USAGE
    print(text(), file=stdout)
    return EXIT_OK


def main(argv=None, stdout=None, stderr=None):
    """
    Run ``nym-mixnode`` with ``argv`` (``sys.argv[1:]`` by default).

    :returns: the exit code: 0 done, 1 failed, 2 usage error.
    """
    argv = sys.argv[1:] if argv is None else argv
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    if not argv:
        print(f"{PROGRAM} {__version__}: a Nym mix node\n\n{_command_list()}", file=stdout)
        return EXIT_OK
    command, args = argv[0], list(argv[1:])
    if command == "--version" and not args:
        print(f"nymprov {__version__}", file=stdout)
        return EXIT_OK
    if command in ("--help", "-h") and not args:
        return _help_command([], stdout, stderr)
    handler = {"run": _run, "init": _init, "help": _help_command}.get(command)
    if handler is None:
        print(f"{PROGRAM}: unknown command: {command}\n\n{_command_list()}", file=stderr)
        return EXIT_USAGE
    return handler(args, stdout, stderr)


if __name__ == "__main__":
    # Run the imported module's main, not this copy's, so that log lines
    # name nymprov.mixnode rather than __main__.
    from nymprov.mixnode import main as _main

    sys.exit(_main())
