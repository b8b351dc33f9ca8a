"""The provider's settings: their defaults, the TOML file and the command line."""

import os
from dataclasses import dataclass, fields

from twisted.python import usage

from nymprov._version import __version__
from nymprov.net.addresses import host_port_text, parse_host_port
from nymprov.options import (
    fraction,
    LOG_LEVELS,
    InvalidOption,
    InvalidSetting,
    check_bool,
    check_endpoint,
    check_optional_path,
    check_path,
    choice,
    describe,
    list_of,
    number,
    name_value_pairs,
    on_unless_none,
    option_name,
    read_toml_file,
    unknown_setting,
    whole_number,
)
from nymprov.node.network import NETWORK_HELP, check_network_settings, network_checks
from nymprov.node.pool import default_worker_count
from nymprov.provider.registration import REGISTRATION_MODES
from nymprov.sphinx import PacketSize

MiB = 1024 * 1024
DAY = 24 * 60 * 60  # seconds

DEFAULT_DATA_DIR = "~/.local/share/nymprov"
DB_FILE = "nymprov.sqlite"

#: What ``nym-provider run`` serves the operator's HTTP API on, unless told.
DEFAULT_HTTP_LISTEN = ("tcp:8000:interface=127.0.0.1",)
#: The admin socket of ``nym-provider run``, unless told: in the data dir.
ADMIN_SOCKET_FILE = "admin.sock"

STORES = ("sqlite", "memory")
#: A --store beginning with one of these is a PostgreSQL URL.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
DB_SYNCHRONOUS_MODES = ("FULL", "NORMAL")
DEFAULT_BACKEND = "inbox"

#: The client API counts a PULL's slots in 16 bits.
MAX_PULL = 0xFFFF


@dataclass(frozen=True)
class ProviderConfig:
    """
    Every setting of a provider, with its default.

    Construction checks every value and raises :class:`InvalidSetting` naming
    the option; lists become tuples, ``data_dir`` is expanded to an absolute
    path, ``db_path`` defaults to ``<data_dir>/nymprov.sqlite`` and
    ``first_layer`` entries (``"host:port"`` strings or pairs) become
    ``(ip, port)`` pairs.
    """

    data_dir: str = DEFAULT_DATA_DIR
    mix_listen: tuple = ("tcp:1789:interface=127.0.0.1",)
    client_listen: tuple = ("tcp:9000:interface=127.0.0.1",)
    client_tls: bool = True
    store: str = "sqlite"
    db_path: str = None  # None: <data_dir>/nymprov.sqlite
    db_synchronous: str = "FULL"
    max_delay: float = 30.0  # seconds: the cap on a forward hop's delay
    first_layer: tuple = ()
    announce: tuple = ()  # ip:port this node's mix link is reached at, if not its bound address
    inbox_max_messages: int = 10000
    inbox_max_bytes: int = 64 * MiB
    message_ttl: int = 7 * DAY  # seconds
    slot_size: int = 2048  # bytes
    lease_seconds: float = 60.0
    pull_max: int = 64
    registration: str = "open"
    invite_code: tuple = ()
    register_rate: int = 5  # registrations per client IP per hour
    send_rate: float = 200.0  # packets per second per client
    ack_rate: float = 200.0  # SURB-ACKs relayed per second for one inbox (burst: twice that)
    max_connections: int = 1024
    max_connections_per_ip: int = 128  # per listener, per IPv4 address or IPv6 /64
    unwrap_workers: int = default_worker_count()  # processes; 0: unwrap on the reactor thread
    idle_timeout: float = 300.0  # seconds
    frame_timeout: float = 30.0  # seconds a begun frame or TLS handshake may take
    deliver_timeout: float = 30.0  # seconds before a backend's delivery is counted overdue (never cancelled)
    mix_queue: int = 10000  # packets queued per neighbour
    stats_interval: float = 60.0  # seconds; 0 disables
    node_loop_rate: float = 0.0  # λ_M: the node's own loops per second; 0 sends none
    node_loop_window: float = 30.0  # seconds over which the loops' returned share is judged
    node_loop_threshold: float = 0.8  # a window below this share logs a warning
    topology: str = None  # topology file (JSON); None: --first-layer only
    backend: str = DEFAULT_BACKEND  # an IProviderMaker plugin's name
    backend_option: tuple = ()  # (name, value) pairs for the backend's options
    epoch_length: float = 0.0  # seconds; 0: one Sphinx key forever
    epoch_zero: float = 0.0
    epoch_grace: float = None  # seconds; None: a quarter epoch
    directory: str = None  # URL of the nym-directory
    directory_key: str = None  # its key, base58
    publish_interval: float = 30.0  # seconds
    # The operator's interfaces: none unless asked for (the command line
    # asks for both; see load_config).
    log_level: str = "info"  # least level logged (nym-provider run; SIGHUP changes it)
    http_listen: tuple = ()  # endpoints of the HTTP API (/metrics, /health)
    admin_socket: str = None  # UNIX socket of the admin commands

    def __post_init__(self):
        for field in fields(self):
            check = _CHECKS[field.name]
            value = check(field.name, getattr(self, field.name))
            # Frozen: normalising a value needs the base class's setattr.
            object.__setattr__(self, field.name, value)
        check_network_settings(self)
        if self.db_path is None:
            object.__setattr__(self, "db_path", os.path.join(self.data_dir, DB_FILE))
        if self.registration == "invite" and not self.invite_code:
            raise InvalidSetting(
                "invite_code", "at least one is needed when --registration=invite"
            )
        _check_client_api_limits(self.pull_max, self.slot_size)
        if self.backend != DEFAULT_BACKEND or self.backend_option:
            # Finding a backend scans the plugins; the built-in default with
            # no options needs no scan, so that making a config stays cheap.
            _check_backend_options(self.backend, self.backend_option)
        if self.client_tls:
            for description in self.client_listen:
                if description.split(":", 1)[0] == "ssl":
                    raise InvalidSetting(
                        "client_listen",
                        f"{description!r} is TLS already; the certificate is"
                        " added by the provider (or pass --no-client-tls)",
                    )


