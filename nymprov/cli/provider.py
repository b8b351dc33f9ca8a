"""The ``nym-provider`` command: run, init, bench and help."""

from twisted.python import usage

from nymprov.cli.pipes import quiet_on_broken_pipe
from nymprov._version import __version__
from nymprov.cli.banner import banner, command_list
from nymprov.cli.logs import LOG_FORMATS, NodeLog
from nymprov.cli.common import create_and_print_keys, run_service
from nymprov.cli.dispatch import dispatch, run_bench, show_help
from nymprov.options import EXIT_FAILURE, InvalidOption, parse_command_options
from nymprov.provider.config import DEFAULT_DATA_DIR, POSTGRES_SCHEMES, RunOptions, load_config

PROGRAM = "nym-provider"

#: The commands, ``run`` first as the original listed it; nymprov's own
#: commands follow.
COMMANDS = (
    ("run", "Run a Nym mixnet provider for offline storage"),
    ("init", "Create the data directory, keys and certificate; print the keys"),
    ("bench", "Measure packet processing and ingest speed"),
    ("testnet", "Run a whole mixnet on this machine: mix layers and providers"),
    ("clients", "List, revoke or forget the clients of a running provider"),
    ("invites", "List, add or remove the invite codes of a running provider"),
    ("status", "Show a running provider's readiness, sizes, queues and keys"),
    ("help", "List the commands, or describe one: help COMMAND"),
)

#: The module whose ``main(args)`` is ``nym-provider bench``.
BENCH_MODULE = "nymprov.tools.bench"



class RunCommandOptions(RunOptions):
    """``nym-provider run``: the provider's options plus where logs go."""

    synopsis = f"Usage: {PROGRAM} run [options]"
    optParameters = [
        ["logfile", None, None, "log to this file (reopened on SIGHUP) instead of standard error"],
        ["log-format", None, "text", "text, or json: one JSON object a line"],
        ["processes", None, "1", "provider processes sharing the listening ports;"
         " more than 1 needs a postgresql:// --store"],
    ]

    def postOptions(self):
        if self["log-format"] not in LOG_FORMATS:
            raise InvalidOption(f"--log-format: expected one of {', '.join(LOG_FORMATS)}, got {self['log-format']!r}")
        try:
            self["processes"] = int(self["processes"])
        except ValueError:
            self["processes"] = 0
        if not 1 <= self["processes"] <= 256:
            raise InvalidOption("--processes: expected a whole number from 1 to 256")
        RunOptions.postOptions(self)
        if self["processes"] > 1 and not self.provider_config.store.lower().startswith(POSTGRES_SCHEMES):
            raise InvalidOption("--processes: several processes need a shared store: --store postgresql://...")


class InitOptions(usage.Options):
    """
    ``nym-provider init``: where the data directory is, given directly or
    by the run config file.  After parsing, ``data_dir`` is its absolute
    path.
    """

    synopsis = f"Usage: {PROGRAM} init [options]"
    longdesc = (
        "Create the data directory, the identity and Sphinx keys and the TLS"
        " certificate if they are missing, then print the public keys and the"
        " certificate fingerprint."
    )
    optParameters = [
        ["config", "c", None, "the TOML file of settings that run is given (its data-dir is used)"],
        ["data-dir", "d", None, f"directory for keys, certificate and database [default: {DEFAULT_DATA_DIR}]"],
    ]

    def opt_version(self):
        """Print the version and exit."""
        print(f"nymprov {__version__}")
        raise SystemExit(0)

    def postOptions(self):
        # The whole config is checked, so that init refuses a file that run
        # would refuse.
        self.data_dir = load_config(self).data_dir


def _command_list():
    return command_list(PROGRAM, COMMANDS)


def _banner():
    """What ``nym-provider`` alone prints: the original's text, line for line."""
    return banner(PROGRAM, "mixnet-provider", COMMANDS)


