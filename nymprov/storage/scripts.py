"""The SQL scripts shipped as package data, read once when first imported."""

import importlib.resources


def load_scripts(package):
    """
    :returns: ``{name: text}`` of every ``schema/*.sql`` of ``package``.

    Read at import, not when a store opens: a node imports its modules
    before it drops privileges, and the user it becomes may not be allowed
    to read where the code is installed.
    """
    folder = importlib.resources.files(package).joinpath("schema")
    return {entry.name: entry.read_text("utf-8") for entry in folder.iterdir() if entry.name.endswith(".sql")}