def _check_invite_code(field, value):
    if not isinstance(value, str) or not value.strip():
        raise InvalidSetting(field, f"expected a non-empty code, got {describe(value)}")
    return value


def _check_first_layer_node(field, value):
    if isinstance(value, str):
        try:
            return parse_host_port(value)
        except ValueError as e:
            raise InvalidSetting(field, f"bad address {value!r}: {e}")
    if isinstance(value, (tuple, list)) and len(value) == 2:
        host, port = value
        return _check_first_layer_node(field, host_port_text(str(host), port))
    raise InvalidSetting(field, f"expected ip:port, got {describe(value)}")


def _check_topology_file(field, value):
    if value is None:
        return None
    path = check_path(field, value)
    # Read now, so that a bad file is a usage error naming the field in it
    # rather than a failure to start.
    from nymprov.topology import TopologyError, load_topology

    try:
        load_topology(path)
    except TopologyError as e:
        raise InvalidSetting(field, str(e))
    return path


def _check_backend_name(field, value):
    if not isinstance(value, str) or not value:
        raise InvalidSetting(field, f"expected a backend name, got {describe(value)}")
    return value


def _check_client_api_limits(pull_max, slot_size):
    """A whole PULL answer (``pull_max`` slots) fits one client-API response."""
    from nymprov.wire.clientapi import MAX_RESPONSE_FRAME, SLOT_HEADER_LENGTH

    if pull_max > MAX_PULL:
        raise InvalidSetting("pull_max", f"must be at most {MAX_PULL}, got {pull_max}")
    # The response's header (5) and the MESSAGES head (14), then the slots:
    # what nymprov.provider.clientapi checks when it starts.
    largest = 5 + 14 + pull_max * (SLOT_HEADER_LENGTH + slot_size)
    if largest > MAX_RESPONSE_FRAME:
        most = (MAX_RESPONSE_FRAME - 19) // pull_max - SLOT_HEADER_LENGTH
        raise InvalidSetting(
            "slot_size",
            f"{pull_max} slots (--pull-max) of {slot_size} bytes exceed the"
            f" {MAX_RESPONSE_FRAME} byte response limit; at most {most} with this --pull-max",
        )


