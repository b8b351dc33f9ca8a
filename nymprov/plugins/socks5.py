"""The ``socks5`` backend plugin: TCP streams for clients' SOCKS5 ports (a network requester)."""

from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from nymprov.interfaces import IProviderMaker
from nymprov.plugins import BackendOptions, positive

#: A frame carries its window in 16 bits.
MAX_WINDOW = 0xFFFF


class Socks5Options(BackendOptions):
    """Options of the network requester; with no policy file nothing is reachable."""

    optParameters = [
        ["policy", None, None, "exit policy file: HOST PORTS a line (default: deny everything)"],
        ["max-sessions", None, 256, "client sessions at once", positive(int)],
        ["max-streams", None, 64, "streams of one session at once", positive(int)],
        ["max-surbs", None, 1024, "SURBs one session may leave here", positive(int)],
        ["window", None, 64, "frames in flight per stream and direction", positive(int)],
        ["idle-timeout", None, 120.0, "seconds a silent stream lives", positive(float)],
    ]

    def postOptions(self):
        from nymprov.backends.socks5.policy import ExitPolicy, PolicyError

        if self["window"] > MAX_WINDOW:
            raise usage.UsageError(f"window: at most {MAX_WINDOW} (a 16-bit field of every frame)")

        try:
            self["exit-policy"] = ExitPolicy.load(self["policy"]) if self["policy"] else ExitPolicy()
        except (OSError, PolicyError) as e:
            raise usage.UsageError(f"policy: {e}")


@implementer(IPlugin, IProviderMaker)
class Socks5Maker:
    """Makes :class:`nymprov.backends.socks5.backend.Socks5Provider`."""

    name = "socks5"
    description = "relay TCP streams (a network requester) for nym-client run --socks5"
    options = Socks5Options

    def make(self, config, options, sender, topology, reactor, **context):
        """IProviderMaker API"""
        from nymprov.backends.socks5.backend import Socks5Provider

        return Socks5Provider(
            sender, topology, reactor, policy=options["exit-policy"],
            max_sessions=options["max-sessions"], max_streams=options["max-streams"],
            max_surbs=options["max-surbs"], window=options["window"],
            idle_timeout=options["idle-timeout"], counters=context.get("counters"))


socks5 = Socks5Maker()
