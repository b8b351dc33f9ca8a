"""A mix node's settings: their defaults, checks and command-line options."""

import os
from dataclasses import dataclass, fields

from twisted.python import usage

from nymprov._version import __version__
from nymprov.node.network import NETWORK_HELP, check_network_settings, network_checks
from nymprov.node.pool import default_worker_count
from nymprov.options import (
    fraction,
    LOG_LEVELS,
    InvalidOption,
    InvalidSetting,
    choice,
    check_endpoint,
    check_optional_path,
    check_path,
    list_of,
    number,
    on_unless_none,
    option_name,
    read_toml_file,
    unknown_setting,
    whole_number,
)

DEFAULT_DATA_DIR = "~/.local/share/nymprov-mixnode"
REPLAY_DB_FILE = "replay.sqlite"

#: What ``nym-mixnode run`` serves the operator's HTTP API on, unless told
#: (beside a provider's default 8000).
DEFAULT_HTTP_LISTEN = ("tcp:8001:interface=127.0.0.1",)


@dataclass(frozen=True)
class MixNodeConfig:
    """
    Every setting of a mix node, with its default; construction checks each
    and raises :class:`nymprov.options.InvalidSetting` naming the option.

    ``topology`` (the topology file) is needed to run, not to ``init``.
    """

    data_dir: str = DEFAULT_DATA_DIR
    mix_listen: tuple = ("tcp:1790:interface=127.0.0.1",)
    topology: str = None
    max_delay: float = 30.0  # seconds: the cap on a forward hop's delay
    mix_queue: int = 10000  # packets queued per neighbour
    max_delayed: int = 100_000  # forward hops waiting for their delay at once
    unwrap_workers: int = default_worker_count()  # processes; 0: unwrap on the reactor thread
    max_connections: int = 1024
    max_connections_per_ip: int = 128  # per IPv4 address or IPv6 /64
    idle_timeout: float = 300.0  # seconds
    frame_timeout: float = 30.0  # seconds a begun frame may take
    stats_interval: float = 60.0  # seconds; 0 disables
    layer: int = 1  # the mix layer this node announces to the directory
    epoch_length: float = 0.0  # seconds; 0: one Sphinx key forever
    epoch_zero: float = 0.0
    epoch_grace: float = None  # seconds; None: a quarter epoch
    directory: str = None  # URL of the nym-directory
    directory_key: str = None  # its key, base58
    publish_interval: float = 30.0  # seconds
    node_loop_rate: float = 0.0  # λ_M: the node's own loops per second; 0 sends none
    node_loop_window: float = 30.0  # seconds over which the loops' returned share is judged
    node_loop_threshold: float = 0.8  # a window below this share logs a warning
    fault_drop: float = 0.0  # fault injection: share of packets dropped instead of forwarded
    log_level: str = "info"  # least level logged (nym-mixnode run; SIGHUP changes it)
    http_listen: tuple = ()  # the operator's HTTP API; the command line's default is DEFAULT_HTTP_LISTEN

    def __post_init__(self):
        for field in fields(self):
            value = _CHECKS[field.name](field.name, getattr(self, field.name))
            object.__setattr__(self, field.name, value)
        check_network_settings(self)

    @property
    def replay_db_path(self):
        """The SQLite file of replay tags."""
        return os.path.join(self.data_dir, REPLAY_DB_FILE)


def _check_layer(field, value):
    value = whole_number(1)(field, value)
    if value > 4:
        raise InvalidSetting(field, f"a Sphinx route has mix layers 1..4, got {value}")
    return value


_CHECKS = {
    "data_dir": check_path,
    "mix_listen": list_of(check_endpoint, non_empty=True),
    "topology": check_optional_path,
    "max_delay": number(0.0),
    "mix_queue": whole_number(1),
    "max_delayed": whole_number(1),
    "unwrap_workers": whole_number(0),
    "max_connections": whole_number(1),
    "max_connections_per_ip": whole_number(1),
    "idle_timeout": number(0.0, exclusive=True),
    "frame_timeout": number(0.0, exclusive=True),
    "stats_interval": number(0.0),
    "layer": _check_layer,
    **network_checks(),
    "node_loop_rate": number(0.0),
    "node_loop_window": number(0.0, exclusive=True),
    "node_loop_threshold": fraction,
    "fault_drop": fraction,
    "log_level": choice(*LOG_LEVELS),
    "http_listen": list_of(check_endpoint),
}