def _check_backend_options(backend, pairs):
    """The backend's plugin exists and accepts ``pairs``."""
    from nymprov.plugins import UnknownBackend, find_maker, parse_backend_options

    try:
        maker = find_maker(backend)
    except UnknownBackend as e:
        raise InvalidSetting("backend", str(e).split(": ", 1)[1])
    try:
        parse_backend_options(maker, pairs)
    except usage.UsageError as e:
        raise InvalidSetting("backend_option", str(e).split(": ", 1)[1])


def _check_store(field, value):
    if isinstance(value, str) and value.lower().startswith(POSTGRES_SCHEMES):
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict

        try:
            conninfo_to_dict(value)
        except ProgrammingError:
            # libpq's message may quote the URL, password and all.
            raise InvalidSetting(field, "not a valid PostgreSQL URL") from None
        return value
    try:
        return choice(*STORES)(field, value)
    except InvalidSetting:
        raise InvalidSetting(
            field, f"expected sqlite, memory or a postgresql:// URL, got {describe(value)}"
        ) from None


_CHECKS = {
    "data_dir": check_path,
    "mix_listen": list_of(check_endpoint, non_empty=True),
    "client_listen": list_of(check_endpoint, non_empty=True),
    "client_tls": check_bool,
    "store": _check_store,
    "db_path": check_optional_path,
    "db_synchronous": choice(*DB_SYNCHRONOUS_MODES),
    "max_delay": number(0.0),
    "first_layer": list_of(_check_first_layer_node),
    "announce": list_of(_check_first_layer_node),
    "inbox_max_messages": whole_number(1),
    "inbox_max_bytes": whole_number(1),
    "message_ttl": whole_number(1),
    # At least a regular packet's message, so that every message the
    # nymprov client sends is kept (larger, extended packets are counted
    # as message_too_large at the final hop).
    "slot_size": whole_number(PacketSize.REGULAR.plaintext),
    "lease_seconds": number(0.0, exclusive=True),
    "pull_max": whole_number(1),
    "registration": choice(*REGISTRATION_MODES),
    "invite_code": list_of(_check_invite_code),
    # A token bucket holds at least one token: one registration per hour at
    # least, and a send burst (twice the rate) of at least one packet.
    "register_rate": whole_number(1),
    "send_rate": number(0.5),
    "ack_rate": number(0.5),
    "max_connections": whole_number(1),
    "max_connections_per_ip": whole_number(1),
    "unwrap_workers": whole_number(0),
    "idle_timeout": number(0.0, exclusive=True),
    "frame_timeout": number(0.0, exclusive=True),
    "deliver_timeout": number(0.0, exclusive=True),
    "mix_queue": whole_number(1),
    "stats_interval": number(0.0),
    "node_loop_rate": number(0.0),
    "node_loop_window": number(0.0, exclusive=True),
    "node_loop_threshold": fraction,
    "topology": _check_topology_file,
    "backend": _check_backend_name,
    "backend_option": name_value_pairs,
    **network_checks(),
    "log_level": choice(*LOG_LEVELS),
    "http_listen": list_of(check_endpoint),
    "admin_socket": check_optional_path,
}

_DEFAULTS = ProviderConfig.__dataclass_fields__

# Fields set by a repeatable option (a list) and by a flag; the rest take
# one value each.
_REPEATABLE = ("mix_listen", "client_listen", "first_layer", "announce", "invite_code", "backend_option",
               "http_listen")
