"""The ``nym-provider testnet`` command: a whole mixnet on this machine."""

import sys
import tempfile

from twisted.python import usage

from nymprov.options import parse_command_options
from nymprov.tools.testnet import Testnet


class TestnetOptions(usage.Options):
    """The options of ``nym-provider testnet``."""

    synopsis = "Usage: nym-provider testnet [options]"
    longdesc = (
        "Run a whole mixnet on this machine: mix layers and providers as separate"
        " processes on 127.0.0.1, with topology.json and a client config per"
        " provider in --dir. Ctrl-C (or SIGTERM) stops every node."
    )
    optParameters = [
        ["layers", None, 3, "mix layers (1..4)", int],
        ["per-layer", None, 1, "mix nodes per layer", int],
        ["providers", None, 2, "providers", int],
        ["dir", None, None, "directory for keys, logs and configs [default: a new temporary one]"],
        ["mean-delay-ms", None, 50.0, "mean per-hop delay written into the client configs", float],
        ["base-port", None, None, "first port to use [default: free ports]", int],
        ["epoch-length", None, 60.0, "seconds per epoch: a nym-directory runs, nodes publish to it and"
         " rotate their Sphinx keys; 0: no directory, one key per node", float],
        ["socks5-policy", None, None, "an exit policy file: one more provider runs the socks5 backend"
         " with it, for nym-client run --socks5 (its identity is in DIR/socks5-service)"],
    ]

    def postOptions(self):
        if not self["epoch-length"] >= 0:
            raise usage.UsageError("--epoch-length: seconds, 0 or more")

    def opt_version(self):
        """Print the version and exit."""
        from nymprov._version import __version__

        print(f"nymprov {__version__}")
        raise SystemExit(0)


def main(args, stdout=None, stderr=None):
    """
    Run the testnet until SIGINT or SIGTERM, then stop every node.

    :returns: the exit code: 0 stopped cleanly, 1 failed, 2 usage error.
    """
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    options = TestnetOptions()
    failed = parse_command_options(options, args, stdout, stderr, "nym-provider testnet")
    if failed is not None:
        return failed
    from twisted.internet import reactor

    directory = options["dir"] or tempfile.mkdtemp(prefix="nym-testnet-")
    try:
        testnet = Testnet(directory, options["layers"], options["per-layer"], options["providers"],
                          mean_delay_ms=options["mean-delay-ms"], base_port=options["base-port"],
                          reactor=reactor, epoch_length=options["epoch-length"],
                          socks5_policy=options["socks5-policy"])
    except (ValueError, OSError) as e:
        print(f"nym-provider testnet: {e}", file=stderr)
        return 2 if isinstance(e, ValueError) else 1
    outcome = {"code": 0}

    def ready(_):
        print(testnet.describe(), file=stdout)
        print("testnet ready", file=stdout, flush=True)

    def failed(failure):
        print(f"nym-provider testnet: {failure.getErrorMessage()}", file=stderr)
        outcome["code"] = 1
        if reactor.running:
            reactor.stop()

    reactor.callWhenRunning(lambda: testnet.start().addCallbacks(ready, failed))
    # The reactor stops on SIGINT and SIGTERM; this trigger holds it until
    # every child is gone.
    reactor.addSystemEventTrigger("before", "shutdown", lambda: testnet.stop())
    reactor.run()
    print("testnet stopped", file=stdout, flush=True)
    return outcome["code"]


if __name__ == "__main__":
    from nymprov.cli.testnet import main as _main

    sys.exit(_main(sys.argv[1:]))
