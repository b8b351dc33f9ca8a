"""The ``nym-directory`` command: run, init and help."""

import sys

from nymprov._version import __version__
from nymprov.cli.common import LOG_LEVELS, run_service
from nymprov.cli.dispatch import dispatch, show_help
from nymprov.directory.config import DirectoryOptions
from nymprov.errors import ConfigError
from nymprov.options import EXIT_FAILURE, EXIT_OK, InvalidOption, parse_command_options

PROGRAM = "nym-directory"


class RunCommandOptions(DirectoryOptions):
    """``nym-directory run``: the directory's options plus the log level."""

    synopsis = f"Usage: {PROGRAM} run [options]"
    optParameters = [["log-level", None, "info", "least level logged: " + ", ".join(LOG_LEVELS)]]

    def postOptions(self):
        if self["log-level"] not in LOG_LEVELS:
            raise InvalidOption(
                f"--log-level: expected one of {', '.join(LOG_LEVELS)}, got {self['log-level']!r}"
            )
        DirectoryOptions.postOptions(self)


class InitOptions(DirectoryOptions):
    """``nym-directory init``: only --data-dir matters."""

    synopsis = f"Usage: {PROGRAM} init [options]"
    longdesc = "Create the data directory and the signing key if missing, then print the key to pin."


COMMANDS = (
    ("run", "run the directory in the foreground (Ctrl-C stops it)"),
    ("init", "create the data directory and signing key; print the key to pin"),
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
    from nymprov.directory.service import load_or_create_directory_key
    from nymprov.netdoc.signed import key_text

    config = options.directory_config
    try:
        key = load_or_create_directory_key(config.key_path)
    except (ConfigError, OSError) as e:
        print(f"{PROGRAM}: {e}", file=stderr)
        return EXIT_FAILURE
    print(f"data directory:          {config.data_dir}", file=stdout)
    print(f"directory key:           {key_text(key.verify_key.encode())}", file=stdout)
    return EXIT_OK


def _run(args, stdout, stderr):
    options = RunCommandOptions()
    failed = parse_command_options(options, args, stdout, stderr, PROGRAM)
    if failed is not None:
        return failed
    # Imported here: the service pulls in twisted.web and the store.
    from nymprov.directory.service import DirectoryService

    return run_service(
        lambda reactor: DirectoryService(options.directory_config, reactor, stop_reactor_on_failure=True),
        options["log-level"],
        stderr,
        PROGRAM,
    )


def _help_command(args, stdout, stderr):
    texts = {"run": lambda: str(RunCommandOptions()), "init": lambda: str(InitOptions()),
             "help": _command_list, "--version": lambda: f"Usage: {PROGRAM} --version"}
    return show_help(PROGRAM, args, texts, _command_list, stdout, stderr)


def _banner():
    return f"{PROGRAM} {__version__}: a Nym network directory\n\n{_command_list()}"


def main(argv=None, stdout=None, stderr=None):
    """
    Run ``nym-directory`` with ``argv`` (``sys.argv[1:]`` by default).

    :returns: the exit code: 0 done, 1 failed, 2 usage error.
    """
    handlers = {"run": _run, "init": _init, "help": _help_command}
    return dispatch(PROGRAM, argv, handlers, _banner, _command_list, stdout, stderr)


if __name__ == "__main__":
    from nymprov.cli.directory import main as _main

    sys.exit(_main())