_INTEGER = {field.name for field in fields(ProviderConfig) if field.type is int}
_FLOAT = {field.name for field in fields(ProviderConfig) if field.type is float}

_HELP = {
    "data_dir": "directory for keys, certificate and database",
    "store": "message store: sqlite, memory or a postgresql:// URL (shared by several processes)",
    "db_path": "SQLite file (default: <data-dir>/nymprov.sqlite)",
    "db_synchronous": "SQLite synchronous mode: FULL or NORMAL",
    "max_delay": "cap on a forward hop's delay, seconds",
    "inbox_max_messages": "messages held per client",
    "inbox_max_bytes": "bytes held per client",
    "message_ttl": "seconds a message is kept before it expires",
    "slot_size": "bytes per stored message slot",
    "lease_seconds": "seconds a pulled batch stays leased before redelivery",
    "pull_max": "messages per pull",
    "registration": "who may register: open, invite (with --invite-code) or closed (no new clients)",
    "register_rate": "registrations per client IP per hour",
    "send_rate": "packets per second per client",
    "ack_rate": "SURB-ACKs relayed per second for the messages of one client (burst: twice that); the rest are dropped",
    "max_connections": "open connections at most, per listener",
    "max_connections_per_ip": "open connections at most from one IPv4 address or IPv6 /64, per listener",
    "unwrap_workers": "processes that unwrap mix packets beside the reactor (default: cores - 1, at most 4)",
    "idle_timeout": "seconds after the last complete frame before a connection is closed",
    "frame_timeout": "seconds a frame (or the TLS handshake) may take once begun",
    "deliver_timeout": "seconds before a delivery the backend has not answered is counted and logged as overdue",
    "mix_queue": "packets queued per neighbour mix node",
    "stats_interval": "seconds between counter log lines (0: never)",
    "node_loop_rate": "λ_M: loops of the node's own through the mixnet per second (0: none; needs --topology)",
    "node_loop_window": "seconds over which the share of loops returned is judged",
    "node_loop_threshold": "returned share below which a window logs a warning",
    "topology": "topology file (JSON): its first layer is added to --first-layer",
    "backend": "what happens to delivered messages ('nym-provider help backends')",
    **NETWORK_HELP,
    "log_level": "least level logged: " + ", ".join(LOG_LEVELS),
    "admin_socket": "UNIX socket of the admin commands, or none [default: <data-dir>/admin.sock]",
}


def _help(field):
    default = _DEFAULTS[field].default
    text = _HELP[field]
    return text if default is None else f"{text} [default: {default}]"


