"""
The package layout: no import cycles, no package importing one above it, no
module over 500 lines.  Read from the source with ``ast``, so lazy imports
inside functions count too.
"""

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

import nymprov

PACKAGE_ROOT = os.path.dirname(os.path.abspath(nymprov.__file__))

#: Lowest first.  A module may import modules of its own unit and of the
#: units on lower rows; units on one row may not import each other.
LAYERS = (
    ("nymprov._version", "nymprov.errors"),
    ("nymprov",),
    ("nymprov.sphinx",),
    ("nymprov.interfaces", "nymprov.wire", "nymprov.metrics", "nymprov.options"),
    ("nymprov.keys",),
    ("nymprov.net",),
    ("nymprov.httpapi",),
    ("nymprov.topology", "nymprov.storage"),
    ("nymprov.netdoc",),
    ("nymprov.node",),
    ("nymprov.backends",),
    ("nymprov.plugins",),
    ("nymprov.provider", "nymprov.mixnode", "nymprov.directory"),
    ("nymprov.client",),
    ("nymprov.tools",),
    ("nymprov.cli",),
    ("nymprov.__main__",),
)

MAX_MODULE_LINES = 500

_RANK = {unit: rank for rank, row in enumerate(LAYERS) for unit in row}


def module_files():
    """:returns: ``{module name: path}`` for every module of nymprov."""
    found = {}
    for directory, _, files in os.walk(PACKAGE_ROOT):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            parts = os.path.relpath(path, os.path.dirname(PACKAGE_ROOT))[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports_of(module, path, known):
    """:returns: the nymprov modules that ``module`` imports (anywhere in it)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            submodules = {f"{target}.{alias.name}" for alias in node.names} & set(known)
            # "from package import module" imports the module; the
            # package's __init__ runs too, but it is no dependency of ours.
            names.update(submodules or {target})
    return {name for name in names if name in known and name != module}


def unit_of(module):
    """The longest entry of :data:`LAYERS` that ``module`` is in."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in _RANK:
            return candidate
    return None


def find_cycle(graph):
    """:returns: one import cycle as a list of modules, or ``None``."""
    state = {}
    stack = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


class LayoutTests(SynchronousTestCase):
    """The rules of the layout, checked on the code as it is."""

    def setUp(self):
        self.files = module_files()
        self.graph = {m: imports_of(m, p, self.files) for m, p in self.files.items()}

    def test_found_the_code(self):
        """The walk sees the packages it is meant to police."""
        for module in ("nymprov.node.core", "nymprov.provider.service", "nymprov.cli.provider"):
            self.assertIn(module, self.files)
        self.assertIn("nymprov.node.core", self.graph["nymprov.provider.service"])

    def test_every_module_has_a_layer(self):
        """A new package must be placed in LAYERS before it can be used."""
        self.assertEqual([m for m in self.files if unit_of(m) is None], [])

    def test_no_cycles(self):
        """No module imports itself through others."""
        self.assertIsNone(find_cycle(self.graph))

    def test_no_upward_imports(self):
        """Each module imports only its own unit and the rows below it."""
        wrong = []
        for module, targets in self.graph.items():
            unit = unit_of(module)
            for target in targets:
                other = unit_of(target)
                if other != unit and _RANK[other] >= _RANK[unit]:
                    wrong.append(f"{module} -> {target}")
        self.assertEqual(sorted(wrong), [])

    def test_module_size(self):
        """No module is over MAX_MODULE_LINES lines."""
        long = {}
        for module, path in self.files.items():
            with open(path, encoding="utf-8") as f:
                count = sum(1 for _ in f)
            if count > MAX_MODULE_LINES:
                long[module] = count
        self.assertEqual(long, {})

    def test_checks_can_fail(self):
        """The cycle finder and the rank rule do find what they look for."""
        self.assertEqual(find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}), ["a", "b", "c", "a"])
        self.assertIsNone(find_cycle({"a": {"b"}, "b": set()}))
        self.assertGreater(_RANK[unit_of("nymprov.cli.provider")], _RANK[unit_of("nymprov.node.core")])
        self.assertEqual(unit_of("nymprov.storage.sqlite"), "nymprov.storage")
