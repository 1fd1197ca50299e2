"""The node's state on disk.

``state.db`` (series, instances; ``state``), the audit log in it (``audit``) and the durable
spool (``spool``).
"""