_BENCH_HELP = (
    f"Usage: {PROGRAM} bench [args]\n\n"
    "Measure Sphinx unwrap speed against the X25519 floor and whole-node\n"
    f"ingest over loopback TCP. '{PROGRAM} bench --help' lists its arguments."
)

_HELP_HELP = (
    f"Usage: {PROGRAM} help [COMMAND]\n\n"
    f"Describe COMMAND, or list the commands; '{PROGRAM} help backends'\n"
    "lists the provider backends and their options."
)


def _testnet_help():
    from nymprov.cli.testnet import TestnetOptions

    return str(TestnetOptions())


def _admin_help(command):
    from nymprov.cli.admin import AdminOptions

    return str(AdminOptions(command))


def _backends_help():
    from nymprov.plugins import describe_backends

    return describe_backends()


#: ``help TOPIC``: each topic's text, made when asked (some load plugins).
_HELP_TEXTS = {
    "run": lambda: str(RunCommandOptions()),
    "init": lambda: str(InitOptions()),
    "bench": lambda: _BENCH_HELP,
    "help": lambda: _HELP_HELP,
    "testnet": _testnet_help,
    "--version": lambda: f"Usage: {PROGRAM} --version\n\nPrint the version.",
    "clients": lambda: _admin_help("clients"),
    "invites": lambda: _admin_help("invites"),
    "status": lambda: _admin_help("status"),
    "backends": _backends_help,
}


def _init(args, stdout, stderr):
    options = InitOptions()
    failed = parse_command_options(options, args, stdout, stderr, PROGRAM)
    if failed is not None:
        return failed
    return create_and_print_keys(options.data_dir, stdout, stderr, PROGRAM, certificate=True)


def _bench(args, stdout, stderr):
    return run_bench(PROGRAM, BENCH_MODULE, args, stderr)


def _run(args, stdout, stderr):
    options = RunCommandOptions()
    failed = parse_command_options(options, args, stdout, stderr, PROGRAM)
    if failed is not None:
        return failed
    if options["processes"] > 1:
        from nymprov.cli.processes import run_processes

        return run_processes(options.provider_config, options["processes"], args, stderr, PROGRAM)
    return _run_service(options, stderr)


def _run_service(options, stderr):
    # Imported here: the service pulls in the whole node.
    from nymprov.node.operator import reload_on_hangup
    from nymprov.provider.service import make_provider_service

    config = options.provider_config
    try:
        node_log = NodeLog(stderr, options["logfile"], options["log-format"], config.log_level)
    except OSError as e:
        print(f"{PROGRAM}: --logfile: {e}", file=stderr)
        return EXIT_FAILURE

    def make(reactor):
        service = make_provider_service(config, reactor)
        # SIGHUP reads the same command line and --config file again.
        reload_on_hangup(service, lambda: load_config(options), reactor, node_log)
        return service

    return run_service(make, node_log, stderr, PROGRAM)


def _testnet(args, stdout, stderr):
    from nymprov.cli.testnet import main as testnet_main

    return testnet_main(args, stdout, stderr)


def _help(args, stdout, stderr):
    return show_help(PROGRAM, args, _HELP_TEXTS, _command_list, stdout, stderr)


def _admin(command):
    def run(args, stdout, stderr):
        from nymprov.cli.admin import main as admin_main

        return admin_main(command, args, stdout, stderr)

    return run


_DISPATCH = {"run": _run, "init": _init, "bench": _bench, "testnet": _testnet, "help": _help,
             "clients": _admin("clients"), "invites": _admin("invites"), "status": _admin("status")}


@quiet_on_broken_pipe
def main(argv=None, stdout=None, stderr=None):
    """
    Run ``nym-provider`` with the arguments ``argv`` (``sys.argv[1:]`` by
    default).

    :returns: the exit code: 0 done, 1 failed, 2 usage error.
    """
    return dispatch(PROGRAM, argv, _DISPATCH, _banner, _command_list, stdout, stderr)
