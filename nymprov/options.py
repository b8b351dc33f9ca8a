"""
Settings shared by nymprov's commands: one-line errors that name the option,
the checks that make them, and parsing a command line into options.
"""

import contextlib
import math
import os

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from nymprov.errors import ConfigError

#: The levels of ``--log-level``, least first.
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")

# Exit codes: 2 for a usage error, as argparse and most Unix tools do.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# Settings whose option is a negative flag.
_FLAG_NAMES = {"client_tls": "--no-client-tls"}


def option_name(field):
    """
    The command-line option that sets ``field``, e.g. ``--max-delay``.
    """
    return _FLAG_NAMES.get(field) or "--" + field.replace("_", "-")


class InvalidSetting(ConfigError):
    """
    A setting has an invalid value; the message is one line naming the
    option, and ``field`` is the setting's field name.
    """

    def __init__(self, field, problem):
        super().__init__(f"{option_name(field)}: {problem}")
        self.field = field


class InvalidOption(usage.UsageError):
    """
    The command line or config file holds an invalid value (as opposed to an
    unknown option); the message is one line naming the option.
    """





def on_unless_none(values, field, default, off):
    """
    Set ``values[field]`` to ``default`` when it was not given, or to
    ``off`` when it was given as ``none`` (the operator's interfaces, which
    a node run from the command line has unless told otherwise).
    """
    value = values.get(field)
    if value is None:
        values[field] = default
    elif (value if isinstance(value, str) else list(map(str, value)) if isinstance(value, (list, tuple))
          else None) in ("none", ["none"]):
        values[field] = off


def read_toml_file(path):
    """
    The table of the TOML file at ``path`` (a ``--config`` file).

    :raises InvalidOption: naming ``--config`` and the file if it cannot be
        read or is not TOML.
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise InvalidOption(f"--config: cannot read {path}: {e.strerror}")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InvalidOption(f"--config: {path} is not valid TOML: {e}")


def unknown_setting(key, path, is_known):
    """
    :returns: the error for an unknown ``key`` in the file at ``path``,
        suggesting the option name if ``is_known`` holds for it.
    """
    hint = key.replace("_", "-")
    suggestion = f" (did you mean {hint!r}?)" if is_known(hint) else ""
    return InvalidOption(f"--config: unknown setting {key!r} in {path}{suggestion}")


# Checks: each takes the field name and the value, returns the value
# (normalised) or raises InvalidSetting.


def describe(value):
    return f"{type(value).__name__} {value!r}"


def check_path(field, value):
    if not isinstance(value, str) or not value:
        raise InvalidSetting(field, f"expected a path, got {describe(value)}")
    if "\0" in value:
        raise InvalidSetting(field, "a path cannot hold a NUL character")
    return os.path.abspath(os.path.expanduser(value))


def check_optional_path(field, value):
    if value is None:
        return None
    return check_path(field, value)


def check_bool(field, value):
    if not isinstance(value, bool):
        raise InvalidSetting(field, f"expected true or false, got {describe(value)}")
    return value


def choice(*allowed):
    def check(field, value):
        if isinstance(value, str):
            for choice in allowed:
                if value.lower() == choice.lower():
                    return choice
        raise InvalidSetting(
            field, f"expected one of {', '.join(allowed)}, got {value!r}"
        )

    return check


def whole_number(minimum):
    def check(field, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidSetting(field, f"expected a whole number, got {describe(value)}")
        if value < minimum:
            raise InvalidSetting(field, f"must be at least {minimum}, got {value}")
        return value

    return check


def number(minimum, exclusive=False):
    def check(field, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidSetting(field, f"expected a number, got {describe(value)}")
        value = float(value)
        if not math.isfinite(value):
            raise InvalidSetting(field, f"must be finite, got {value}")
        if value < minimum or (exclusive and value == minimum):
            bound = "above" if exclusive else "at least"
            raise InvalidSetting(field, f"must be {bound} {minimum:g}, got {value:g}")
        return value

    return check


def list_of(check_item, non_empty=False):
    def check(field, value):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise InvalidSetting(field, f"expected a list, got {describe(value)}")
        if non_empty and not value:
            raise InvalidSetting(field, "at least one is needed")
        return tuple(check_item(field, item) for item in value)

    return check


def name_value_pairs(field, value):
    """
    ``(name, value)`` pairs of text, from a TOML table (a dict) or from
    ``name=value`` items (the command line); lists become comma-separated.
    """
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = []
        for item in value:
            if isinstance(item, str):
                name, equals, text = item.partition("=")
                if not equals or not name:
                    raise InvalidSetting(field, f"expected name=value, got {item!r}")
                items.append((name, text))
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                items.append(tuple(item))
            else:
                raise InvalidSetting(field, f"expected name=value, got {describe(item)}")
    else:
        raise InvalidSetting(field, f"expected name=value pairs, got {describe(value)}")
    pairs = []
    for name, text in items:
        if isinstance(text, (list, tuple)):
            text = ",".join(map(str, text))
        elif isinstance(text, bool):
            text = str(text).lower()
        pairs.append((str(name), str(text)))
    return tuple(pairs)


def check_endpoint(field, value):
    if not isinstance(value, str):
        raise InvalidSetting(field, f"expected an endpoint string, got {describe(value)}")
    try:
        # Parsing checks the string (and any files an ssl: endpoint names);
        # endpoints touch their reactor only when they listen, so none is
        # needed here.
        serverFromString(None, value)
    except Exception as e:
        # Endpoint parsers are plugins and may raise anything on bad input.
        raise InvalidSetting(field, f"bad endpoint {value!r}: {e}")
    return value


def parse_command_options(options, args, stdout, stderr, program):
    """
    Parse ``args`` into ``options``; on failure, say why on ``stderr``
    (as ``program``).

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


def fraction(field, value):
    """A share from 0 to 1."""
    value = number(0.0)(field, value)
    if value > 1.0:
        raise InvalidSetting(field, f"must be at most 1, got {value:g}")
    return value
