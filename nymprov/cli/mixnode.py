"""The ``nym-mixnode`` command: run, init, bench and help."""

import sys

from nymprov.cli.pipes import quiet_on_broken_pipe
from nymprov.cli.banner import banner, command_list
from nymprov.cli.logs import LOG_FORMATS, NodeLog
from nymprov.cli.common import create_and_print_keys, run_service
from nymprov.cli.dispatch import dispatch, run_bench, show_help
from nymprov.mixnode.config import MixNodeOptions, reread_config
from nymprov.options import EXIT_FAILURE, InvalidOption, parse_command_options

PROGRAM = "nym-mixnode"

#: The module whose ``main(args)`` is ``nym-mixnode bench``.
BENCH_MODULE = "nymprov.tools.bench_mixnode"

_BENCH_HELP = (
    f"Usage: {PROGRAM} bench [args]\n\n"
    "Measure forward-hop unwrap speed against the X25519 floor and whole-node\n"
    f"forward ingest over loopback TCP. '{PROGRAM} bench --help' lists its arguments."
)


class RunCommandOptions(MixNodeOptions):
    """``nym-mixnode run``: the node's options plus the log level."""

    synopsis = f"Usage: {PROGRAM} run [options]"
    optParameters = [
        ["logfile", None, None, "log to this file (reopened on SIGHUP) instead of standard error"],
        ["log-format", None, "text", "text, or json: one JSON object a line"],
    ]

    def postOptions(self):
        if self["log-format"] not in LOG_FORMATS:
            raise InvalidOption(f"--log-format: expected one of {', '.join(LOG_FORMATS)}, got {self['log-format']!r}")
        MixNodeOptions.postOptions(self)


class InitOptions(MixNodeOptions):
    """``nym-mixnode init``: only --data-dir matters."""

    synopsis = f"Usage: {PROGRAM} init [options]"
    longdesc = "Create the data directory and keys if missing, then print the public keys."
    needs_topology = False


COMMANDS = (
    ("run", "Run a Nym mix node"),
    ("init", "Create the data directory and keys; print the public keys"),
    ("bench", "Measure forward-hop processing and whole-node forward ingest"),
    ("help", "List the commands, or describe one: help COMMAND"),
)

def _command_list():
    return command_list(PROGRAM, COMMANDS)


def _banner():
    return banner(PROGRAM, "mixnode", COMMANDS)


def _init(args, stdout, stderr):
    options = InitOptions()
    failed = parse_command_options(options, args, stdout, stderr, PROGRAM)
    if failed is not None:
        return failed
    return create_and_print_keys(options.mixnode_config.data_dir, stdout, stderr, PROGRAM)


def _run(args, stdout, stderr):
    options = RunCommandOptions()
    failed = parse_command_options(options, args, stdout, stderr, PROGRAM)
    if failed is not None:
        return failed
    # Imported here: the service pulls in the whole node.
    from nymprov.mixnode.service import MixNodeService
    from nymprov.node.operator import reload_on_hangup

    config = options.mixnode_config
    try:
        node_log = NodeLog(stderr, options["logfile"], options["log-format"], config.log_level)
    except OSError as e:
        print(f"{PROGRAM}: --logfile: {e}", file=stderr)
        return EXIT_FAILURE

    def make(reactor):
        service = MixNodeService(config, reactor, stop_reactor_on_failure=True)
        reload_on_hangup(service, lambda: reread_config(options), reactor, node_log)
        return service

    return run_service(make, node_log, stderr, PROGRAM)


def _help_command(args, stdout, stderr):
    texts = {"run": lambda: str(RunCommandOptions()), "init": lambda: str(InitOptions()),
             "bench": lambda: _BENCH_HELP,
             "help": _command_list, "--version": lambda: f"Usage: {PROGRAM} --version"}
    return show_help(PROGRAM, args, texts, _command_list, stdout, stderr)


@quiet_on_broken_pipe
def main(argv=None, stdout=None, stderr=None):
    """
    Run ``nym-mixnode`` with ``argv`` (``sys.argv[1:]`` by default).

    :returns: the exit code: 0 done, 1 failed, 2 usage error.
    """
    handlers = {"run": _run, "init": _init, "bench": lambda args, stdout, stderr: run_bench(
        PROGRAM, BENCH_MODULE, args, stderr), "help": _help_command}
    return dispatch(PROGRAM, argv, handlers, _banner, _command_list, stdout, stderr)


if __name__ == "__main__":
    # Run the imported module's main, not this copy's, so that log lines
    # name nymprov.cli.mixnode rather than __main__.
    from nymprov.cli.mixnode import main as _main

    sys.exit(_main())
