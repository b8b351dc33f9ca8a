"""The single source of nymprov's version number."""

__version__ = "0.1.0"
