"""
Provider backends as Twisted plugins: the place where
``twisted.plugin.getPlugins(IProviderMaker, nymprov.plugins)`` looks.

A third-party package adds a backend by shipping a module in a
``nymprov/plugins/`` directory of its own (no ``__init__.py`` there) in any
``sys.path`` entry, whose module-level objects provide ``IPlugin`` and
``IProviderMaker``.  The helpers below find the makers, parse their options
and describe them.
"""

from twisted.plugin import pluginPackagePaths
from twisted.python import usage

# Every nymprov/plugins/ directory on sys.path joins this package, as
# twisted.plugins does: a plugin need not live beside nymprov itself
# (pkgutil.extend_path would only search nymprov's own __path__).
__path__.extend(pluginPackagePaths(__name__))


def positive(convert):
    """
    :returns: a coercer for an option value: ``convert(text)``, refused
        unless above 0.
    """

    def check(text):
        value = convert(text)
        if value <= 0:
            raise ValueError(f"must be above 0, got {text}")
        return value

    check.coerceDoc = ""
    return check


class BackendOptions(usage.Options):
    """
    Base of a backend's options: list them in ``optParameters`` as
    ``[name, None, default, help, coerce]`` and check them in
    ``postOptions`` (raise ``usage.UsageError``).  Each is given as
    ``--backend-option name=value`` or in the ``[backend-option]`` table of
    the config file.
    """


class UnknownBackend(usage.UsageError):
    """No plugin has the backend name asked for."""


def all_makers():
    """:returns: every ``IProviderMaker`` plugin, sorted by name."""
    from twisted.plugin import getPlugins

    import nymprov.plugins
    from nymprov.interfaces import IProviderMaker

    return sorted(getPlugins(IProviderMaker, nymprov.plugins), key=lambda maker: maker.name)


def find_maker(name):
    """
    :returns: the maker named ``name``.
    :raises UnknownBackend: naming the backends there are.
    """
    makers = all_makers()
    for maker in makers:
        if maker.name == name:
            return maker
    known = ", ".join(m.name for m in makers)
    raise UnknownBackend(f"--backend: no backend {name!r} (there are: {known})")


def parse_backend_options(maker, pairs):
    """
    :param pairs: ``(name, value)`` pairs of text.
    :returns: a parsed instance of ``maker.options``.
    :raises usage.UsageError: naming ``--backend-option`` and the problem.
    """
    options = maker.options()
    try:
        options.parseOptions([f"--{name}={value}" for name, value in pairs])
    except usage.UsageError as e:
        raise usage.UsageError(f"--backend-option: backend {maker.name}: {e}")
    return options


def describe_options(options_class):
    """:returns: one line per option: ``name=DEFAULT  help``."""
    lines = []
    for name, _short, default, help_text, *_ in options_class.optParameters:
        shown = "" if default is None else str(default)
        lines.append(f"    {name}={shown}  {help_text}")
    return lines


def describe_backends():
    """:returns: the text of ``nym-provider help backends``."""
    lines = [
        "Backends (choose one with --backend NAME; set its options with",
        "--backend-option NAME=VALUE, repeatable):",
    ]
    for maker in all_makers():
        lines += ["", f"  {maker.name}: {maker.description}"]
        lines += describe_options(maker.options) or ["    (no options)"]
    return "\n".join(lines)
