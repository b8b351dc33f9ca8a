"""
The shape every nymprov command shares: ``PROGRAM COMMAND [options]``, a
banner when called bare, ``--version``, ``--help`` and ``help COMMAND``.
"""

import importlib
import importlib.util
import sys

from nymprov._version import __version__
from nymprov.options import EXIT_FAILURE, EXIT_OK, EXIT_USAGE


def run_bench(program, module, args, stderr):
    """
    Run benchmark ``module``'s ``main(args)``.

    :returns: the exit code.
    """
    # find_spec, not try/import: an ImportError raised inside an existing
    # bench module is a bug to show, not a missing benchmark.
    if importlib.util.find_spec(module) is None:
        print(f"{program}: the benchmark ({module}) is not installed", file=stderr)
        return EXIT_FAILURE
    bench = importlib.import_module(module)
    try:
        result = bench.main(args)
    except SystemExit as e:
        # argparse exits after --help or a usage error; return its code.
        result = e.code
    return EXIT_OK if result is None else result


def show_help(program, args, texts, command_list, stdout, stderr):
    """
    ``PROGRAM help [COMMAND]``: the command list, or one command's help.

    :param texts: ``{command: callable returning its help text}``.
    :returns: the exit code.
    """
    if not args:
        print(command_list(), file=stdout)
        return EXIT_OK
    text = texts.get(args[0]) if len(args) == 1 else None
    if text is None:
        print(f"{program}: no such command: {' '.join(args)}\n\n{command_list()}", file=stderr)
        return EXIT_USAGE
    print(text(), file=stdout)
    return EXIT_OK


def dispatch(program, argv, handlers, banner, command_list, stdout=None, stderr=None):
    """
    Run the command that ``argv`` (``sys.argv[1:]`` by default) names.

    :param handlers: ``{command: handler(args, stdout, stderr) -> exit code}``;
        ``help`` among them answers ``--help`` too.
    :param banner: returns what a bare call prints.
    :param command_list: returns the list printed after an unknown command.
    :returns: the exit code: 0 done, 1 failed, 2 usage error.
    """
    argv = sys.argv[1:] if argv is None else argv
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    if not argv:
        print(banner(), file=stdout)
        return EXIT_OK
    command, args = argv[0], list(argv[1:])
    if command == "--version" and not args:
        print(f"nymprov {__version__}", file=stdout)
        return EXIT_OK
    if command in ("--help", "-h") and not args:
        command = "help"
    handler = handlers.get(command)
    if handler is None:
        print(f"{program}: unknown command: {command}\n\n{command_list()}", file=stderr)
        return EXIT_USAGE
    return handler(args, stdout, stderr)
