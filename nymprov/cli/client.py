"""The ``nym-client`` command: init, address, run, send, receive, broadcast and bench."""

import base64
import json
import os
import sys

from twisted.internet.defer import TimeoutError, ensureDeferred
from twisted.internet.task import deferLater, react
from twisted.python import usage

from nymprov.cli import clientrun
from nymprov.cli.pipes import quiet_on_broken_pipe
from nymprov.cli.provider import parse_command_options
from nymprov._version import __version__
from nymprov.client.stream import DEFAULT_DROP_RATE, DEFAULT_LOOP_RATE, DEFAULT_SEND_RATE
from nymprov.errors import ConfigError
from nymprov.keys import write_file_atomically

PROGRAM = "nym-client"
CONFIG_FILE = "client.toml"
STATE_FILE = "received.json"


def _toml(path):
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: {e}") from None


class _Common(usage.Options):
    optParameters = [
        ["config", "c", None, "a client config (as nym-provider testnet writes)"],
        ["data-dir", "d", None, "the client's folder: keys, token, received messages"],
        ["topology", "t", None, "the topology file"],
        ["provider", "p", None, "the provider's identity (base58)"],
        ["mean-delay-ms", None, None, "mean per-hop delay", float],
        ["send-rate", None, None, f"λ_P: packets per second of the payload stream [{DEFAULT_SEND_RATE:g}]", float],
        ["loop-rate", None, None, f"λ_L: loop cover packets per second [{DEFAULT_LOOP_RATE:g}]", float],
        ["drop-rate", None, None, f"λ_D: drop cover packets per second [{DEFAULT_DROP_RATE:g}]", float],
    ]
    optFlags = [["unshaped", None, "send each packet at once, no payload stream (observable: tests only)"]]

    def settings(self):
        """Command line, then --config, then DATA_DIR/client.toml."""
        found = {}
        if self["config"]:
            found.update(_toml(self["config"]))
        data_dir = self["data-dir"] or found.get("data_dir")
        if data_dir and os.path.exists(os.path.join(data_dir, CONFIG_FILE)) and not self["config"]:
            found.update(_toml(os.path.join(data_dir, CONFIG_FILE)))
        for key in ("topology", "provider", "mean_delay_ms", "send_rate", "loop_rate", "drop_rate"):
            given = self[key.replace("_", "-")]
            if given is not None:
                found[key] = given
        found["data_dir"] = data_dir
        for key in ("data_dir", "topology", "provider"):
            if not found.get(key):
                raise usage.UsageError(f"no {key.replace('_', '-')}: give --{key.replace('_', '-')} or --config")
        found.setdefault("mean_delay_ms", 50.0)
        # Rates set here (command line or file) override what the network
        # document publishes; the others may come from it.
        found["local_rates"] = {key for key in ("send_rate", "loop_rate", "drop_rate") if key in found}
        found.setdefault("send_rate", DEFAULT_SEND_RATE)
        found.setdefault("loop_rate", DEFAULT_LOOP_RATE)
        found.setdefault("drop_rate", DEFAULT_DROP_RATE)
        if self["unshaped"]:
            found["shaped"] = False
        found.setdefault("shaped", True)
        for key in ("send_rate", "loop_rate", "drop_rate"):
            if not float(found[key]) >= 0:
                raise usage.UsageError(f"{key.replace('_', '-')} must be a number of packets per second, 0 or more")
        if found["shaped"] and not float(found["send_rate"]) > 0:
            raise usage.UsageError("send-rate must be above 0 when shaping (or give --unshaped)")
        return found


    def opt_version(self):
        """Print the version and exit."""
        print(f"nymprov {__version__}")
        raise SystemExit(0)

    def getSynopsis(self):
        # Twisted would put the parent's synopsis and the command name in
        # front of this one; the synopsis says it all already.
        return self.synopsis


class InitOptions(_Common):
    synopsis = f"Usage: {PROGRAM} init --config FILE | --data-dir DIR --topology FILE --provider ID"


class AddressOptions(_Common):
    synopsis = f"Usage: {PROGRAM} address [--data-dir DIR]"


class SendOptions(_Common):
    synopsis = f"Usage: {PROGRAM} send [options] ADDRESS [MESSAGE|-]"
    optParameters = [["wait", "w", 60.0, "seconds to wait for the ACKs", float]]

    def parseArgs(self, address, message="-"):
        self["address"], self["message"] = address, message


