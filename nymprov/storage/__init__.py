"""
Where clients, messages and replay tags are kept: in memory or in SQLite.
"""
