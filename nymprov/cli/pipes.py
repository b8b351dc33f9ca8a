"""Commands whose reader goes away early (``nym-provider init | head -3``)."""

import functools
import os
import sys

from nymprov.options import EXIT_FAILURE


def quiet_on_broken_pipe(main):
    """
    Wrap a command's ``main`` so that a closed standard output ends it with
    exit code 1 and no traceback, as ``cat`` and ``grep`` end.
    """

    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            code = main(*args, **kwargs)
            # Output to a pipe is buffered: it is written here, not by the
            # prints.
            sys.stdout.flush()
            return code
        except BrokenPipeError:
            # Python flushes stdout again at exit, which would raise once
            # more: point it at /dev/null first (the recipe of the Python
            # documentation's signal module page).
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_FAILURE

    return run