class RunOptions(_Common):
    synopsis = f"Usage: {PROGRAM} run [options]"
    optParameters = [["api-listen", None, "tcp:1977:interface=127.0.0.1",
                      "the local WebSocket API's endpoint (loopback or unix: only, unless --api-public)"],
                     ["socks5", None, None, "serve SOCKS5 on HOST:PORT (loopback only, unless --socks5-public;"
                      " port 0: any free one, printed)"],
                     ["service", "s", None, "the socks5 service provider's identity (base58), for --socks5"]]
    optFlags = [["api-public", None, "allow the local API on an address other than loopback"],
                ["socks5-public", None, "allow the SOCKS5 port on an address other than loopback"]]

    def __init__(self):
        _Common.__init__(self)
        self["api-allow-origin"] = []

    def opt_api_allow_origin(self, origin):
        """a web page origin (scheme://host[:port]) that may use the local API (repeatable)"""
        if "://" not in origin:
            raise usage.UsageError(f"--api-allow-origin: {origin!r} is not scheme://host[:port]")
        self["api-allow-origin"].append(origin)

    def postOptions(self):
        if self["socks5"] is None:
            return
        import ipaddress

        from nymprov.net.addresses import parse_host_port

        try:
            host, port = parse_host_port(self["socks5"], any_port=True)
        except ValueError as e:
            raise usage.UsageError(f"--socks5: {e}")
        if not self["socks5-public"] and not ipaddress.ip_address(host).is_loopback:
            raise usage.UsageError(f"--socks5: {host} is not loopback (give --socks5-public to allow it)")
        if not self["service"]:
            raise usage.UsageError("--socks5 needs --service: the socks5 service provider's identity")
        self["socks5-host"], self["socks5-port"] = host, int(port)


class ReceiveOptions(_Common):
    synopsis = f"Usage: {PROGRAM} receive [options]"
    optParameters = [["wait", "w", 3.0, "seconds to keep pulling", float]]


class BroadcastOptions(_Common):
    synopsis = f"Usage: {PROGRAM} broadcast [options] --chain CHAIN --service ID [FILE|-]"
    optParameters = [
        ["chain", None, None, "ethereum or bitcoin: the transaction is checked before it is sent"],
        ["service", "s", None, "the broadcast service provider's identity (base58)"],
        ["wait", "w", 180.0, "seconds to wait for the answer", float],
    ]

    def parseArgs(self, source="-"):
        self["source"] = source

    def postOptions(self):
        from nymprov.backends.broadcast.backend import CHAINS

        if self["chain"] not in CHAINS:
            raise usage.UsageError(f"--chain: one of {', '.join(sorted(CHAINS))}")
        if not self["service"]:
            raise usage.UsageError("--service: the broadcast provider's identity is needed")


class BenchOptions(usage.Options):
    """Listed for --help only: ``bench`` hands its arguments to the benchmark."""

    synopsis = f"Usage: {PROGRAM} bench [--help | arguments]"


class Options(usage.Options):
    synopsis = f"Usage: {PROGRAM} COMMAND [options]"
    subCommands = [
        ["init", None, InitOptions, "create keys and register with the provider"],
        ["address", None, AddressOptions, "print this client's address"],
        ["run", None, RunOptions, "keep running: shaped streams, pulls, a local WebSocket API"],
        ["send", None, SendOptions, "send a message (from the argument or stdin)"],
        ["receive", None, ReceiveOptions, "pull, print and acknowledge messages"],
        ["broadcast", None, BroadcastOptions, "hand a signed transaction (hex or raw, file or stdin) to a broadcaster"],
        ["bench", None, BenchOptions, "measure a testnet's throughput ('bench --help')"],
    ]

    def opt_version(self):
        """Print the version and exit."""
        print(f"nymprov {__version__}")
        raise SystemExit(0)

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("a command is needed")


async def _topology(settings, reactor):
    """
    The directory's live topology when the config names a directory (as
    the testnet's do), else (or if it cannot be reached) the topology file.
    """
    from nymprov.topology import load_topology

    if settings.get("directory") and settings.get("directory_key"):
        from nymprov.client.network import ClientNetwork
        from nymprov.metrics import Counters
        from nymprov.netdoc.signed import key_from_text

        try:
            key = key_from_text(settings["directory_key"], "directory_key")
            topology = await ClientNetwork(reactor, settings["directory"], key, Counters()).start()
            _published_rates(settings, topology.holder.latest)
            return topology
        except Exception as e:  # unreachable, refused or malformed: the file still routes
            print(f"{PROGRAM}: directory {settings['directory']} not used ({e}); routing by the topology file",
                  file=sys.stderr)
    return load_topology(settings["topology"])


