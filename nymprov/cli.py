"""The ``nym-provider`` command: run, init, bench and help."""

import contextlib
import importlib
import importlib.util
import sys

from twisted.logger import Logger
from twisted.python import usage

from nymprov._version import __version__
from nymprov.config import InvalidOption, RunOptions
from nymprov.errors import ConfigError

PROGRAM = "nym-provider"

LOGO = r"""
    ##   ##  ##    ##  ##     ##
    ###  ##   ##  ##   ###   ###
    #### ##    ####    #### ####
    ## ####     ##     ## ### ##
    ##  ###     ##     ##  #  ##
    ##   ##     ##     ##     ##
    . . . mixnet provider . . .
"""

COMMANDS = (
    ("run", "run the provider in the foreground (Ctrl-C stops it)"),
    ("init", "create the data directory, keys and certificate; print the keys"),
    ("bench", "measure packet processing and ingest speed"),
    ("testnet", "run a whole mixnet on this machine: mix layers and providers"),
    ("help", "list the commands, or describe one: help COMMAND"),
    ("--version", "print the version"),
)

#: The module whose ``main(args)`` is ``nym-provider bench``.
BENCH_MODULE = "nymprov.bench"

LOG_LEVELS = ("debug", "info", "warn", "error", "critical")

# Exit codes: 2 for a usage error, as argparse and most Unix tools do.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_log = Logger(namespace="nymprov.cli")


class RunCommandOptions(RunOptions):
    """``nym-provider run``: the provider's options plus where logs go."""

    synopsis = f"Usage: {PROGRAM} run [options]"
    optParameters = [
        ["log-level", None, "info", "least level logged: " + ", ".join(LOG_LEVELS)],
    ]

    def postOptions(self):
        if self["log-level"] not in LOG_LEVELS:
            raise InvalidOption(
                f"--log-level: expected one of {', '.join(LOG_LEVELS)},"
                f" got {self['log-level']!r}"
            )
        RunOptions.postOptions(self)


class InitOptions(RunOptions):
    """``nym-provider init``: the provider's options (for the data dir)."""

    synopsis = f"Usage: {PROGRAM} init [options]"
    longdesc = (
        "Create the data directory, the identity and Sphinx keys and the TLS"
        " certificate if they are missing, then print the public keys and the"
        " certificate fingerprint. Takes the same options as run; only"
        " --data-dir (or --config) matters."
    )


