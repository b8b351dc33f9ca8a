"""
Where a running node logs: standard error or a file, as text or JSON, from
a level that SIGHUP can change, to a file that SIGHUP reopens (after
logrotate moved it).
"""

import re

from twisted.logger import (
    FilteringLogObserver,
    PredicateResult,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

from nymprov.options import LOG_LEVELS

__all__ = ["LOG_LEVELS", "LOG_FORMATS", "NodeLog", "quiet_twisted"]
LOG_FORMATS = ("text", "json")


# What Twisted says of every port and factory whatever their ``noisy``
# flag: the node logs its own "Listening on ..." line instead.
_PORT_NOISE = re.compile(r"(.* starting on .+|\(\w+ Port .+ Closed\)|(Starting|Stopping) factory .*)")


def quiet_twisted(event):
    """
    A log filter predicate: drop Twisted's own port and factory lines
    (``MixLinkFactory (ConnectionTracker) starting on 1789``, ``Starting
    factory <...>``), which say nothing the node's lines do not.
    """
    text = event.get("log_format") or ""
    if text == "{log_text}":  # a legacy twisted.python.log line
        text = str(event.get("log_text", ""))
    if _PORT_NOISE.fullmatch(text) or _PORT_NOISE.fullmatch(text.replace("{factory!r}", "factory")):
        return PredicateResult.no
    return PredicateResult.maybe


class NodeLog:
    """
    The observer a node logs through.

    :param stderr: the stream used when there is no ``logfile``.
    :param logfile: a path, or ``None`` for ``stderr``.
    :param str log_format: ``text`` or ``json`` (one JSON object a line).
    :param str level: the least level logged, one of :data:`LOG_LEVELS`.
    """

    def __init__(self, stderr, logfile=None, log_format="text", level="info"):
        if log_format not in LOG_FORMATS:
            raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
        # Twisted's LogFile can be reopened; rotation is left to logrotate
        # (rotateLength=None), which moves the file and sends SIGHUP.
        self.file = None if logfile is None else LogFile.fromFullPath(logfile, rotateLength=None)
        stream = stderr if self.file is None else self.file
        make = jsonFileLogObserver if log_format == "json" else textFileLogObserver
        self._predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
        self.observer = FilteringLogObserver(make(stream), [quiet_twisted, self._predicate])

    def begin(self):
        """Send every log event (and warnings) to this observer from now on."""
        globalLogBeginner.beginLoggingTo([self.observer], redirectStandardIO=False)

    @property
    def level(self):
        """The least level logged, by name."""
        return self._predicate.logLevelForNamespace(None).name

    def set_level(self, level):
        """Log from ``level`` (one of :data:`LOG_LEVELS`) on."""
        # The default level is the one of the root namespace (None).
        self._predicate.setLogLevelForNamespace(None, LogLevel.levelWithName(level))

    def reopen(self):
        """
        Close and reopen the log file by its path, so that a file moved
        away by logrotate is let go of.

        :returns: whether there was a file to reopen.
        """
        if self.file is None:
            return False
        self.file.reopen()
        return True
