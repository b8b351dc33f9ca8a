"""The directory's settings: defaults, checks and command-line options."""

import os
from dataclasses import dataclass, fields

from twisted.python import usage

from nymprov._version import __version__
from nymprov.netdoc.document import RATE_NAMES
from nymprov.options import (
    InvalidOption,
    InvalidSetting,
    check_endpoint,
    check_optional_path,
    check_path,
    number,
    option_name,
)

DEFAULT_DATA_DIR = "~/.local/share/nymprov-directory"
DATABASE_FILE = "directory.sqlite"
KEY_FILE = "directory.key"


@dataclass(frozen=True)
class DirectoryConfig:
    """
    Every setting of ``nym-directory``, with its default; construction
    checks each and raises :class:`nymprov.options.InvalidSetting` naming
    the option.
    """

    data_dir: str = DEFAULT_DATA_DIR
    listen: str = "tcp:8080:interface=127.0.0.1"
    http_listen: str = None  # the operator's HTTP API (/metrics, /health); none by default
    database: str = None  # default: directory.sqlite in data_dir
    epoch_length: float = 3600.0  # seconds
    epoch_zero: float = 0.0  # Unix time at which epoch 0 began
    expiry: float = 180.0  # seconds a node stays listed after its last descriptor
    grace: float = None  # seconds nodes keep a retired key; default a quarter epoch
    max_skew: float = 30.0  # seconds a descriptor's timestamp may be ahead
    admit: str = None  # file of admitted identities; none: anyone may join
    # Shaping rates published to clients in the network document (as
    # Katzenpost's directory does); none: clients keep their own defaults.
    send_rate: float = None  # λ_P
    loop_rate: float = None  # λ_L
    drop_rate: float = None  # λ_D

    def __post_init__(self):
        for field in fields(self):
            value = _CHECKS[field.name](field.name, getattr(self, field.name))
            object.__setattr__(self, field.name, value)
        if self.grace is None:
            object.__setattr__(self, "grace", self.epoch_length / 4)
        if self.send_rate is not None and not self.send_rate > 0:
            raise InvalidSetting("send_rate", "must be above 0 (clients shape at this rate)")
        if self.grace > self.epoch_length:
            raise InvalidSetting("grace", f"must be at most the epoch length ({self.epoch_length:g}), got {self.grace:g}")

    @property
    def rates(self):
        """The shaping rates to publish: name -> packets per second."""
        return {name: getattr(self, name) for name in RATE_NAMES if getattr(self, name) is not None}

    @property
    def database_path(self):
        if self.database is None:
            return os.path.join(self.data_dir, DATABASE_FILE)
        return self.database

    @property
    def key_path(self):
        return os.path.join(self.data_dir, KEY_FILE)


def _check_database(field, value):
    return value if value in (None, ":memory:") else check_path(field, value)


def _optional_number(minimum):
    check = number(minimum)
    return lambda field, value: None if value is None else check(field, value)


_CHECKS = {
    "data_dir": check_path,
    "listen": check_endpoint,
    "http_listen": lambda field, value: None if value is None else check_endpoint(field, value),
    "database": _check_database,
    "epoch_length": number(0.0, exclusive=True),
    "epoch_zero": number(0.0),
    "expiry": number(0.0, exclusive=True),
    "grace": _optional_number(0.0),
    "max_skew": number(0.0),
    "admit": check_optional_path,
    "send_rate": _optional_number(0.0),
    "loop_rate": _optional_number(0.0),
    "drop_rate": _optional_number(0.0),
}

_DEFAULTS = DirectoryConfig.__dataclass_fields__

_HELP = {
    "data_dir": "directory for the signing key and the database",
    "listen": "endpoint of the HTTP API",
    "http_listen": "endpoint of the operator's HTTP API (/metrics, /health, /description); none if not given",
    "database": "SQLite file of descriptors [default: DATA_DIR/directory.sqlite]",
    "epoch_length": "seconds per epoch",
    "epoch_zero": "Unix time at which epoch 0 began",
    "expiry": "seconds a node stays listed after its last descriptor",
    "grace": "seconds nodes accept a retired Sphinx key [default: a quarter epoch]",
    "max_skew": "seconds a descriptor's timestamp may be ahead of this clock",
    "admit": "file of admitted identity keys (base58, one a line); none: open",
    "send_rate": "λ_P published to clients: payload packets per second (none: clients' own)",
    "loop_rate": "λ_L published to clients: loop cover packets per second (none: clients' own)",
    "drop_rate": "λ_D published to clients: drop cover packets per second (none: clients' own)",
}


def _help(field):
    default = _DEFAULTS[field].default
    return _HELP[field] if default is None else f"{_HELP[field]} [default: {default}]"


def read_admission_list(path):
    """
    :returns: the set of 32-byte identities in the file at ``path``: one
        base58 key a line; blank lines and ``#`` comments are skipped.
    :raises InvalidSetting: naming the line that is not a key.
    """
    from nymprov.netdoc.errors import MalformedDocument
    from nymprov.netdoc.signed import key_from_text

    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read(4 * 1024 * 1024).splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidSetting("admit", f"{path}: cannot read: {e}") from None
    admitted = set()
    for number_, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            admitted.add(key_from_text(text, f"{path}:{number_}"))
        except MalformedDocument as e:
            raise InvalidSetting("admit", str(e)) from None
    return admitted


class DirectoryOptions(usage.Options):
    """
    The options of ``nym-directory run`` and ``twistd nym-directory``;
    after parsing, ``directory_config`` holds the checked
    :class:`DirectoryConfig`.
    """

    synopsis = "[options]"
    longdesc = (
        "Run a Nym network directory: take descriptors that nodes sign with"
        " their identity keys, and serve per epoch a network document signed"
        " with the directory's key."
    )
    optParameters = [[option_name(f)[2:], None, None, _help(f)] for f in _HELP]

    def __init__(self):
        usage.Options.__init__(self)
        self.directory_config = None

    def opt_version(self):
        """Print the version and exit."""
        print(f"nymprov {__version__}")
        raise SystemExit(0)

    def postOptions(self):
        values = {}
        for field in _DEFAULTS:
            given = self.get(option_name(field)[2:])
            if given is not None:
                values[field] = _from_text(field, given)
        try:
            self.directory_config = DirectoryConfig(**values)
        except InvalidSetting as e:
            raise InvalidOption(str(e))


def _from_text(field, text):
    if _DEFAULTS[field].type is not float:
        return text
    try:
        return float(text)
    except ValueError:
        raise InvalidOption(f"{option_name(field)}: expected a number, got {text!r}")
