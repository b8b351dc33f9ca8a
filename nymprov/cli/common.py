"""What the commands of nymprov share: printing keys, and running a service."""

from twisted.logger import Logger

from nymprov.errors import ConfigError
from nymprov.options import EXIT_FAILURE, EXIT_OK

from nymprov.options import LOG_LEVELS  # noqa: F401 (the commands' --log-level)


def create_and_print_keys(data_dir, stdout, stderr, program, certificate=False):
    """
    Make (or load) the keys in ``data_dir``, and the TLS certificate if
    ``certificate``, and print what an operator hands out.

    :returns: the exit code.
    """
    # Imported here: they load the crypto libraries, which the help and
    # version paths do not need.
    from nymprov.keys import load_or_create_keys
    from nymprov.net.tls import certificate_fingerprint, load_or_create_certificate

    try:
        keys = load_or_create_keys(data_dir)
        made = load_or_create_certificate(data_dir) if certificate else None
    except (ConfigError, OSError) as e:
        print(f"{program}: {e}", file=stderr)
        return EXIT_FAILURE
    print(f"data directory:          {data_dir}", file=stdout)
    print(f"identity key:            {keys.identity_base58}", file=stdout)
    print(f"sphinx key:              {keys.sphinx.public_base58}", file=stdout)
    if made is not None:
        print(f"certificate fingerprint: {certificate_fingerprint(made).hex()}", file=stdout)
    return EXIT_OK


def _stop_once_on_signals(reactor, log):
    """
    Replace the reactor's SIGINT and SIGTERM handlers with ones that stop it
    once: a second signal during the orderly shutdown (an impatient Ctrl-C,
    or a supervisor repeating its SIGTERM) must not interrupt the flush.
    """
    import signal

    stopping = []

    def stop():
        if not stopping and reactor.running:
            stopping.append(True)
            log.info("stopping: closing connections and flushing the store")
            reactor.stop()

    def handler(signum, frame):
        reactor.callFromThread(stop)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def run_service(make_service, log, stderr, program):
    """
    Log through ``log`` (a :class:`nymprov.cli.logs.NodeLog`, or a level
    name: to ``stderr`` as text from that level up), build the node with
    ``make_service(reactor)`` and run it as twistd would: its
    ``privilegedStartService`` and ``startService`` before the reactor
    runs, its ``stopService`` from a "before shutdown" trigger (which holds
    the reactor until the tree has stopped), the reactor stopped by a
    signal.

    :returns: the exit code.
    """
    from twisted.application import app
    from twisted.application.service import Application, IService
    from twisted.internet import reactor

    from nymprov.cli.logs import NodeLog
    from nymprov.node.service import StartFailure

    node_log = NodeLog(stderr, level=log) if isinstance(log, str) else log
    log = Logger(namespace=f"nymprov.cli.{program}")
    try:
        service = make_service(reactor)
    except (ConfigError, OSError) as e:
        print(f"{program}: {e}", file=stderr)
        return EXIT_FAILURE
    application = Application(program)
    service.setServiceParent(application)
    try:
        IService(application).privilegedStartService()
    except StartFailure as e:
        # Before logging begins: a failed start is this one line alone.
        print(f"{program}: {e}", file=stderr)
        return EXIT_FAILURE
    node_log.begin()
    # The node stops the reactor itself if a part fails to start.
    app.startApplication(application, False)
    reactor.callWhenRunning(_stop_once_on_signals, reactor, log)
    reactor.run()
    return EXIT_OK if service.start_failure is None else EXIT_FAILURE