def _published_rates(settings, document):
    """Take the shaping rates the network document publishes, unless set locally."""
    from nymprov.netdoc.document import RATE_NAMES

    for name in RATE_NAMES:
        if name in document.parameters and name not in settings.get("local_rates", ()):
            settings[name] = document.parameters[name]


async def _client(settings, reactor):
    from nymprov.client import NymClient, load_or_create_client_keys

    keys = load_or_create_client_keys(settings["data_dir"])
    topology = await _topology(settings, reactor)
    try:
        return NymClient(keys, topology, settings["provider"], reactor=reactor,
                         data_dir=settings["data_dir"],
                         mean_delay=float(settings["mean_delay_ms"]) / 1000.0, pull_interval=0.5,
                         send_rate=float(settings["send_rate"]), loop_rate=float(settings["loop_rate"]),
                         drop_rate=float(settings["drop_rate"]), shaped=bool(settings["shaped"]))
    except KeyError:
        raise ConfigError(f"provider {settings['provider']} is not in {settings['topology']}") from None


def _load_received(client, data_dir):
    """Resume fragments and unprinted messages kept by an earlier run."""
    from nymprov.wire.fragments import Reassembler

    path = os.path.join(data_dir, STATE_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        state = json.load(f)
    client.reassembler = Reassembler.from_state(state["fragments"])
    return [bytes.fromhex(m) for m in state["messages"]]


def _save_received(client, data_dir, messages):
    state = {"fragments": client.reassembler.state(), "messages": [m.hex() for m in messages]}
    write_file_atomically(os.path.join(data_dir, STATE_FILE), json.dumps(state).encode())


def printable(message):
    """
    :returns: ``message`` as text for a terminal, one message per line:
        the text itself if it is UTF-8 without control characters (other
        than newlines and tabs), else a line that says it is binary, with
        the bytes in base64.
    """
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\n\t" for c in text):
        return text if text.endswith("\n") else text + "\n"
    encoded = base64.b64encode(message).decode("ascii")
    return f"[binary, {len(message)} bytes, base64] {encoded}\n"


def _drain(client):
    messages = []
    while client.inbox.pending:
        messages.append(client.inbox.pending.pop(0).data)
    return messages


async def _init(reactor, settings, out):
    client = await _client(settings, reactor)
    await client.session()
    await client.stop()
    kept = {"topology": os.path.abspath(settings["topology"]), "provider": settings["provider"],
            "mean_delay_ms": float(settings["mean_delay_ms"])}
    kept.update({key: settings[key] for key in ("directory", "directory_key") if settings.get(key)})
    # Only rates set here: the others keep coming from the network document.
    kept.update({key: float(settings[key]) for key in sorted(settings.get("local_rates", ()))})
    text = "".join(f"{k} = {json.dumps(v)}\n" for k, v in kept.items())
    write_file_atomically(os.path.join(settings["data_dir"], CONFIG_FILE), text.encode(), mode=0o644)
    print(client.address, file=out)


async def _send(reactor, settings, options, out, err, stdin):
    data = stdin.buffer.read() if options["message"] == "-" else options["message"].encode("utf-8")
    api = await clientrun.connect_running(reactor, settings["data_dir"], clientrun.SEND_ONLY_QUERY)
    if api is not None:
        await clientrun.send_through(reactor, api, options["address"], data, options["wait"])
        print(f"sent {len(data)} bytes through the running client; acknowledged by the recipient's provider",
              file=out)
        return
    clientrun.fallback_notice(PROGRAM, "send", settings["data_dir"], err)
    client = await _client(settings, reactor)
    earlier = _load_received(client, settings["data_dir"])
    await client.start()
    try:
        d = client.send(options["address"], data)
        d.addTimeout(options["wait"], reactor)
        try:
            await d
        except TimeoutError:
            raise ConfigError(
                f"no acknowledgement within {options['wait']:g} seconds (--wait);"
                " the message may still arrive, or may be lost"
            ) from None
        print(f"sent {len(data)} bytes; acknowledged by the recipient's provider", file=out)
    finally:
        # Messages that came in meanwhile wait for the next receive.
        await client.stop()
        _save_received(client, settings["data_dir"], earlier + _drain(client))


async def _receive(reactor, settings, options, out, err):
    api = await clientrun.connect_running(reactor, settings["data_dir"])
    if api is not None:
        for message in await clientrun.receive_through(reactor, api, options["wait"]):
            out.write(printable(message))
        out.flush()
        return
    clientrun.fallback_notice(PROGRAM, "receive", settings["data_dir"], err)
    client = await _client(settings, reactor)
    messages = _load_received(client, settings["data_dir"])
    await client.start()
    await deferLater(reactor, options["wait"], lambda: None)
    await client.stop()
    messages += _drain(client)
    for message in messages:
        out.write(printable(message))
    out.flush()
    _save_received(client, settings["data_dir"], [])


async def _run(reactor, settings, options, out):
    client = await _client(settings, reactor)
    earlier = _load_received(client, settings["data_dir"])
    await clientrun.run(reactor, client, settings, options, out, earlier,
                        lambda left: _save_received(client, settings["data_dir"], left))


def read_transaction(data, chain):
    """
    :param bytes data: a transaction as hex (``0x`` allowed, blanks
        ignored) or raw bytes.
    :returns: the parsed transaction of ``chain``.
    :raises InvalidTransaction: if it is not one.
    """
    from nymprov.backends.broadcast.backend import CHAINS

    text = b"".join(data.split())
    text = text[2:] if text[:2].lower() == b"0x" else text
    try:
        raw = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raw = data
    return CHAINS[chain].parse_transaction(raw)


async def _broadcast(reactor, settings, options, out, err, stdin):
    from nymprov.client.services import ServiceClient

    if options["source"] == "-":
        data = stdin.buffer.read()
    else:
        with open(options["source"], "rb") as f:
            data = f.read()
    tx = read_transaction(data, options["chain"])
    print(f"txid {tx.txid_hex}", file=out)
    # A running client's API has no service requests (yet): this one
    # connects by itself; the broadcaster's random delay still separates
    # the sending from the broadcast.
    print(f"{PROGRAM} broadcast: connecting once by itself: an observer of the link can see when this happens",
          file=err)
    client = await _client(settings, reactor)
    await client.start()
    try:
        service = ServiceClient(client, options["service"], reactor)
        answer = await service.broadcast(tx.raw, timeout=options["wait"])
    finally:
        await client.stop()
    print(f"{answer.outcome} {answer.txid.hex()}" + (f": {answer.message}" if answer.message else ""), file=out)
    return 1 if answer.outcome == "rejected" else 0


@quiet_on_broken_pipe
def main(argv=None, stdout=None, stderr=None, stdin=None):
    """Run ``nym-client``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    out, err = stdout or sys.stdout, stderr or sys.stderr
    stdin = stdin or sys.stdin
    if argv[:1] == ["bench"]:
        from nymprov.tools import bench_network

        return bench_network.main(argv[1:], out)
    options = Options()
    failed = parse_command_options(options, argv, out, err, PROGRAM)
    if failed is not None:
        return failed
    command, sub = options.subCommand, options.subOptions
    try:
        settings = sub.settings()
        if command == "address":
            from nymprov.client import load_or_create_client_keys
            from nymprov.topology import load_topology

            keys = load_or_create_client_keys(settings["data_dir"])
            provider = load_topology(settings["topology"]).provider(settings["provider"])
            print(keys.address(provider.identity), file=out)
            return 0
    except (usage.UsageError, ConfigError, KeyError) as e:
        print(f"{PROGRAM} {command}: {e}", file=err)
        return 2
    outcome = {"code": 0}

    async def run(reactor):
        try:
            if command == "init":
                await _init(reactor, settings, out)
            elif command == "send":
                await _send(reactor, settings, sub, out, err, stdin)
            elif command == "run":
                await _run(reactor, settings, sub, out)
            elif command == "broadcast":
                outcome["code"] = await _broadcast(reactor, settings, sub, out, err, stdin)
            else:
                await _receive(reactor, settings, sub, out, err)
        except ConfigError as e:
            print(f"{PROGRAM} {command}: {e}", file=err)
            outcome["code"] = 1
        except Exception as e:  # reported, not a traceback: the user acts on it
            print(f"{PROGRAM} {command}: {type(e).__name__}: {e}", file=err)
            outcome["code"] = 1

    try:
        react(lambda reactor: ensureDeferred(run(reactor)))
    except SystemExit:
        pass
    return outcome["code"]


if __name__ == "__main__":
    sys.exit(main())