class RunOptions(usage.Options):
    """
    The options of ``nym-provider run`` and ``twistd nym-provider``.

    After parsing, ``provider_config`` holds the checked
    :class:`ProviderConfig`.
    """

    synopsis = "[options]"
    longdesc = (
        "Run a Nym mixnet provider: accept Sphinx packets from mix nodes, hold"
        " messages for clients and relay their packets into the mixnet."
        " Settings come from the command line, then the --config file, then"
        " the defaults. Endpoints are Twisted endpoint strings."
    )

    optParameters = [
        ["config", "c", None, "TOML file of settings (keys are the long option names)"],
        ["data-dir", "d", None, _help("data_dir")],
    ] + [
        [option_name(field)[2:], None, None, _help(field)]
        for field in _HELP
        if field != "data_dir"
    ]

    optFlags = [
        ["no-client-tls", None, "serve the client API without TLS"],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        for field in _REPEATABLE:
            self[option_name(field)[2:]] = []
        self.provider_config = None

    def opt_mix_listen(self, description):
        """endpoint for mix nodes, repeatable [default: tcp:1789:interface=127.0.0.1]"""
        self["mix-listen"].append(description)

    def opt_client_listen(self, description):
        """endpoint for clients (TLS added), repeatable [default: tcp:9000:interface=127.0.0.1]"""
        self["client-listen"].append(description)

    def opt_first_layer(self, address):
        """ip:port ([ipv6]:port) of a first-layer mix node for clients' packets, repeatable"""
        self["first-layer"].append(address)

    def opt_announce(self, address):
        """ip:port at which others reach this node's mix link (for a wildcard listen), repeatable"""
        self["announce"].append(address)

    def opt_invite_code(self, code):
        """invite code accepted when --registration=invite, repeatable"""
        self["invite-code"].append(code)

    def opt_http_listen(self, description):
        """endpoint of the operator's HTTP API (/metrics, /health), repeatable, or none [default: tcp:8000:interface=127.0.0.1]"""
        self["http-listen"].append(description)

    def opt_backend_option(self, pair):
        """NAME=VALUE option of the chosen backend, repeatable ('nym-provider help backends')"""
        self["backend-option"].append(pair)

    def opt_version(self):
        """Print the version and exit."""
        print(f"nymprov {__version__}")
        raise SystemExit(0)

    def postOptions(self):
        # Checked here, not in makeService, so that twistd and twist report a
        # bad value as a usage error before anything is created.
        self.provider_config = load_config(self)


def _from_text(field, text):
    """A command-line string converted to ``field``'s type."""
    try:
        if field in _INTEGER:
            return int(text)
        if field in _FLOAT:
            return float(text)
    except ValueError:
        kind = "a whole number" if field in _INTEGER else "a number"
        raise InvalidOption(f"{option_name(field)}: expected {kind}, got {text!r}")
    return text


def _command_line_values(options):
    values = {}
    for field in _DEFAULTS:
        if field == "client_tls":
            if options.get("no-client-tls"):
                values[field] = False
            continue
        given = options.get(option_name(field)[2:])
        if field in _REPEATABLE:
            if given:
                values[field] = list(given)
        elif given is not None:
            values[field] = _from_text(field, given)
    return values


def _field_for_key(key):
    if key == "no-client-tls":
        return "client_tls"
    field = key.replace("-", "_")
    if "_" in key or field not in _DEFAULTS or field == "client_tls":
        return None
    return field


def read_config_file(path):
    """
    The settings in the TOML file at ``path``, as ``{field: value}``.

    :raises InvalidOption: naming ``--config`` and the file if it cannot be
        read, is not TOML, or holds an unknown key.
    """
    values = {}
    for key, value in read_toml_file(path).items():
        field = _field_for_key(key)
        if field is None:
            raise unknown_setting(key, path, _field_for_key)
        if field == "client_tls":
            if not isinstance(value, bool):
                raise InvalidOption(
                    f"--no-client-tls: expected true or false, got {describe(value)}"
                    f" (in {path})"
                )
            value = not value
        values[field] = value
    return values


def load_config(options):
    """
    The :class:`ProviderConfig` that ``options`` describe: each setting from
    the command line if given there, else from the ``--config`` file if set
    there, else its default. Reads the file; creates nothing.

    :param options: parsed :class:`RunOptions` (or a mapping with its keys).
    :rtype: ProviderConfig
    :raises InvalidOption: a :class:`usage.UsageError` whose message is one
        line naming the option.
    """
    from_file = {}
    path = options.get("config")
    if path is not None:
        from_file = read_config_file(path)
    values = dict(from_file)
    from_command_line = _command_line_values(options)
    values.update(from_command_line)
    # A provider run from the command line (or a config file) serves the
    # HTTP API and the admin socket unless told "none".
    on_unless_none(values, "http_listen", DEFAULT_HTTP_LISTEN, ())
    data_dir = values.get("data_dir", DEFAULT_DATA_DIR)
    socket = os.path.join(os.path.expanduser(data_dir), ADMIN_SOCKET_FILE) if isinstance(data_dir, str) else None
    on_unless_none(values, "admin_socket", socket, None)
    try:
        return ProviderConfig(**values)
    except InvalidSetting as e:
        from_the_file = e.field in from_file and e.field not in from_command_line
        raise InvalidOption(f"{e} (in {path})" if from_the_file else str(e))
