"""
``nym-provider run --processes N``: one parent that binds the listening
sockets and keeps N provider processes running on them, all sharing one
PostgreSQL store, so that every core of the machine works.
"""

import json
import os
import signal
import sys

from twisted.internet.error import CannotListenError
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from nymprov.errors import ConfigError
from nymprov.net.inherited import ENVIRONMENT, NotShareable, bind_shared, check_shareable
from nymprov.options import EXIT_FAILURE, EXIT_OK

#: Seconds before a provider process that died is started again.
RESTART_DELAY = 1.0
#: A provider process that exits with an error sooner than this after its
#: start could not start (a bad setting, a port, the database): starting it
#: again would fail the same way, so the parent stops instead.
START_FAILURE_WINDOW = 10.0
#: Seconds the parent waits for its children after passing on a SIGTERM
#: before it kills them.
STOP_DEADLINE = 60.0


def child_arguments(args):
    """
    :returns: ``args`` without ``--processes`` and its value, which a child
        must not see (it would start children of its own).
    """
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--processes":
            skip = True
        elif not arg.startswith("--processes="):
            kept.append(arg)
    return kept


class _Child(ProcessProtocol):
    def __init__(self, supervisor, number):
        self.supervisor = supervisor
        self.number = number

    def processEnded(self, reason):
        self.supervisor.ended(self, reason.value.exitCode, reason.value.signal)


class Supervisor:
    """
    Keeps ``count`` provider processes running with the listening sockets
    in ``inherited``; a process that dies is started again after
    :data:`RESTART_DELAY`; a SIGTERM or SIGINT is passed on to every one,
    and the parent exits once they all have.
    """

    log = Logger()

    def __init__(self, reactor, count, args, inherited, admin_socket=None):
        self._reactor = reactor
        self._count = count
        self._args = args
        self._inherited = inherited
        self._admin_socket = admin_socket
        self._children = {}  # number -> process transport
        self._started = {}  # number -> reactor time of its start
        self._stopping = False
        self.code = EXIT_OK

    def start(self):
        for number in range(self._count):
            self._spawn(number)

    def _spawn(self, number):
        if self._stopping:
            return
        env = dict(os.environ)
        env[ENVIRONMENT] = json.dumps(self._inherited)
        child_fds = {0: "w", 1: 1, 2: 2}
        for sockets in self._inherited.values():
            for fd, _ in sockets:
                child_fds[fd] = fd
        command = [sys.executable, "-m", "nymprov", "run"] + self._args
        if self._admin_socket is not None:
            # A UNIX socket per process: each answers for itself.
            stem, extension = os.path.splitext(self._admin_socket)
            command += ["--admin-socket", f"{stem}-{number}{extension}"]
        process = self._reactor.spawnProcess(
            _Child(self, number), sys.executable, command, env=env, childFDs=child_fds
        )
        self._children[number] = process
        self._started[number] = self._reactor.seconds()
        self.log.info("provider process {number} started (pid {pid})", number=number, pid=process.pid)

    def ended(self, child, code, signal_number):
        self._children.pop(child.number, None)
        if self._stopping:
            if code not in (0, None):
                self.code = EXIT_FAILURE
            if not self._children and self._reactor.running:
                self._reactor.stop()
            return
        if code not in (0, None) and self._reactor.seconds() - self._started[child.number] < START_FAILURE_WINDOW:
            self.log.error("provider process {number} could not start (exit {code}); stopping", number=child.number,
                           code=code)
            self.code = EXIT_FAILURE
            self.stop()
            return
        self.log.warn(
            "provider process {number} ended (exit {code}, signal {signal}); starting it again",
            number=child.number, code=code, signal=signal_number,
        )
        self._reactor.callLater(RESTART_DELAY, self._spawn, child.number)

    def stop(self):
        """Pass a SIGTERM on to every child; stop once they have all ended."""
        if self._stopping:
            return
        self._stopping = True
        if not self._children and self._reactor.running:
            self._reactor.stop()
            return
        for process in self._children.values():
            process.signalProcess("TERM")
        self._reactor.callLater(STOP_DEADLINE, self._kill_stragglers)

    def _kill_stragglers(self):
        for process in list(self._children.values()):
            self.log.warn("provider process {pid} did not stop in time: killed", pid=process.pid)
            process.signalProcess("KILL")


def run_processes(config, count, args, stderr, program):
    """
    Bind ``config``'s listening endpoints here, then run ``count`` provider
    processes on them until a signal stops this one.

    :param args: the command line of ``run`` (``--processes`` is dropped).
    :returns: the exit code.
    """
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from nymprov.keys import load_or_create_keys


    descriptions = config.mix_listen + config.client_listen + config.http_listen
    try:
        check_shareable(descriptions)
        # Made here, once: children started together must not race to
        # create the keys and certificate.
        load_or_create_keys(config.data_dir)
        if config.client_tls:
            from nymprov.net.tls import load_or_create_certificate

            load_or_create_certificate(config.data_dir)
        ports, inherited = bind_shared(reactor, descriptions)
    except (ConfigError, OSError, NotShareable, CannotListenError) as e:
        print(f"{program}: {e}", file=stderr)
        return EXIT_FAILURE
    roles = (["mix link"] * len(config.mix_listen) + ["client API"] * len(config.client_listen)
             + ["operator HTTP API"] * len(config.http_listen))
    for port, role in zip(ports, roles):
        address = port.getHost()
        # Tests and operators learn ports bound to port 0 from these lines.
        print(f"{program}: {role} on {address.host}:{address.port}, shared by {count} processes",
              file=stderr, flush=True)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(stderr)], redirectStandardIO=False)
    supervisor = Supervisor(reactor, count, child_arguments(args), inherited, config.admin_socket)

    def on_signal(signum, frame):
        reactor.callFromThread(supervisor.stop)

    def start():
        # After the reactor installed its own (SIGCHLD among them): these
        # two stop the children first, then the reactor.
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        supervisor.start()

    reactor.callWhenRunning(start)
    reactor.run()
    return supervisor.code
