"""
The scale-out store: clients, messages and replay tags in PostgreSQL, shared
by several provider processes on one machine or many.
"""

from nymprov.storage.postgresql.store import PostgresStore, StoreUnavailable

__all__ = ["PostgresStore", "StoreUnavailable"]