def _command_list():
    width = max(len(name) for name, _ in COMMANDS)
    lines = [f"Usage: {PROGRAM} COMMAND [options]", "", "Commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, summary in COMMANDS]
    lines += ["", f"'{PROGRAM} help COMMAND' describes a command;"
              f" '{PROGRAM} help backends' lists the provider backends."]
    return "\n".join(lines)


def _banner():
    return f"{LOGO}\n{PROGRAM} {__version__}\n\n{_command_list()}"


_BENCH_HELP = (
    f"Usage: {PROGRAM} bench [args]\n\n"
    "Measure Sphinx unwrap speed against the X25519 floor and whole-node\n"
    f"ingest over loopback TCP. '{PROGRAM} bench --help' lists its arguments."
)

_HELP_HELP = f"Usage: {PROGRAM} help [COMMAND]\n\n" + _command_list()


def _help_text(command):
    """The help for ``command``, or ``None`` if there is no such command."""
    if command == "run":
        return str(RunCommandOptions())
    if command == "init":
        return str(InitOptions())
    if command == "bench":
        return _BENCH_HELP
    if command == "help":
        return _HELP_HELP
    if command == "testnet":
        from nymprov.testnet import TestnetOptions

        return str(TestnetOptions())
    if command == "--version":
        return f"Usage: {PROGRAM} --version\n\nPrint the version."
    if command == "backends":
        from nymprov.plugins import describe_backends

        return describe_backends()
    return None


def parse_command_options(options, args, stdout, stderr, program=PROGRAM):
    """
    Parse ``args`` into ``options``; on failure, say why on ``stderr``
    (as ``program``).  Shared by the commands of nymprov.

    :returns: ``None`` if parsed, else the exit code.
    """
    try:
        # --help and --version print with print(); send that to stdout.
        with contextlib.redirect_stdout(stdout):
            options.parseOptions(args)
    except InvalidOption as e:
        # A bad value: one line, no wall of usage text.
        print(f"{program}: {e}", file=stderr)
        return EXIT_USAGE
    except usage.UsageError as e:
        print(f"{program}: {e}\n\n{options}", file=stderr)
        return EXIT_USAGE
    except SystemExit as e:
        # --help and --version exit once they have printed.
        return e.code or EXIT_OK
    return None


def create_and_print_keys(data_dir, stdout, stderr, program=PROGRAM, certificate=False):
    """
    Make (or load) the keys in ``data_dir``, and the TLS certificate if
    ``certificate``, and print what an operator hands out.  Shared by the
    ``init`` commands of nymprov.

    :returns: the exit code.
    """
    # Imported here: they load the crypto libraries, which the help and
    # version paths do not need.
    from nymprov.keys import load_or_create_keys
    from nymprov.tls import certificate_fingerprint, load_or_create_certificate

    try:
        keys = load_or_create_keys(data_dir)
        made = load_or_create_certificate(data_dir) if certificate else None
    except (ConfigError, OSError) as e:
        print(f"{program}: {e}", file=stderr)
        return EXIT_FAILURE
    print(f"data directory:          {data_dir}", file=stdout)
    print(f"identity key:            {keys.identity_base58}", file=stdout)
    print(f"sphinx key:              {keys.sphinx.public_base58}", file=stdout)
    if made is not None:
        print(f"certificate fingerprint: {certificate_fingerprint(made)}", file=stdout)
    return EXIT_OK


def _init(args, stdout, stderr):
    options = InitOptions()
    failed = parse_command_options(options, args, stdout, stderr)
    if failed is not None:
        return failed
    return create_and_print_keys(options.provider_config.data_dir, stdout, stderr, certificate=True)


def _bench(args, stdout, stderr):
    # find_spec, not try/import: an ImportError raised inside an existing
    # bench module is a bug to show, not a missing benchmark.
    if importlib.util.find_spec(BENCH_MODULE) is None:
        print(f"{PROGRAM}: the benchmark ({BENCH_MODULE}) is not installed", file=stderr)
        return EXIT_FAILURE
    bench = importlib.import_module(BENCH_MODULE)
    try:
        result = bench.main(args)
    except SystemExit as e:
        # argparse exits after --help or a usage error; return its code.
        result = e.code
    return EXIT_OK if result is None else result


def _run(args, stdout, stderr):
    options = RunCommandOptions()
    failed = parse_command_options(options, args, stdout, stderr)
    if failed is not None:
        return failed
    return _run_service(options, stderr)


def _stop_once_on_signals(reactor):
    """
    Replace the reactor's SIGINT and SIGTERM handlers with ones that stop it
    once: a second signal during the orderly shutdown (an impatient Ctrl-C,
    or a supervisor repeating its SIGTERM) must not interrupt the flush.
    """
    import signal

    stopping = []

    def stop():
        if not stopping and reactor.running:
            stopping.append(True)
            _log.info("stopping: closing connections and flushing the store")
            reactor.stop()

    def handler(signum, frame):
        reactor.callFromThread(stop)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _run_service(options, stderr):
    """
    Log to ``stderr``, build the service, run the global reactor until a
    signal stops it, and wait for the service to stop.

    :returns: the exit code.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import maybeDeferred
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from nymprov.tap import makeService

    level = LogLevel.levelWithName(options["log-level"])
    observer = FilteringLogObserver(
        textFileLogObserver(stderr), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    try:
        service = makeService(options, reactor)
    except (ConfigError, OSError) as e:
        print(f"{PROGRAM}: {e}", file=stderr)
        return EXIT_FAILURE
    outcome = {"code": EXIT_OK}

    def failed(failure, doing):
        _log.failure(doing, failure)
        outcome["code"] = EXIT_FAILURE

    def start():
        # The service stops the reactor itself if it cannot start.
        service.startService()
        service.when_started().addErrback(failed, "The provider failed to start")
        _stop_once_on_signals(reactor)

    def stop():
        # A "before shutdown" trigger that returns a Deferred holds the
        # reactor until it fires: pending writes are flushed before exit.
        if not service.running:
            return None
        d = maybeDeferred(service.stopService)
        d.addErrback(failed, "The provider did not stop cleanly")
        return d

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    # The reactor stops itself on SIGINT and SIGTERM.
    reactor.run()
    return outcome["code"]


def _testnet(args, stdout, stderr):
    from nymprov.testnet import main as testnet_main

    return testnet_main(args, stdout, stderr)


def _help(args, stdout, stderr):
    if not args:
        print(_command_list(), file=stdout)
        return EXIT_OK
    text = _help_text(args[0]) if len(args) == 1 else None
    if text is None:
        print(f"{PROGRAM}: no such command: {' '.join(args)}\n", file=stderr)
        print(_command_list(), file=stderr)
        return EXIT_USAGE
    print(text, file=stdout)
    return EXIT_OK


_DISPATCH = {"run": _run, "init": _init, "bench": _bench, "testnet": _testnet, "help": _help}


def main(argv=None, stdout=None, stderr=None):
    """
    Run ``nym-provider`` with the arguments ``argv`` (``sys.argv[1:]`` by
    default).

    :returns: the exit code: 0 done, 1 failed, 2 usage error.
    """
    if argv is None:
        argv = sys.argv[1:]
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    if not argv:
        print(_banner(), file=stdout)
        return EXIT_OK
    command, args = argv[0], list(argv[1:])
    if command == "--version" and not args:
        print(f"nymprov {__version__}", file=stdout)
        return EXIT_OK
    if command in ("--help", "-h") and not args:
        return _help([], stdout, stderr)
    handler = _DISPATCH.get(command)
    if handler is None:
        print(f"{PROGRAM}: unknown command: {command}\n", file=stderr)
        print(_command_list(), file=stderr)
        return EXIT_USAGE
    return handler(args, stdout, stderr)