_DEFAULTS = MixNodeConfig.__dataclass_fields__

_HELP = {
    "data_dir": "directory for keys and the replay database",
    "topology": "topology file (JSON) naming every node; needed to run",
    "max_delay": "cap on a forward hop's delay, seconds",
    "mix_queue": "packets queued per neighbour",
    "max_delayed": "forward hops waiting for their delay at once",
    "unwrap_workers": "processes that unwrap packets beside the reactor (default: cores - 1, at most 4;"
                      " with epochs the reactor unwraps)",
    "max_connections": "open connections at most",
    "max_connections_per_ip": "open connections at most from one IPv4 address or IPv6 /64",
    "idle_timeout": "seconds after the last complete frame before a connection is closed",
    "frame_timeout": "seconds a frame may take once begun",
    "stats_interval": "seconds between counter log lines (0: never)",
    "layer": "mix layer (1..4) announced to the directory",
    **NETWORK_HELP,
    "node_loop_rate": "λ_M: loops of the node's own through the mixnet per second (0: none)",
    "node_loop_window": "seconds over which the share of loops returned is judged",
    "node_loop_threshold": "returned share below which a window logs a warning",
    "fault_drop": "FAULT INJECTION for tests: share of packets dropped instead of forwarded (0..1)",
    "log_level": "least level logged: " + ", ".join(LOG_LEVELS),
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
    optParameters = [
        ["config", "c", None, "TOML file of settings (keys are the long option names)"],
    ] + [[option_name(f)[2:], None, None, _help(f)] for f in _HELP]
    #: Whether --topology must be given (run: yes; init: no).
    needs_topology = True

    def __init__(self):
        usage.Options.__init__(self)
        self["mix-listen"] = []
        self["http-listen"] = []
        self.mixnode_config = None

    def opt_mix_listen(self, description):
        """endpoint for the mix link, repeatable [default: tcp:1790:interface=127.0.0.1]"""
        self["mix-listen"].append(description)

    def opt_http_listen(self, description):
        """endpoint of the operator's HTTP API (/metrics, /health), repeatable, or none [default: tcp:8001:interface=127.0.0.1]"""
        self["http-listen"].append(description)

    def opt_version(self):
        """Print the version and exit."""
        print(f"nymprov {__version__}")
        raise SystemExit(0)

    def postOptions(self):
        # The command line beats the --config file, which beats the defaults.
        path = self["config"]
        from_file = {} if path is None else read_config_file(path)
        values = dict(from_file)
        given_here = set()
        for field in _DEFAULTS:
            given = self.get(option_name(field)[2:])
            if field in ("mix_listen", "http_listen"):
                if given:
                    values[field] = list(given)
                    given_here.add(field)
            elif given is not None:
                values[field] = _from_text(field, given)
                given_here.add(field)
        on_unless_none(values, "http_listen", DEFAULT_HTTP_LISTEN, ())
        try:
            self.mixnode_config = MixNodeConfig(**values)
        except InvalidSetting as e:
            in_file = e.field in from_file and e.field not in given_here
            raise InvalidOption(f"{e} (in {path})" if in_file else str(e))
        config = self.mixnode_config
        if self.needs_topology and config.topology is None and config.directory is None:
            raise InvalidOption("--topology: a mix node needs the topology file (or --directory) to run")


def reread_config(options):
    """
    :param options: parsed :class:`MixNodeOptions`.
    :returns: the :class:`MixNodeConfig` of the same command line and its
        ``--config`` file as it is now (for SIGHUP).
    """
    options.postOptions()
    return options.mixnode_config


def _field_for_key(key):
    field = key.replace("-", "_")
    return field if "_" not in key and field in _DEFAULTS else None


def read_config_file(path):
    """
    The settings in the TOML file at ``path``, as ``{field: value}``; its
    keys are the long option names (``mix-listen = ["tcp:1790"]``).

    :raises InvalidOption: naming ``--config`` and the file if it cannot be
        read, is not TOML, or holds an unknown key.
    """
    values = {}
    for key, value in read_toml_file(path).items():
        field = _field_for_key(key)
        if field is None:
            raise unknown_setting(key, path, _field_for_key)
        values[field] = value
    return values


def _from_text(field, text):
    kind = _DEFAULTS[field].type
    try:
        return kind(text) if kind in (int, float) else text
    except ValueError:
        raise InvalidOption(f"{option_name(field)}: expected a number, got {text!r}")
