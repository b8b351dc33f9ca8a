"""Packaging; the metadata lives in setup.cfg."""

from setuptools import find_packages, setup

# twisted/plugins has no __init__.py (it must not shadow Twisted's own
# package), so find_packages cannot see it: name it explicitly.
setup(packages=find_packages(include=["nymprov", "nymprov.*"]) + ["twisted.plugins"])
