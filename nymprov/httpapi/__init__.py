"""
The operator's HTTP API: ``/metrics`` for Prometheus, ``/health`` and a
description of the node, served with ``twisted.web`` off the packet path.
"""
